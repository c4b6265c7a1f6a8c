--- ghostls.edit: which part of a suggestion a partial accept takes, and inserting it at the cursor.
--- Shared by both ghost-text paths; never talks to the server.

local M = {}

--- The next word of `text`: leading blanks plus one run of identifier characters or of punctuation.
---@param text string
---@return string
function M.word(text)
  return text:match('^%s*[%w_]+') or text:match('^%s*[^%w_%s]+') or text
end

--- The first line of `text`, with its line break when more lines follow (the rest stays a suggestion).
---@param text string
---@return string
function M.line(text)
  return text:match('^[^\n]*\n') or text
end

--- The part of `text` a given accept takes: 'all', 'word' or 'line'.
---@param text string
---@param part 'all'|'word'|'line'
---@return string
function M.take(text, part)
  if part == 'word' then
    return M.word(text)
  elseif part == 'line' then
    return M.line(text)
  end
  return text
end

--- Inserts `text` at the cursor of the current window and leaves the cursor after it.
---@param text string
function M.insert_at_cursor(text)
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  local lines = vim.split(text, '\n', { plain = true })
  vim.api.nvim_buf_set_text(0, row - 1, col, row - 1, col, lines)
  local last_col = (#lines == 1 and col or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { row + #lines - 1, last_col })
end

return M
