/**
 * Maps the `ghostls.*` VS Code settings to the server's options. Each server setting (completion/settings.py) is
 * the VS Code setting of the same camelCase name, `ghostls.maxLines` -> `maxLines`, so there is one
 * vocabulary across the server, VS Code and Neovim. Pure: no `vscode` import, so `node --test` covers it.
 * Never sends a key the server does not know, because the server reports every unknown key to the user.
 */

/** Reads one setting under `ghostls.`, e.g. `read("maxLines")`; undefined when unset. */
export type SettingReader = (key: string) => unknown;

/** Every server setting, by the server's own name; package.json declares each as `ghostls.<name>`. */
export const SERVER_SETTINGS = [
  "enable",
  "disabledLanguages",
  "model",
  "precision",
  "provider",
  "fimTemplate",
  "maxPromptTokens",
  "maxNewTokens",
  "maxLines",
  "timeBudgetMs",
  "debounceMs",
  "loadWaitMs",
  "speculate",
  "kvCacheMb",
  "logLevel",
  "backend",
  "languageBackends",
  "workspaceContext",
  "contextTokens",
  "secretPatterns",
  "skipRules",
] as const;

/** Settings of the extension alone: how the server is started and the LSP trace. */
export const CLIENT_SETTINGS = ["server.command", "server.args", "trace.server"] as const;

/** Settings that need a new server process (the others apply to the running one). */
export const RESTART_KEYS = ["server.command", "server.args"] as const;

/** What the server reads from `initializationOptions` and `workspace/didChangeConfiguration`. */
export interface ServerOptions {
  enable: boolean;
  disabledLanguages: string[];
  model: string | null;
  [setting: string]: unknown;
}

// Earlier names: `ghostls.backend` as a string chose the execution provider (the server's `provider`), and
// `ghostls.languages` (`{ "markdown": false }`) switched languages off (the server's `disabledLanguages`).
const LEGACY_PROVIDERS = ["auto", "cpu", "cuda"];

export function serverOptions(read: SettingReader): ServerOptions {
  const options: ServerOptions = { enable: true, disabledLanguages: [], model: null };
  // Values go through as the user wrote them: the server checks types, ranges and choices, falls back to
  // its default and tells the user once (one place owns validation).
  const written: Record<string, unknown> = options;
  for (const key of SERVER_SETTINGS) {
    const value = read(key);
    if (value !== undefined) {
      written[key] = value;
    }
  }
  options.enable = read("enable") !== false;
  options.model = modelPath(read("model"));
  options.disabledLanguages = [...new Set([...stringList(read("disabledLanguages")),
    ...disabledLanguages(read("languages"))])].sort();
  const legacy = legacyProvider(read("backend"));
  if (legacy !== undefined) {
    // The old meaning of `ghostls.backend`: a provider, never a remote engine. An explicit provider wins.
    options.backend = null;
    if (options.provider === undefined || options.provider === "auto") {
      options.provider = legacy;
    }
  }
  return options;
}

/** One message per setting still written under an earlier name or meaning (none when all are current). */
export function legacyWarnings(read: SettingReader): string[] {
  const warnings: string[] = [];
  const legacy = legacyProvider(read("backend"));
  if (legacy !== undefined) {
    warnings.push(`"ghostls.backend": "${legacy}" is read as "ghostls.provider": "${legacy}". `
      + "`ghostls.backend` now names a remote completion engine; set `ghostls.provider` instead.");
  }
  const languages = read("languages");
  if (typeof languages === "object" && languages !== null && Object.keys(languages).length > 0) {
    warnings.push("\"ghostls.languages\" is read as \"ghostls.disabledLanguages\" (the ids set to false); "
      + "set `ghostls.disabledLanguages` instead.");
  }
  return warnings;
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

function legacyProvider(backend: unknown): string | undefined {
  return typeof backend === "string" && LEGACY_PROVIDERS.includes(backend) ? backend : undefined;
}

function stringList(value: unknown): string[] {
  return Array.isArray(value) ? value.filter((item): item is string => typeof item === "string") : [];
}

function modelPath(value: unknown): string | null {
  // An empty string is how the Settings UI clears a text field: the embedded model.
  return typeof value === "string" && value.trim() !== "" ? value.trim() : null;
}
