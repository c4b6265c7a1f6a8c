#!/usr/bin/env bash
# Installs code-server 4.100.3 (the real VS Code the end-to-end test drives) under e2e/node_modules,
# from the npm registry only. code-server's own postinstall downloads things this machine cannot
# reach, so its steps are done here by hand:
#  - every npm install runs with --ignore-scripts, then the native modules are rebuilt against the
#    local Node headers (npm_config_nodedir=/usr: node-gyp would otherwise download them);
#  - Debian's ripgrep stands in for the binary @vscode/ripgrep would download;
#  - kerberos needs Debian's libkrb5-dev, argon2 is built from source (no prebuilt download).
# Needs: node 20 (code-server 4.100.3 refuses other majors), g++, make, rg, libkrb5-dev.
set -euo pipefail
cd "$(dirname "$0")/../e2e"
export npm_config_yes=true npm_config_nodedir="${npm_config_nodedir:-/usr}" npm_config_audit=false npm_config_fund=false
READY=node_modules/.ghostls-code-server-ready
[ -f "$READY" ] && [ "$READY" -nt package-lock.json ] && exit 0

rg_bin=$(command -v rg) || { echo "setup-code-server: ripgrep (Debian package ripgrep) is missing" >&2; exit 1; }
[ -f "$npm_config_nodedir/include/node/node.h" ] || {
  echo "setup-code-server: no Node headers under $npm_config_nodedir/include/node (set npm_config_nodedir)" >&2; exit 1; }

npm ci --ignore-scripts --no-audit --no-fund
npm rebuild argon2

cd node_modules/code-server/lib/vscode
npm install --omit=dev --ignore-scripts --no-audit --no-fund
mkdir -p node_modules/@vscode/ripgrep/bin
cp "$rg_bin" node_modules/@vscode/ripgrep/bin/rg
npm rebuild kerberos @parcel/watcher @vscode/spdlog native-watchdog node-pty @vscode/deviceid
# The rest of code-server's postinstall.sh: VS Code looks for these paths.
ln -sfn node_modules node_modules.asar
ln -sfn code-linux.sh bin/remote-cli/code-server
ln -sfn browser-linux.sh bin/helpers/browser.sh
cd - >/dev/null
touch "$READY"
