--- ghostls.ghost: ghost text drawn by ghostls itself (Neovim 0.11, or `ghost_text = 'extmark'`).
--- Asks textDocument/inlineCompletion after a debounce and draws the answer as inline virtual text plus
--- virtual lines. Never edits the buffer except on an accept; a stale answer (buffer or cursor moved
--- since the request) is dropped, never drawn.

local edit = require('ghostls.edit')

local M = {}

M.ns = vim.api.nvim_create_namespace('ghostls')

local INVOKED, AUTOMATIC = 1, 2

--- Per buffer: { client_id, timer, request_id, items, index, text, row, col, tick }
--- `text` is what is still to be accepted, shown at (row, col) while the buffer is at `tick`.
local buffers = {}

local function stop_timer(state)
  local timer = state.timer
  state.timer = nil
  -- vim.defer_fn closes its timer once it fired: close only one that has not.
  if timer and not timer:is_closing() then
    timer:stop()
    timer:close()
  end
end

local function cancel_request(state)
  if state.request_id then
    local client = vim.lsp.get_client_by_id(state.client_id)
    if client then
      client:cancel_request(state.request_id)
    end
    state.request_id = nil
  end
end

local function hide(bufnr)
  local state = buffers[bufnr]
  if vim.api.nvim_buf_is_valid(bufnr) then
    vim.api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
  end
  if state then
    state.text, state.items = nil, nil
  end
end

local function cursor()
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  return row - 1, col
end

local function draw(bufnr, hl_group)
  local state = buffers[bufnr]
  vim.api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
  if not state.text or state.text == '' then
    state.text = nil
    return
  end
  local lines = vim.split(state.text, '\n', { plain = true })
  local first = { { lines[1], hl_group } }
  if state.items and #state.items > 1 then
    table.insert(first, { (' (%d/%d)'):format(state.index, #state.items), hl_group })
  end
  local rest = {}
  for i = 2, #lines do
    rest[#rest + 1] = { { lines[i], hl_group } }
  end
  vim.api.nvim_buf_set_extmark(bufnr, M.ns, state.row, state.col, {
    virt_text = first,
    virt_text_pos = 'inline',
    virt_lines = #rest > 0 and rest or nil,
    hl_mode = 'combine',
  })
end

--- The text of an item, the part already typed since its range started left out (nil: it no longer fits).
local function item_text(bufnr, item, encoding, row, col)
  local text = type(item.insertText) == 'table' and item.insertText.value or item.insertText
  if type(text) ~= 'string' or text == '' then
    return nil
  end
  local range = item.range
  if range and range.start.line == row then
    local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, true)[1]
    local ok, start = pcall(vim.str_byteindex, line, encoding, range.start.character, false)
    if ok and start < col then
      local typed = line:sub(start + 1, col)
      if text:sub(1, #typed) ~= typed then
        return nil
      end
      text = text:sub(#typed + 1)
    end
  end
  return text ~= '' and text or nil
end

local function show_item(bufnr, index, config)
  local state = buffers[bufnr]
  local client = vim.lsp.get_client_by_id(state.client_id)
  if not client or not state.items or #state.items == 0 then
    hide(bufnr)
    return
  end
  index = (index - 1) % #state.items + 1
  local row, col = cursor()
  local text = item_text(bufnr, state.items[index], client.offset_encoding, row, col)
  state.index, state.text = index, text
  state.row, state.col, state.tick = row, col, vim.b[bufnr].changedtick
  draw(bufnr, config.hl_group)
end

--- Sends one inlineCompletion request for the cursor position, replacing any request in flight.
function M.request(bufnr, config, kind)
  local state = buffers[bufnr]
  local client = state and vim.lsp.get_client_by_id(state.client_id)
  if not client or not state.enabled then
    return
  end
  stop_timer(state)
  cancel_request(state)
  local row, col = cursor()
  local tick = vim.b[bufnr].changedtick
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = kind or AUTOMATIC }
  local ok, request_id
  ok, request_id = client:request('textDocument/inlineCompletion', params, function(err, result)
    if state.request_id ~= request_id then
      return -- superseded
    end
    state.request_id = nil
    if err or not result or not vim.api.nvim_buf_is_valid(bufnr) then
      return
    end
    -- The answer is for where the request was made: drop it if the user has moved on.
    local now_row, now_col = cursor()
    if vim.api.nvim_get_current_buf() ~= bufnr or not vim.api.nvim_get_mode().mode:match('^i')
      or vim.b[bufnr].changedtick ~= tick or now_row ~= row or now_col ~= col then
      return
    end
    state.items = result.items or result
    show_item(bufnr, 1, config)
  end, bufnr)
  state.request_id = ok and request_id or nil
end

--- After a keystroke: keep the suggestion if the user typed what it suggested, else ask again later.
local function on_change(bufnr, config)
  local state = buffers[bufnr]
  local row, col = cursor()
  local tick = vim.b[bufnr].changedtick
  if state.text and row == state.row then
    if col == state.col and tick == state.tick then
      return -- nothing changed (our own accept, or a cursor event for the same place)
    end
    local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, true)[1]
    local typed = col > state.col and line:sub(state.col + 1, col) or nil
    if typed and state.text:sub(1, #typed) == typed and #typed < #state.text then
      state.text = state.text:sub(#typed + 1)
      state.col, state.tick = col, tick
      draw(bufnr, config.hl_group)
      return
    end
  end
  hide(bufnr)
  cancel_request(state)
  stop_timer(state)
  state.timer = vim.defer_fn(function()
    state.timer = nil
    if vim.api.nvim_buf_is_valid(bufnr) and vim.api.nvim_get_current_buf() == bufnr
      and vim.api.nvim_get_mode().mode:match('^i') then
      M.request(bufnr, config, AUTOMATIC)
    end
  end, config.debounce_ms)
end

--- Starts drawing ghost text in `bufnr` for `client`.
function M.attach(bufnr, client, config)
  if buffers[bufnr] then
    return
  end
  buffers[bufnr] = { client_id = client.id, enabled = true, config = config }
  local group = vim.api.nvim_create_augroup('ghostls.ghost.' .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd({ 'InsertEnter', 'TextChangedI', 'CursorMovedI' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      on_change(bufnr, config)
    end,
  })
  vim.api.nvim_create_autocmd({ 'InsertLeave', 'BufLeave' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      M.dismiss(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd('LspDetach', {
    group = group,
    buffer = bufnr,
    callback = function(args)
      if args.data.client_id == client.id then
        M.detach(bufnr)
      end
    end,
  })
end

function M.detach(bufnr)
  local state = buffers[bufnr]
  if not state then
    return
  end
  M.dismiss(bufnr)
  pcall(vim.api.nvim_del_augroup_by_name, 'ghostls.ghost.' .. bufnr)
  buffers[bufnr] = nil
end

--- Turns requests on or off in `bufnr` (the suggestion shown, if any, goes away).
function M.set_enabled(bufnr, enabled)
  local state = buffers[bufnr]
  if state then
    state.enabled = enabled
    if not enabled then
      M.dismiss(bufnr)
    end
  end
end

function M.is_enabled(bufnr)
  local state = buffers[bufnr]
  return state ~= nil and state.enabled
end

--- The suggestion shown in `bufnr`, or nil.
function M.current(bufnr)
  local state = buffers[bufnr]
  return state and state.text or nil
end

--- Accepts the suggestion, or its next word or line ('all', 'word', 'line'). False when none is shown.
function M.accept(bufnr, part)
  local state = buffers[bufnr]
  if not state or not state.text then
    return false
  end
  local taken = edit.take(state.text, part or 'all')
  local rest = state.text:sub(#taken + 1)
  hide(bufnr)
  edit.insert_at_cursor(taken)
  if rest ~= '' then
    -- What is left stays a suggestion at the new cursor; on_change sees the same tick and keeps it.
    local row, col = cursor()
    state.text, state.row, state.col, state.tick = rest, row, col, vim.b[bufnr].changedtick
    draw(bufnr, state.config.hl_group)
  end
  return true
end

--- Hides the suggestion and cancels the request in flight. False when nothing was shown.
function M.dismiss(bufnr)
  local state = buffers[bufnr]
  if not state then
    return false
  end
  local shown = state.text ~= nil
  stop_timer(state)
  cancel_request(state)
  hide(bufnr)
  return shown
end

--- Shows the next (count 1) or previous (count -1) item of the last answer; asks when there is none.
function M.select(bufnr, count, config)
  local state = buffers[bufnr]
  if not state then
    return false
  end
  if not state.items or #state.items == 0 then
    M.request(bufnr, config, INVOKED)
    return true
  end
  show_item(bufnr, state.index + count, config)
  return true
end

return M
