/**
 * Renders the `ghostls/explain` answer (server/handlers/explain.py) for people: one summary line and
 * a detail block. Pure. The answer carries no source code, and neither does what this makes of it.
 */

export interface Explanation {
  summary: string;
  detail: string;
}

export function explainText(answer: unknown): Explanation {
  const a = (typeof answer === "object" && answer !== null ? answer : {}) as Record<string, any>;
  const model = (typeof a.model === "object" && a.model !== null ? a.model : {}) as Record<string, unknown>;
  const modelLine = [
    `Model: ${model.model || "(none loaded)"}`,
    model.state ? `state ${model.state}` : "",
    model.provider ? `on ${model.provider}` : "",
    model.template ? `FIM template ${model.template}` : "",
  ].filter(Boolean).join(", ");

  const last = a.last;
  if (typeof last !== "object" || last === null) {
    return { summary: "ghostls has not completed anything yet.", detail: modelLine };
  }
  const chars = typeof last.chars === "number" ? last.chars : 0;
  const reason = typeof last.reason === "string" ? last.reason : "unknown";
  const summary = chars > 0
    ? `Last completion: ${chars} characters, ${last.multiline ? "multi-line" : "single line"}, ended by: ${reason}`
    : `Last completion was empty: ${reason}`;
  const lines = [
    modelLine,
    `Prompt tokens: ${last.prompt_tokens ?? 0} (${last.reused_tokens ?? 0} reused from the KV cache)`,
  ];
  const timings = typeof last.timings_ms === "object" && last.timings_ms !== null ? last.timings_ms : {};
  const stages = Object.entries(timings as Record<string, unknown>)
    .filter(([, ms]) => typeof ms === "number")
    .map(([stage, ms]) => `${stage} ${(ms as number).toFixed(1)} ms`);
  if (stages.length) {
    lines.push(`Time: ${stages.join(", ")}`);
  }
  return { summary, detail: lines.join("\n") };
}
