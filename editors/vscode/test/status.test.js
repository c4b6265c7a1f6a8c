// The status bar text for each server state, driven by ghostls/status and $/progress values.
const test = require("node:test");
const assert = require("node:assert/strict");
const { INITIAL_STATUS, onStatusNotification, onProgress, statusItem } = require("../out/status.js");

test("starting, then converting with a percentage, then loading, then ready", () => {
  let s = INITIAL_STATUS;
  assert.match(statusItem(s).text, /loading~spin\) ghostls$/);
  s = onProgress(s, { kind: "begin", title: "ghostls", message: "preparing the model", percentage: 0 });
  s = onStatusNotification(s, { state: "converting", detail: "preparing the model" });
  s = onProgress(s, { kind: "report", message: "quantizing", percentage: 42.4 });
  assert.equal(statusItem(s).text, "$(sync~spin) ghostls: converting 42%");
  assert.match(statusItem(s).tooltip, /quantizing 42%/);
  s = onStatusNotification(s, { state: "loading", detail: "loading smollm2", model: "smollm2" });
  assert.equal(statusItem(s).text, "$(loading~spin) ghostls: loading 42%");
  s = onStatusNotification(s, { state: "ready", detail: "smollm2 ready in 0.40s", model: "smollm2",
    provider: "cpu", template: "starcoder" });
  s = onProgress(s, { kind: "end", message: "ready" });
  const item = statusItem(s);
  assert.equal(item.text, "$(sparkle) ghostls");
  assert.equal(item.error, false);
  assert.match(item.tooltip, /smollm2 ready in 0.40s/);
  assert.match(item.tooltip, /Model: smollm2 on cpu, FIM starcoder/);
  assert.match(item.tooltip, /Click to turn ghost text off/);
});

test("an error is shown with its detail and the error colour", () => {
  const s = onStatusNotification(INITIAL_STATUS, { state: "error", detail: "model path /x does not exist" });
  const item = statusItem(s);
  assert.equal(item.text, "$(error) ghostls");
  assert.equal(item.error, true);
  assert.match(item.tooltip, /model path \/x does not exist/);
});

test("disabled shows the off icon and offers to turn it on", () => {
  const s = { ...onStatusNotification(INITIAL_STATUS, { state: "ready" }), enabled: false };
  const item = statusItem(s);
  assert.equal(item.text, "$(circle-slash) ghostls");
  assert.match(item.tooltip, /Click to turn ghost text on/);
});

test("a stopped server is an error", () => {
  const item = statusItem({ ...INITIAL_STATUS, state: "stopped", detail: "not found" });
  assert.equal(item.error, true);
});

test("malformed notifications and progress values change nothing", () => {
  const s = onStatusNotification(INITIAL_STATUS, { state: "ready" });
  for (const bad of [null, 3, "ready", { state: "exploded" }, { state: 1 }]) {
    assert.deepEqual(onStatusNotification(s, bad), s);
  }
  for (const bad of [null, "x", { kind: "middle" }]) {
    assert.deepEqual(onProgress(s, bad), s);
  }
});

test("percentages are clamped to 0-100", () => {
  assert.equal(onProgress(INITIAL_STATUS, { kind: "report", percentage: 250 }).percentage, 100);
  assert.equal(onProgress(INITIAL_STATUS, { kind: "report", percentage: -3 }).percentage, 0);
});
