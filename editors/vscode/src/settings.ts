/**
 * Maps the `ghostls.*` VS Code settings to the server's options (server/config.py, camelCase).
 * Pure: no `vscode` import, so `node --test` covers it. Never sends a key the server does not know,
 * because the server reports every unknown key to the user.
 */

/** Reads one setting under `ghostls.`, e.g. `read("maxLines")`; undefined when unset. */
export type SettingReader = (key: string) => unknown;

/** What the server reads from `initializationOptions` and `workspace/didChangeConfiguration`. */
export interface ServerOptions {
  enable: boolean;
  disabledLanguages: string[];
  model: string | null;
  provider: string;
  debounceMs?: number;
  maxLines?: number;
  logLevel?: string;
}

/** The server setting each VS Code setting feeds; `backend` is the server's `provider`. */
export const SERVER_KEYS: Readonly<Record<string, string>> = {
  enable: "enable",
  languages: "disabledLanguages",
  model: "model",
  backend: "provider",
  debounceMs: "debounceMs",
  maxLines: "maxLines",
  logLevel: "logLevel",
};

/** Settings that need a new server process (the others apply to the running one). */
export const RESTART_KEYS = ["server.command", "server.args"] as const;

export function serverOptions(read: SettingReader): ServerOptions {
  const options: ServerOptions = {
    enable: read("enable") !== false,
    disabledLanguages: disabledLanguages(read("languages")),
    model: modelPath(read("model")),
    provider: typeof read("backend") === "string" ? (read("backend") as string) : "auto",
  };
  // Numbers and the log level go through as the user wrote them: the server checks ranges and
  // choices, falls back to its default and tells the user once (one place owns validation).
  for (const key of ["debounceMs", "maxLines", "logLevel"] as const) {
    const value = read(key);
    if (value !== undefined && value !== null) {
      (options as unknown as Record<string, unknown>)[key] = value;
    }
  }
  return options;
}

/** `{ "markdown": false, "python": true }` -> `["markdown"]`. */
export function disabledLanguages(languages: unknown): string[] {
  if (typeof languages !== "object" || languages === null || Array.isArray(languages)) {
    return [];
  }
  return Object.entries(languages as Record<string, unknown>)
    .filter(([, on]) => on === false)
    .map(([id]) => id)
    .sort();
}

/** Whether ghost text is on for a language: the global switch, then the per-language one. */
export function enabledFor(options: ServerOptions, languageId: string): boolean {
  return options.enable && !options.disabledLanguages.includes(languageId);
}

function modelPath(value: unknown): string | null {
  // An empty string is how the Settings UI clears a text field: the embedded model.
  return typeof value === "string" && value.trim() !== "" ? value.trim() : null;
}
