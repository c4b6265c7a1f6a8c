/**
 * Finds the `ghostls` server to start: the `ghostls.server.command` setting, else the `ghostls`
 * script next to the configured Python interpreter, else `ghostls` on PATH. Pure (the file system
 * is passed in as `isExecutable`), so `node --test` covers every branch. Never runs anything.
 */

import * as path from "path";

export interface CommandInputs {
  /** `ghostls.server.command`; empty means "find it". */
  configured: string;
  /** `ghostls.server.args`. */
  args: string[] | undefined;
  /** The Python interpreter the user chose (`python.defaultInterpreterPath`), if any. */
  pythonPath: string | undefined;
  /** The PATH environment variable. */
  pathEnv: string | undefined;
  platform: string;
  home: string;
  /** The first workspace folder, for `${workspaceFolder}` in the interpreter path. */
  workspaceFolder: string | undefined;
  isExecutable: (file: string) => boolean;
}

export type ResolvedCommand =
  | { command: string; args: string[]; source: "setting" | "python" | "path" }
  | { error: string };

export const DEFAULT_ARGS = ["serve", "--stdio"];

export function resolveServerCommand(inputs: CommandInputs): ResolvedCommand {
  const args = Array.isArray(inputs.args) && inputs.args.every((a) => typeof a === "string")
    ? inputs.args : DEFAULT_ARGS;
  const p = inputs.platform === "win32" ? path.win32 : path.posix;
  const exe = inputs.platform === "win32" ? "ghostls.exe" : "ghostls";

  const configured = expand(inputs.configured.trim(), inputs);
  if (configured) {
    const found = configured.includes("/") || configured.includes("\\")
      ? (inputs.isExecutable(configured) ? configured : undefined)
      : onPath(configured, inputs, p);
    if (!found) {
      return { error: `ghostls.server.command: ${configured} is not an executable file (nor a command on PATH)` };
    }
    return { command: found, args, source: "setting" };
  }

  const python = inputs.pythonPath ? expand(inputs.pythonPath.trim(), inputs) : "";
  // A bare "python" names no environment: PATH below finds the same thing or better.
  if (python && (python.includes("/") || python.includes("\\"))) {
    const script = p.join(p.dirname(python), exe);
    if (inputs.isExecutable(script)) {
      return { command: script, args, source: "python" };
    }
  }

  const fromPath = onPath(exe, inputs, p);
  if (fromPath) {
    return { command: fromPath, args, source: "path" };
  }
  return {
    error: "ghostls: the server was not found. Install it into your Python environment " +
      "(pip install ghostls), or set ghostls.server.command to the ghostls executable.",
  };
}

function onPath(name: string, inputs: CommandInputs, p: typeof path.posix): string | undefined {
  const separator = inputs.platform === "win32" ? ";" : ":";
  for (const dir of (inputs.pathEnv ?? "").split(separator)) {
    if (dir && inputs.isExecutable(p.join(dir, name))) {
      return p.join(dir, name);
    }
  }
  return undefined;
}

/** `~`, `${userHome}` and `${workspaceFolder}`, the variables users put in interpreter paths. */
export function expand(value: string, inputs: Pick<CommandInputs, "home" | "workspaceFolder">): string {
  let out = value;
  if (out === "~" || out.startsWith("~/")) {
    out = inputs.home + out.slice(1);
  }
  out = out.replace(/\$\{userHome\}/g, inputs.home);
  if (inputs.workspaceFolder !== undefined) {
    out = out.replace(/\$\{workspaceFolder\}/g, inputs.workspaceFolder);
  }
  return out;
}
