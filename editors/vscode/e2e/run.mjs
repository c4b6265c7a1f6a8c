// End-to-end: the packaged extension in a real VS Code (code-server) in Debian's Chromium, driven
// by playwright-core, against the real ghostls server on a real model. Asserts that ghost text
// appears, that Tab inserts it into the document (read back from disk after saving), and that the
// status bar item reaches "ready" and toggles; keeps a screenshot and the `initialize` request that
// VS Code sent. Owns its temp folders and the processes it starts; never touches the user's VS Code.
//
// node e2e/run.mjs --vsix ghostls.vsix --server /path/to/ghostls --model DIR \
//     --screenshot out.png --initialize out.json      (prints one JSON line: what happened)

import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CODE_SERVER = path.join(HERE, "node_modules", "code-server", "out", "node", "entry.js");
const { values: opt } = parseArgs({
  options: {
    vsix: { type: "string" }, server: { type: "string" }, model: { type: "string" },
    screenshot: { type: "string" }, initialize: { type: "string" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
    timeout: { type: "string", default: "120" },
    // Restricted Mode: the folder is untrusted and its settings try to pick the server, model and
    // backend; the run checks that only the user's choices are used.
    restricted: { type: "boolean", default: false },
  },
});
for (const key of ["vsix", "server", ...(opt.restricted ? [] : ["screenshot", "initialize"])]) {
  if (!opt[key]) fail(`--${key} is required`);
}
const TIMEOUT_MS = Number(opt.timeout) * 1000;

// The file the test types into: the cursor goes to the empty body line of `if n < 2:`.
const SOURCE = [
  "def fibonacci(n):",
  '    """Return the n-th Fibonacci number."""',
  "    if n < 2:",
  "        ",
  "    return fibonacci(n - 1) + fibonacci(n - 2)",
  "",
  "",
  'if __name__ == "__main__":',
  "    print(fibonacci(10))",
  "",
].join("\n");
const CURSOR = { line: 4, column: 9 }; // 1-based, as VS Code's Go to Line takes it

const started = Date.now();
const lap = {};
const mark = (name) => { lap[name] = Math.round((Date.now() - started) / 100) / 10; };
const children = [];
let root; // this run's temp folder: removed after a success, kept after a failure

function fail(message) {
  throw new Error(`vscode e2e: ${message}`);
}

function run(cmd, args, options) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], ...options });
    let out = "";
    child.stdout.on("data", (d) => { out += d; });
    child.stderr.on("data", (d) => { out += d; });
    child.on("error", reject);
    child.on("exit", (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(" ")} exited ${code}:\n${out}`))));
  });
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function waitForHttp(url, deadline, logFile) {
  while (Date.now() < deadline) {
    try {
      const res = await fetch(url, { redirect: "manual" });
      if (res.status < 500) return;
    } catch { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 250));
  }
  fail(`code-server did not answer at ${url}:\n${fs.readFileSync(logFile, "utf8").slice(-3000)}`);
}

/** The first LSP message in a captured stdin stream: VS Code's `initialize` request. */
function firstMessage(stream) {
  const text = stream.toString("latin1");
  const header = text.indexOf("\r\n\r\n");
  const length = /Content-Length:\s*(\d+)/i.exec(text.slice(0, header));
  if (header < 0 || !length) fail("the server received no LSP message");
  const body = stream.subarray(header + 4, header + 4 + Number(length[1]));
  return JSON.parse(body.toString("utf8"));
}

async function main() {
  root = fs.mkdtempSync(path.join(os.tmpdir(), "ghostls-vscode-e2e-"));
  const dirs = Object.fromEntries(["home", "config", "data", "cache", "userdata", "extensions", "bin", "work"]
    .map((name) => [name, path.join(root, name)]));
  Object.values(dirs).forEach((dir) => fs.mkdirSync(dir, { recursive: true }));
  const env = {
    ...process.env, HOME: dirs.home, XDG_CONFIG_HOME: dirs.config, XDG_DATA_HOME: dirs.data,
    XDG_CACHE_HOME: dirs.cache, SHELL: "/bin/bash", PATH: `${dirs.bin}:${process.env.PATH}`,
  };
  delete env.VSCODE_IPC_HOOK_CLI;

  // `ghostls` on PATH is the real server behind a tee that records what VS Code sends it, so the
  // extension finds it the way a user's would (PATH) and the initialize request is the real one.
  const stdinLog = path.join(root, "server-stdin.lsp");
  fs.writeFileSync(path.join(dirs.bin, "ghostls"),
    `#!/bin/sh\ntee "${stdinLog}" | exec "${path.resolve(opt.server)}" "$@"\n`, { mode: 0o755 });
  // VS Code gives the extension host the environment of a login shell, so PATH comes from the
  // profile, as it does for a user who put ~/.local/bin on PATH there.
  fs.writeFileSync(path.join(dirs.home, ".profile"), `export PATH="${dirs.bin}:$PATH"\n`);
  fs.writeFileSync(path.join(dirs.home, ".bashrc"), `export PATH="${dirs.bin}:$PATH"\n`);

  const settings = {
    "files.hotExit": "off",
    "workbench.startupEditor": "none",
    "workbench.tips.enabled": false,
    "workbench.enableExperiments": false,
    "telemetry.telemetryLevel": "off",
    "update.mode": "none",
    "extensions.autoCheckUpdates": false,
    "extensions.autoUpdate": false,
    "security.workspace.trust.enabled": opt.restricted,
    // Untrusted folders open in Restricted Mode without asking.
    "security.workspace.trust.startupPrompt": "never",
    "editor.inlineSuggest.enabled": true,
    // The suggest widget would take Tab for itself.
    "editor.quickSuggestions": { other: false, comments: false, strings: false },
    "editor.suggestOnTriggerCharacters": false,
    "window.restoreWindows": "none",
    "ghostls.logLevel": "debug",
    ...(opt.model ? { "ghostls.model": path.resolve(opt.model) } : {}),
    // The restricted run's user also has the earlier spellings, which must reach the server as provider and
    // disabledLanguages.
    ...(opt.restricted ? { "ghostls.backend": "cpu", "ghostls.languages": { markdown: false } } : {}),
  };
  fs.mkdirSync(path.join(dirs.userdata, "User"), { recursive: true });
  const settingsFile = path.join(dirs.userdata, "User", "settings.json");
  fs.writeFileSync(settingsFile, JSON.stringify(settings, null, 2));
  const hijacked = path.join(root, "workspace-command-ran");
  if (opt.restricted) {
    const hijack = path.join(dirs.work, "not-ghostls.sh");
    fs.writeFileSync(hijack, `#!/bin/sh\ntouch "${hijacked}"\nexit 1\n`, { mode: 0o755 });
    fs.mkdirSync(path.join(dirs.work, ".vscode"));
    fs.writeFileSync(path.join(dirs.work, ".vscode", "settings.json"), JSON.stringify({
      "ghostls.server.command": hijack, "ghostls.server.args": ["--evil"], "ghostls.model": "/nonexistent/model",
      "ghostls.provider": "cuda", "ghostls.maxLines": 3,
      "ghostls.backend": { kind: "remote", url: "http://127.0.0.1:9/v1" },
      "ghostls.languageBackends": { python: { kind: "remote", url: "http://127.0.0.1:9/v1" } },
    }, null, 2));
  }
  const source = path.join(dirs.work, "fib.py");
  fs.writeFileSync(source, SOURCE);

  const common = ["--user-data-dir", dirs.userdata, "--extensions-dir", dirs.extensions];
  await run(process.execPath, [CODE_SERVER, ...common, "--install-extension", path.resolve(opt.vsix)], { env });
  mark("extension_installed_s");

  const port = await freePort();
  const logFile = path.join(root, "code-server.log");
  const logFd = fs.openSync(logFile, "w");
  const server = spawn(process.execPath, [CODE_SERVER, ...common, "--bind-addr", `127.0.0.1:${port}`,
    "--auth", "none", "--disable-telemetry", "--disable-update-check", ...(opt.restricted ? [] : ["--disable-workspace-trust"]),
    "--disable-getting-started-override", dirs.work],
  { env, detached: true, stdio: ["ignore", logFd, logFd] });
  children.push(server);
  const deadline = Date.now() + TIMEOUT_MS;
  await waitForHttp(`http://127.0.0.1:${port}/healthz`, deadline, logFile);
  mark("code_server_up_s");

  const browser = await chromium.launch({
    executablePath: opt.chromium, headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  const page = await browser.newPage({ viewport: { width: 1100, height: 640 } });
  try {
    page.setDefaultTimeout(Math.max(1000, deadline - Date.now()));
    await page.goto(`http://127.0.0.1:${port}/?folder=${encodeURIComponent(dirs.work)}`);
    await page.locator(".monaco-workbench").waitFor();

    // The status bar item: the server started and the model is ready.
    const ready = page.locator(".statusbar-item:has(.codicon-sparkle)", { hasText: "ghostls" });
    const settled = page.locator(".statusbar-item:has(.codicon-sparkle, .codicon-error, .codicon-debug-stop)",
      { hasText: "ghostls" });
    await settled.first().waitFor();
    if (!(await ready.count())) {
      fail(`the status bar says the server failed: ${await settled.first().getAttribute("aria-label")}`);
    }
    mark("model_ready_s");
    if (opt.restricted) {
      const initialize = firstMessage(fs.readFileSync(stdinLog));
      process.stdout.write(`${JSON.stringify({
        ok: true, restricted: true, workspace_command_ran: fs.existsSync(hijacked),
        restricted_mode_shown: (await page.locator(".statusbar-item", { hasText: "Restricted Mode" }).count()) > 0,
        initialization_options: initialize.params.initializationOptions, timings_s: lap,
      })}\n`);
      return;
    }

    // Open the file through Quick Open, the way a person would.
    await page.locator(".monaco-workbench").click({ position: { x: 600, y: 300 } });
    await page.keyboard.press("Control+P");
    await page.keyboard.type("fib.py");
    await page.locator(".quick-input-list .monaco-list-row", { hasText: "fib.py" }).first().waitFor();
    await page.keyboard.press("Enter");
    const editor = page.locator(".editor-instance .monaco-editor").first();
    await editor.locator(".view-line", { hasText: "def fibonacci" }).waitFor();
    await page.keyboard.press("Control+G");
    await page.keyboard.type(`${CURSOR.line}:${CURSOR.column}`);
    await page.keyboard.press("Enter");
    mark("file_open_s");

    // Headless, Alt+\ does not reach VS Code; the command does (ghostls.trigger runs
    // editor.action.inlineSuggest.trigger).
    const ghost = editor.locator(".ghost-text-decoration, .ghost-text");
    for (let attempt = 0; attempt < 3 && !(await ghost.count()); attempt++) {
      await page.keyboard.press("F1");
      await page.keyboard.type("ghostls: Suggest Ghost Text Here");
      await page.locator(".quick-input-list .monaco-list-row", { hasText: "Suggest Ghost Text Here" }).first().waitFor();
      await page.keyboard.press("Enter");
      try {
        await ghost.first().waitFor({ timeout: 30000 });
      } catch { /* ask again: the first request may have waited for a model still warming up */ }
    }
    await ghost.first().waitFor({ timeout: 5000 });
    const ghostText = (await ghost.allTextContents()).join("").replace(/\u00a0/g, " ");
    mark("ghost_text_s");
    await page.screenshot({ path: opt.screenshot });

    // Partial accept through VS Code's own command (Ctrl+Right: acceptNextWord): the cursor moves
    // past part of the suggestion and the rest stays on screen; then Tab takes the rest.
    const cursorColumn = async () => Number(/Col (\d+)/.exec(
      await page.locator(".statusbar-item", { hasText: /Ln \d+, Col \d+/ }).first().innerText())?.[1]);
    const fullLength = ghostText.trimEnd().length;
    await page.keyboard.press("Control+ArrowRight");
    let column = await cursorColumn();
    for (let i = 0; i < 50 && column === CURSOR.column; i++) {
      await new Promise((r) => setTimeout(r, 100));
      column = await cursorColumn();
    }
    const wordAccepted = column - CURSOR.column;
    const rest = (await ghost.allTextContents()).join("").replace(/\u00a0/g, " ");
    if (!(wordAccepted > 0 && wordAccepted < fullLength && rest.trim() !== "")) {
      fail(`accept next word moved the cursor by ${wordAccepted} of ${fullLength}, leaving ghost text ${JSON.stringify(rest)}`);
    }
    mark("word_accepted_s");

    await page.keyboard.press("Tab");
    await ghost.first().waitFor({ state: "detached", timeout: 10000 });
    await page.keyboard.press("Control+S");
    const savedDeadline = Date.now() + 10000;
    let saved = SOURCE;
    while (saved === SOURCE && Date.now() < savedDeadline) {
      await new Promise((r) => setTimeout(r, 200));
      saved = fs.readFileSync(source, "utf8");
    }
    mark("accepted_s");

    // Explain the Last Completion: the server's ghostls/explain answer, in a dialog.
    await page.keyboard.press("F1");
    await page.keyboard.type("ghostls: Explain the Last Completion");
    await page.locator(".quick-input-list .monaco-list-row", { hasText: "Explain the Last Completion" }).first().waitFor();
    await page.keyboard.press("Enter");
    const dialog = page.locator(".monaco-dialog-box");
    await dialog.waitFor({ timeout: 10000 });
    const explanation = (await dialog.innerText()).trim();
    await page.keyboard.press("Escape");
    await dialog.waitFor({ state: "detached", timeout: 5000 });

    // Clicking the status bar item turns ghost text off: the icon changes and the user setting says so.
    await ready.click();
    await page.locator(".statusbar-item:has(.codicon-circle-slash)", { hasText: "ghostls" }).waitFor({ timeout: 10000 });
    const toggled = JSON.parse(fs.readFileSync(settingsFile, "utf8"))["ghostls.enable"];

    const initialize = firstMessage(fs.readFileSync(stdinLog));
    const scrubbed = JSON.parse(JSON.stringify(initialize).replaceAll(root, "/tmp/ghostls-vscode-e2e"));
    fs.writeFileSync(opt.initialize, `${JSON.stringify(scrubbed, null, 2)}\n`);

    const lines = SOURCE.split("\n");
    const offset = lines.slice(0, CURSOR.line - 1).join("\n").length + 1 + CURSOR.column - 1;
    process.stdout.write(`${JSON.stringify({
      ok: true, before: SOURCE, after: saved, ghost_text: ghostText, cursor_offset: offset,
      word_accepted_chars: wordAccepted, ghost_after_word: rest,
      explanation, toggled_enable: toggled, timings_s: lap,
    })}\n`);
  } catch (error) {
    // What the screen and the extension's log said, for whoever reads the failure.
    await page.screenshot({ path: (opt.screenshot || path.join(root, "x.png")).replace(/\.png$/, "-failure.png") }).catch(() => {});
    const logs = findFiles(path.join(dirs.userdata, "logs"), "ghostls.log")
      .map((f) => fs.readFileSync(f, "utf8")).join("\n").slice(-4000);
    error.message += `\n--- ghostls output channel ---\n${logs}\n--- kept in ${root} ---`;
    throw error;
  } finally {
    await browser.close();
  }
}

function findFiles(dir, name) {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir, { recursive: true }).map((f) => path.join(dir, f)).filter((f) => path.basename(f) === name);
}

/** Stops what this run started (code-server's process group: its extension host and the server). */
async function cleanup() {
  await Promise.all(children.map((child) => new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once("exit", resolve);
    try {
      process.kill(-child.pid, "SIGTERM");
    } catch { return resolve(); }
    setTimeout(() => {
      try { process.kill(-child.pid, "SIGKILL"); } catch { /* gone */ }
      resolve();
    }, 5000).unref();
  })));
}

main().then(async () => {
  await cleanup();
  fs.rmSync(root, { recursive: true, force: true });
  process.exit(0);
}, async (error) => {
  await cleanup();
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
