// Which server command the extension starts, for each way a user may have set things up.
const test = require("node:test");
const assert = require("node:assert/strict");
const { resolveServerCommand, expand, DEFAULT_ARGS } = require("../out/serverCommand.js");

const base = (files, over = {}) => ({
  configured: "", args: undefined, pythonPath: undefined, pathEnv: "/usr/local/bin:/usr/bin",
  platform: "linux", home: "/home/ada", workspaceFolder: "/src/proj",
  isExecutable: (f) => files.includes(f), ...over,
});

test("the configured command wins, with the configured arguments", () => {
  const r = resolveServerCommand(base(["/opt/g/bin/ghostls", "/usr/bin/ghostls"],
    { configured: "/opt/g/bin/ghostls", args: ["serve", "--stdio", "--log-level", "debug"] }));
  assert.deepEqual(r, { command: "/opt/g/bin/ghostls", args: ["serve", "--stdio", "--log-level", "debug"],
    source: "setting" });
});

test("a configured command that does not exist is an error, not a fallback", () => {
  const r = resolveServerCommand(base(["/usr/bin/ghostls"], { configured: "~/missing/ghostls" }));
  assert.match(r.error, /\/home\/ada\/missing\/ghostls is not an executable/);
});

test("a bare configured name is looked up on PATH", () => {
  const r = resolveServerCommand(base(["/usr/bin/ghostls-dev"], { configured: "ghostls-dev" }));
  assert.equal(r.command, "/usr/bin/ghostls-dev");
});

test("next to the chosen Python interpreter, before PATH", () => {
  const r = resolveServerCommand(base(["/src/proj/.venv/bin/ghostls", "/usr/bin/ghostls"],
    { pythonPath: "${workspaceFolder}/.venv/bin/python" }));
  assert.deepEqual(r, { command: "/src/proj/.venv/bin/ghostls", args: DEFAULT_ARGS, source: "python" });
});

test("an interpreter without ghostls falls back to PATH", () => {
  const r = resolveServerCommand(base(["/usr/bin/ghostls"], { pythonPath: "/opt/py312/bin/python3.12" }));
  assert.deepEqual(r, { command: "/usr/bin/ghostls", args: DEFAULT_ARGS, source: "path" });
});

test("a bare 'python' interpreter setting is ignored", () => {
  const r = resolveServerCommand(base(["/usr/local/bin/ghostls"], { pythonPath: "python" }));
  assert.equal(r.source, "path");
  assert.equal(r.command, "/usr/local/bin/ghostls");
});

test("windows: Scripts folder style names and ; separated PATH", () => {
  const r = resolveServerCommand(base(["C:\\py\\Scripts\\ghostls.exe"],
    { platform: "win32", pathEnv: "C:\\Windows;C:\\py\\Scripts" }));
  assert.equal(r.command, "C:\\py\\Scripts\\ghostls.exe");
});

test("nothing found: an error that says how to fix it", () => {
  const r = resolveServerCommand(base([]));
  assert.match(r.error, /pip install ghostls/);
  assert.match(r.error, /ghostls\.server\.command/);
});

test("malformed args fall back to serve --stdio", () => {
  const r = resolveServerCommand(base(["/usr/bin/ghostls"], { args: ["serve", 3] }));
  assert.deepEqual(r.args, ["serve", "--stdio"]);
});

test("variables", () => {
  assert.equal(expand("~/x", { home: "/h", workspaceFolder: undefined }), "/h/x");
  assert.equal(expand("${userHome}/x", { home: "/h", workspaceFolder: undefined }), "/h/x");
  assert.equal(expand("${workspaceFolder}/x", { home: "/h", workspaceFolder: undefined }), "${workspaceFolder}/x");
});
