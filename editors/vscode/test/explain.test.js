// The explain command's text, from the server's ghostls/explain answer.
const test = require("node:test");
const assert = require("node:assert/strict");
const { explainText } = require("../out/explain.js");

test("a completion is summarised with its reason, tokens and timings", () => {
  const t = explainText({
    model: { state: "ready", model: "smollm2", provider: "cpu", template: "starcoder" },
    last: { reason: "block closed", multiline: true, prompt_tokens: 310, reused_tokens: 290,
      timings_ms: { prompt: 1.25, prefill: 40, decode: 120.5 }, chars: 57 },
  });
  assert.equal(t.summary, "Last completion: 57 characters, multi-line, ended by: block closed");
  assert.match(t.detail, /Model: smollm2, state ready, on cpu, FIM template starcoder/);
  assert.match(t.detail, /Prompt tokens: 310 \(290 reused from the KV cache\)/);
  assert.match(t.detail, /Time: prompt 1.3 ms, prefill 40.0 ms, decode 120.5 ms/);
});

test("an empty completion says why", () => {
  const t = explainText({ model: {}, last: { reason: "model not loaded", chars: 0 } });
  assert.equal(t.summary, "Last completion was empty: model not loaded");
});

test("no completion yet, or a malformed answer", () => {
  assert.equal(explainText({ model: { state: "loading" }, last: null }).summary,
    "ghostls has not completed anything yet.");
  assert.equal(explainText(undefined).summary, "ghostls has not completed anything yet.");
});
