--- ghostls for Neovim: starts `ghostls serve --stdio` through vim.lsp.config/vim.lsp.enable and shows its
--- ghost text, through Neovim's vim.lsp.inline_completion (0.12+) or ghostls' own extmarks (0.11).
--- Owns setup, the keymaps and the model status; never sends anything but LSP to the server.

local config_mod = require('ghostls.config')

local M = {}

--- The resolved options (nil until setup()).
M.config = nil
--- Model status per client id, from the server's `ghostls/status` notification:
--- { state = 'converting'|'loading'|'ready'|'error'|..., detail, model, provider, template }.
M.status = {}

local function backend()
  return M.path == 'native' and require('ghostls.native') or require('ghostls.ghost')
end

--- Which ghost-text path this setup uses: 'native' or 'extmark'.
local function choose_path(wanted)
  local native_ok = require('ghostls.native').available()
  if wanted == 'extmark' then
    return 'extmark'
  end
  if wanted == 'native' and not native_ok then
    vim.notify('ghostls: vim.lsp.inline_completion needs Neovim 0.12; drawing ghost text with extmarks',
      vim.log.levels.WARN)
    return 'extmark'
  end
  return native_ok and 'native' or 'extmark'
end

--- An insert-mode key that acts on the suggestion, or does what the key did before when none is shown.
local function map(bufnr, lhs, action, desc)
  if not lhs then
    return
  end
  vim.keymap.set('i', lhs, function()
    if not action() then
      vim.api.nvim_feedkeys(vim.keycode(lhs), 'n', false)
    end
  end, { buffer = bufnr, desc = 'ghostls: ' .. desc })
end

-- The actions behind the keymaps, for your own mappings (e.g. one <Tab> shared with a completion menu).
-- Each acts on the current buffer and returns false when there was no suggestion to act on.
function M.accept() return backend().accept(vim.api.nvim_get_current_buf(), 'all') end
function M.accept_word() return backend().accept(vim.api.nvim_get_current_buf(), 'word') end
function M.accept_line() return backend().accept(vim.api.nvim_get_current_buf(), 'line') end
function M.dismiss() return backend().dismiss(vim.api.nvim_get_current_buf()) end
function M.next() return backend().select(vim.api.nvim_get_current_buf(), 1, M.config) end
function M.previous() return backend().select(vim.api.nvim_get_current_buf(), -1, M.config) end

local function set_keymaps(bufnr)
  local keys = M.config.keymaps
  map(bufnr, keys.accept, M.accept, 'accept the suggestion')
  map(bufnr, keys.accept_word, M.accept_word, 'accept the next word')
  map(bufnr, keys.accept_line, M.accept_line, 'accept the next line')
  map(bufnr, keys.dismiss, M.dismiss, 'dismiss the suggestion')
  map(bufnr, keys.next, M.next, 'next suggestion')
  map(bufnr, keys.previous, M.previous, 'previous suggestion')
end

local function on_attach(client, bufnr)
  backend().attach(bufnr, client, M.config)
  set_keymaps(bufnr)
end

--- Sets ghostls up; see `require('ghostls.config').defaults` (and the README) for every option.
---@param opts table?
function M.setup(opts)
  if vim.fn.has('nvim-0.11') == 0 then
    vim.notify('ghostls needs Neovim 0.11 or newer (vim.lsp.config)', vim.log.levels.ERROR)
    return
  end
  M.config = config_mod.resolve(opts)
  M.path = choose_path(M.config.ghost_text)
  vim.api.nvim_set_hl(0, 'GhostlsSuggestion', { link = 'Comment', default = true })

  local settings = vim.deepcopy(M.config.settings)
  local unknown = config_mod.unknown_settings(settings)
  if #unknown > 0 then
    -- The server would ignore them too; saying so here names the place to fix.
    vim.notify(('ghostls: unknown server settings %s in setup({ settings }); see :help ghostls-settings'):format(
      table.concat(unknown, ', ')), vim.log.levels.WARN)
  end
  vim.lsp.config('ghostls', {
    cmd = M.config.cmd,
    filetypes = config_mod.enabled_filetypes(M.config),
    root_markers = M.config.root_markers,
    init_options = settings,
    settings = { ghostls = settings },
    on_attach = on_attach,
    handlers = {
      ['ghostls/status'] = function(_, result, ctx)
        local before = M.status[ctx.client_id]
        M.status[ctx.client_id] = result
        if result.state == 'converting' and not (before and before.state == 'converting') then
          -- Only on first use of a model; the percentage comes as $/progress (see vim.lsp.status()).
          vim.notify('ghostls: converting the model to ONNX (first use, about a minute)', vim.log.levels.INFO)
        end
        -- For statuslines: `autocmd User GhostlsStatus`, the status in the event's data.
        vim.api.nvim_exec_autocmds('User', { pattern = 'GhostlsStatus', data = result, modeline = false })
      end,
    },
  })
  vim.lsp.enable('ghostls')

  vim.api.nvim_create_user_command('Ghostls', function(args)
    M.command(args.fargs[1] or 'status')
  end, {
    nargs = '?',
    complete = function()
      return { 'status', 'toggle', 'explain' }
    end,
    desc = 'ghostls: status | toggle | explain',
  })
end

--- The suggestion shown in `bufnr` (default: current), or nil: the same on both paths.
function M.suggestion(bufnr)
  return backend().current(bufnr or vim.api.nvim_get_current_buf())
end

local function clients(bufnr)
  return vim.lsp.get_clients({ name = 'ghostls', bufnr = bufnr })
end

--- `:Ghostls status|toggle|explain`.
function M.command(name)
  local bufnr = vim.api.nvim_get_current_buf()
  if name == 'toggle' then
    local b = backend()
    b.set_enabled(bufnr, not b.is_enabled(bufnr))
    vim.notify('ghostls: ' .. (b.is_enabled(bufnr) and 'on' or 'off') .. ' in this buffer')
  elseif name == 'explain' then
    local client = clients(bufnr)[1]
    if not client then
      return vim.notify('ghostls: no server attached to this buffer', vim.log.levels.WARN)
    end
    client:request('ghostls/explain', nil, function(err, result)
      vim.notify(err and ('ghostls: ' .. err.message) or vim.inspect(result))
    end, bufnr)
  else
    local lines = {}
    for _, client in ipairs(clients()) do
      local status = M.status[client.id] or {}
      lines[#lines + 1] = ('ghostls (%s path): %s %s'):format(M.path, status.state or 'starting',
        status.detail or '')
    end
    vim.notify(#lines > 0 and table.concat(lines, '\n') or 'ghostls: not running')
  end
end

return M
