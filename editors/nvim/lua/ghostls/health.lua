--- `:checkhealth ghostls`: Neovim version and ghost-text path, the server command and its version, and
--- the model status of running servers. Only reads; starts no server.

local M = {}

local function run(cmd)
  local ok, result = pcall(function()
    return vim.system(cmd, { text = true }):wait(20000)
  end)
  if not ok then
    return nil, tostring(result)
  end
  return result
end

function M.check()
  local health = vim.health
  health.start('ghostls')

  if vim.fn.has('nvim-0.11') == 1 then
    health.ok(('Neovim %s'):format(tostring(vim.version())))
  else
    health.error('Neovim 0.11 or newer is needed (vim.lsp.config, vim.lsp.enable)')
  end

  local ghostls = require('ghostls')
  local config = ghostls.config
  if not config then
    health.warn("require('ghostls').setup() has not been called", { 'Call it from your config, see the README' })
    config = require('ghostls.config').resolve()
  else
    health.ok(('ghost text path: %s'):format(ghostls.path == 'native'
      and 'native (vim.lsp.inline_completion)' or 'extmark (drawn by ghostls)'))
  end

  local exe = config.cmd[1]
  local path = vim.fn.exepath(exe)
  if path == '' then
    health.error(('server command not found: %s'):format(exe), {
      "pip install ghostls (or make install), then put its bin/ on $PATH or set `cmd` in setup()",
    })
    return
  end
  health.ok(('server command: %s'):format(table.concat(vim.list_extend({ path }, vim.list_slice(config.cmd, 2)), ' ')))

  local version = run({ path, '--version' })
  if version and version.code == 0 then
    health.ok(('server version: %s'):format(vim.trim(version.stdout)))
  else
    health.error(('`%s --version` failed: %s'):format(exe, version and vim.trim(version.stderr or '') or '?'))
  end

  local clients = vim.lsp.get_clients({ name = 'ghostls' })
  if #clients == 0 then
    health.info('no ghostls server running now (it starts when a buffer of a configured filetype opens)')
    local models = run({ path, 'model', 'list' })
    if models and models.code == 0 then
      health.ok('converted models:\n' .. vim.trim(models.stdout))
    elseif models and models.code == 1 then
      health.warn('no converted model yet: the first start converts the embedded one (about a minute)')
    end
    return
  end
  for _, client in ipairs(clients) do
    local status = ghostls.status[client.id]
    if not status then
      health.info(('client %d: no model status yet'):format(client.id))
    else
      local line = ('model %s: %s%s'):format(status.model or '?', status.state,
        status.detail and status.detail ~= vim.NIL and (' (' .. status.detail .. ')') or '')
      if status.state == 'ready' then
        health.ok(line .. (status.provider and status.provider ~= vim.NIL and (' on ' .. status.provider) or ''))
      elseif status.state == 'error' then
        health.error(line)
      else
        health.info(line)
      end
    end
  end
end

return M
