/**
 * What the status bar item says: the model's state from `ghostls/status`, the conversion or load
 * percentage from `$/progress` (token "ghostls/model"), and whether ghost text is switched off.
 * Pure: the extension keeps one ServerStatus and renders it with `statusItem`.
 */

export type ModelState = "stopped" | "starting" | "converting" | "loading" | "ready" | "error";

export interface ServerStatus {
  state: ModelState;
  enabled: boolean;
  detail: string;
  model: string;
  provider: string;
  template: string;
  /** 0-100 while a conversion or load reports progress. */
  percentage?: number;
  /** The stage the last `$/progress` named, e.g. "converting to ONNX". */
  stage?: string;
}

export const INITIAL_STATUS: ServerStatus = {
  state: "starting", enabled: true, detail: "", model: "", provider: "", template: "",
};

export interface StatusItem {
  text: string;
  tooltip: string;
  /** Drawn with the error background. */
  error: boolean;
}

const STATES: readonly string[] = ["starting", "converting", "loading", "ready", "error"];

/** Applies a `ghostls/status` notification; anything malformed leaves the status as it was. */
export function onStatusNotification(status: ServerStatus, params: unknown): ServerStatus {
  if (typeof params !== "object" || params === null) {
    return status;
  }
  const p = params as Record<string, unknown>;
  if (typeof p.state !== "string" || !STATES.includes(p.state)) {
    return status;
  }
  const text = (key: string) => (typeof p[key] === "string" ? (p[key] as string) : "");
  const state = p.state as ModelState;
  const busy = state === "converting" || state === "loading";
  return {
    ...status, state, detail: text("detail"), model: text("model"), provider: text("provider"),
    template: text("template"),
    percentage: busy ? status.percentage : undefined, stage: busy ? status.stage : undefined,
  };
}

/** Applies one `$/progress` value (begin, report or end) for the model token. */
export function onProgress(status: ServerStatus, value: unknown): ServerStatus {
  if (typeof value !== "object" || value === null) {
    return status;
  }
  const v = value as Record<string, unknown>;
  if (v.kind === "end") {
    return { ...status, percentage: undefined, stage: undefined };
  }
  if (v.kind !== "begin" && v.kind !== "report") {
    return status;
  }
  const percentage = typeof v.percentage === "number"
    ? Math.max(0, Math.min(100, Math.round(v.percentage))) : status.percentage;
  const stage = typeof v.message === "string" && v.message !== "" ? v.message : status.stage;
  return { ...status, percentage, stage };
}

export function statusItem(status: ServerStatus): StatusItem {
  const click = status.enabled ? "Click to turn ghost text off." : "Click to turn ghost text on.";
  const model = status.model ? `Model: ${status.model}` : "";
  const runtime = [status.provider && `on ${status.provider}`, status.template && `FIM ${status.template}`]
    .filter(Boolean).join(", ");
  const about = [model, runtime].filter(Boolean).join(" ");
  const lines = (first: string) => [first, about, click].filter(Boolean).join("\n");

  if (status.state === "error") {
    return { text: "$(error) ghostls", tooltip: lines(`ghostls: ${status.detail || "the server failed"}`), error: true };
  }
  if (status.state === "stopped") {
    return { text: "$(debug-stop) ghostls", tooltip: lines("ghostls: the server is not running"), error: true };
  }
  if (!status.enabled) {
    return { text: "$(circle-slash) ghostls", tooltip: lines("ghostls: off"), error: false };
  }
  const pct = status.percentage !== undefined ? ` ${status.percentage}%` : "";
  switch (status.state) {
    case "starting":
      return { text: "$(loading~spin) ghostls", tooltip: lines("ghostls: starting"), error: false };
    case "converting":
      return {
        text: `$(sync~spin) ghostls: converting${pct}`,
        tooltip: lines(`ghostls: ${status.stage || status.detail || "preparing the model"}${pct}`), error: false,
      };
    case "loading":
      return {
        text: `$(loading~spin) ghostls: loading${pct}`,
        tooltip: lines(`ghostls: ${status.detail || "loading the model"}`), error: false,
      };
    default:
      return { text: "$(sparkle) ghostls", tooltip: lines(`ghostls: ${status.detail || "ready"}`), error: false };
  }
}
