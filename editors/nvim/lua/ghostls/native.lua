--- ghostls.native: ghost text through Neovim's own vim.lsp.inline_completion (0.12+).
--- Neovim requests, draws and accepts; this module only adds partial accepts and dismiss on top of its
--- public API (`get` with an `on_accept` handler, `select`), and never draws anything itself.

local edit = require('ghostls.edit')

local M = {}

local function inline()
  return vim.lsp.inline_completion
end

--- Whether this Neovim has the native inline completion module.
function M.available()
  return vim.lsp.inline_completion ~= nil and vim.lsp.inline_completion.get ~= nil
end

function M.attach(bufnr, client)
  -- Per buffer (the filter takes a buffer or a client, not both): then `is_enabled({ bufnr })` is true
  -- and :Ghostls toggle can turn it off and on again.
  inline().enable(true, { bufnr = bufnr })
end

function M.set_enabled(bufnr, enabled)
  inline().enable(enabled, { bufnr = bufnr })
end

function M.is_enabled(bufnr)
  return inline().is_enabled({ bufnr = bufnr })
end

--- The text of a native item, with what was typed since its range started left out.
local function remaining_text(item)
  local text = type(item.insert_text) == 'table' and item.insert_text.value or item.insert_text
  if type(text) ~= 'string' then
    return nil
  end
  local range = item.range
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  if range and range.start.row == row - 1 and range.start.col < col then
    local line = vim.api.nvim_get_current_line()
    local typed = line:sub(range.start.col + 1, col)
    if text:sub(1, #typed) == typed then
      text = text:sub(#typed + 1)
    end
  end
  return text
end

--- Accepts the suggestion ('all' through Neovim itself; 'word' and 'line' insert that part at the
--- cursor, and Neovim then asks again for the rest). False when none is shown.
function M.accept(bufnr, part)
  if part == nil or part == 'all' then
    return inline().get({ bufnr = bufnr })
  end
  return inline().get({
    bufnr = bufnr,
    on_accept = function(item)
      local text = remaining_text(item)
      if text and text ~= '' then
        edit.insert_at_cursor(edit.take(text, part))
      end
    end,
  })
end

--- Hides the suggestion: an accept whose handler inserts nothing (Neovim has no public dismiss).
function M.dismiss(bufnr)
  return inline().get({ bufnr = bufnr, on_accept = function() end })
end

function M.select(bufnr, count)
  inline().select({ bufnr = bufnr, count = count })
  return true
end

--- The suggestion Neovim shows in `bufnr`, read back from its extmark, or nil.
function M.current(bufnr)
  local ns = vim.api.nvim_get_namespaces()['nvim.lsp.inline_completion']
  if not ns then
    return nil
  end
  local marks = vim.api.nvim_buf_get_extmarks(bufnr, ns, 0, -1, { details = true })
  if #marks == 0 then
    return nil
  end
  local details = marks[1][4]
  local lines = {}
  local first = {}
  for _, chunk in ipairs(details.virt_text or {}) do
    first[#first + 1] = chunk[1]
  end
  lines[1] = table.concat(first)
  for _, virt_line in ipairs(details.virt_lines or {}) do
    local parts = {}
    for _, chunk in ipairs(virt_line) do
      parts[#parts + 1] = chunk[1]
    end
    lines[#lines + 1] = table.concat(parts)
  end
  return table.concat(lines, '\n')
end

return M
