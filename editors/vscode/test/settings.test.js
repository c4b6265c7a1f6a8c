// The settings mapping: what the server receives for each VS Code setting (server/config.py names).
const test = require("node:test");
const assert = require("node:assert/strict");
const { serverOptions, disabledLanguages, enabledFor, SERVER_KEYS } = require("../out/settings.js");

const reader = (values) => (key) => values[key];

test("defaults send the server its own defaults and no unknown keys", () => {
  const options = serverOptions(reader({}));
  assert.deepEqual(options, { enable: true, disabledLanguages: [], model: null, provider: "auto" });
});

test("every contributed setting maps to a server setting", () => {
  const options = serverOptions(reader({
    enable: false, languages: { markdown: false, python: true, plaintext: false }, model: " /models/qwen ",
    backend: "cuda", debounceMs: 75, maxLines: 3, logLevel: "debug",
  }));
  assert.deepEqual(options, {
    enable: false, disabledLanguages: ["markdown", "plaintext"], model: "/models/qwen", provider: "cuda",
    debounceMs: 75, maxLines: 3, logLevel: "debug",
  });
});

test("the settings in package.json are exactly the mapped ones plus the client-only ones", () => {
  const manifest = require("../package.json");
  const declared = Object.keys(manifest.contributes.configuration.properties).map((k) => k.replace(/^ghostls\./, ""));
  const clientOnly = ["server.command", "server.args", "trace.server"];
  assert.deepEqual(declared.filter((k) => !clientOnly.includes(k)).sort(), Object.keys(SERVER_KEYS).sort());
});

test("the restricted settings are the ones that choose what runs", () => {
  const manifest = require("../package.json");
  const trust = manifest.capabilities.untrustedWorkspaces;
  assert.equal(trust.supported, "limited");
  assert.deepEqual(trust.restrictedConfigurations.sort(),
    ["ghostls.backend", "ghostls.model", "ghostls.server.args", "ghostls.server.command"]);
});

test("an empty model field means the embedded model", () => {
  assert.equal(serverOptions(reader({ model: "" })).model, null);
  assert.equal(serverOptions(reader({ model: "   " })).model, null);
  assert.equal(serverOptions(reader({ model: null })).model, null);
});

test("out-of-range numbers pass through for the server to reject and report", () => {
  assert.equal(serverOptions(reader({ maxLines: 100000 })).maxLines, 100000);
});

test("per-language switches", () => {
  assert.deepEqual(disabledLanguages({ go: false, rust: true }), ["go"]);
  assert.deepEqual(disabledLanguages(["go"]), []);
  assert.deepEqual(disabledLanguages("go"), []);
  const options = serverOptions(reader({ languages: { go: false } }));
  assert.equal(enabledFor(options, "go"), false);
  assert.equal(enabledFor(options, "python"), true);
  assert.equal(enabledFor({ ...options, enable: false }, "python"), false);
});
