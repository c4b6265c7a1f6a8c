// The settings mapping: what the server receives for each VS Code setting (completion/settings.py names).
const test = require("node:test");
const assert = require("node:assert/strict");
const {
  serverOptions, legacyWarnings, disabledLanguages, enabledFor, SERVER_SETTINGS, CLIENT_SETTINGS,
} = require("../out/settings.js");

const manifest = require("../package.json");
const properties = manifest.contributes.configuration.properties;

const reader = (values) => (key) => values[key];
/** As VS Code reads: the user's value, else the default package.json declares. */
const vscodeReader = (values) => (key) => (key in values ? values[key] : properties[`ghostls.${key}`]?.default);

test("unset settings send nothing but the switches and the model", () => {
  const options = serverOptions(reader({}));
  assert.deepEqual(options, { enable: true, disabledLanguages: [], model: null });
});

test("defaults send every server setting, each under the server's own name", () => {
  const options = serverOptions(vscodeReader({}));
  assert.deepEqual(Object.keys(options).sort(), [...SERVER_SETTINGS].sort());
  assert.equal(options.provider, "auto");
  assert.equal(options.backend, null);
  assert.deepEqual(options.languageBackends, {});
  assert.equal(options.maxPromptTokens, null);
});

test("each server setting goes through as the user wrote it", () => {
  const remote = { kind: "remote", url: "https://engine.example", apiKeyEnv: "KEY" };
  const values = {
    enable: false, disabledLanguages: ["markdown"], model: " /models/qwen ", precision: "int8", provider: "cuda",
    fimTemplate: "qwen", maxPromptTokens: 512, maxNewTokens: 32, maxLines: 3, timeBudgetMs: 900, debounceMs: 75,
    loadWaitMs: 0, speculate: false, kvCacheMb: 64, logLevel: "debug", backend: remote,
    languageBackends: { go: { kind: "local" } }, workspaceContext: false, contextTokens: 0,
    secretPatterns: ["*.secret"], skipRules: ["syntax"],
  };
  assert.deepEqual(Object.keys(values).sort(), [...SERVER_SETTINGS].sort());
  const options = serverOptions(vscodeReader(values));
  assert.deepEqual(options, { ...values, model: "/models/qwen" });
  assert.deepEqual(legacyWarnings(vscodeReader(values)), []);
});

test("package.json declares exactly the server settings plus the client-only ones and the deprecated one", () => {
  const declared = Object.keys(properties).map((k) => k.replace(/^ghostls\./, ""));
  assert.deepEqual(declared.sort(), [...SERVER_SETTINGS, ...CLIENT_SETTINGS, "languages"].sort());
  for (const [key, schema] of Object.entries(properties)) {
    assert.ok(schema.description || schema.markdownDescription, `${key} has no description`);
    assert.ok("default" in schema, `${key} has no default`);
  }
  assert.ok(properties["ghostls.languages"].markdownDeprecationMessage);
});

test("the restricted settings are the ones that choose what runs and where code goes", () => {
  const trust = manifest.capabilities.untrustedWorkspaces;
  assert.equal(trust.supported, "limited");
  assert.deepEqual(trust.restrictedConfigurations.sort(), ["ghostls.backend", "ghostls.languageBackends",
    "ghostls.model", "ghostls.provider", "ghostls.server.args", "ghostls.server.command"]);
});

test("the old ghostls.backend (a provider) is read as provider, with a warning", () => {
  const options = serverOptions(vscodeReader({ backend: "cuda" }));
  assert.equal(options.provider, "cuda");
  assert.equal(options.backend, null);
  const warnings = legacyWarnings(vscodeReader({ backend: "cuda" }));
  assert.equal(warnings.length, 1);
  assert.match(warnings[0], /ghostls\.provider/);
  // An explicit provider wins over the old spelling.
  assert.equal(serverOptions(vscodeReader({ backend: "cuda", provider: "cpu" })).provider, "cpu");
  // Anything else in ghostls.backend is a remote engine, for the server to check.
  assert.equal(serverOptions(vscodeReader({ backend: "tpu" })).backend, "tpu");
  assert.deepEqual(legacyWarnings(vscodeReader({ backend: "tpu" })), []);
});

test("the old ghostls.languages switches are read as disabledLanguages, with a warning", () => {
  const options = serverOptions(vscodeReader({ languages: { markdown: false, python: true },
    disabledLanguages: ["go", "markdown"] }));
  assert.deepEqual(options.disabledLanguages, ["go", "markdown"]);
  assert.equal(legacyWarnings(vscodeReader({ languages: { markdown: false } })).length, 1);
  assert.deepEqual(legacyWarnings(vscodeReader({})), []);
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
  const options = serverOptions(reader({ disabledLanguages: ["go"] }));
  assert.equal(enabledFor(options, "go"), false);
  assert.equal(enabledFor(options, "python"), true);
  assert.equal(enabledFor({ ...options, enable: false }, "python"), false);
});
