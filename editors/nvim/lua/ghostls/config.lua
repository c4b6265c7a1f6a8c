--- ghostls.config: the one table of defaults, and merging the user's options over it.
--- Owns option names and their meaning; never starts anything or touches a buffer.

local M = {}

--- Every option of `require('ghostls').setup()`, with its default. Anything left out keeps these.
M.defaults = {
  -- How to start the server. nil: `ghostls serve --stdio` from $PATH.
  cmd = nil, ---@type string[]?
  -- Filetypes the server is started for (ghostls parses these with tree-sitter; others get plain-text prompts).
  filetypes = {
    'python', 'javascript', 'javascriptreact', 'typescript', 'typescriptreact', 'go', 'rust', 'java',
    'c', 'cpp', 'cs', 'ruby', 'php', 'lua', 'sh', 'bash',
  },
  -- Per-language switch over `filetypes`: `{ markdown = false }` keeps ghost text out of those buffers.
  enable = {}, ---@type table<string, boolean>
  -- Markers of a project root (the server works without one too: single-file mode).
  root_markers = { '.git' },
  -- Server settings, sent as `initializationOptions` and as the `ghostls` section of
  -- workspace/didChangeConfiguration. Keys as in the README's settings table (camelCase), e.g.
  -- { model = '~/models/qwen-int8', maxLines = 6, debounceMs = 20 }.
  settings = {},
  -- 'auto': Neovim's own vim.lsp.inline_completion on 0.12+, else ghostls' extmark ghost text.
  -- 'native' or 'extmark' force one ('extmark' works on 0.12 too).
  ghost_text = 'auto',
  -- Extmark path only: wait after a keystroke before asking (the native path has Neovim's own 200 ms).
  debounce_ms = 75,
  -- Highlight group of the ghost text on the extmark path (linked to Comment unless you define it).
  hl_group = 'GhostlsSuggestion',
  -- Insert-mode keys, set in buffers ghostls attaches to; false disables one. When there is no
  -- suggestion a key does what it did before (e.g. <Tab> inserts a tab).
  keymaps = {
    accept = '<Tab>',
    accept_word = '<M-Right>',
    accept_line = '<M-C-Right>',
    dismiss = '<C-]>',
    next = '<M-]>',
    previous = '<M-[>',
  },
}

--- The defaults with `opts` merged over them (lists such as `filetypes` and `cmd` are replaced, not merged).
---@param opts table?
---@return table
function M.resolve(opts)
  local config = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts or {})
  for _, key in ipairs({ 'cmd', 'filetypes', 'root_markers' }) do
    if opts and opts[key] ~= nil then
      config[key] = opts[key]
    end
  end
  if not config.cmd then
    config.cmd = { 'ghostls', 'serve', '--stdio' }
  end
  return config
end

--- The filetypes ghostls starts for: `filetypes` minus those switched off in `enable`.
---@param config table
---@return string[]
function M.enabled_filetypes(config)
  return vim.tbl_filter(function(ft)
    return config.enable[ft] ~= false
  end, config.filetypes)
end

return M
