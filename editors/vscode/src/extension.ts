/**
 * The VS Code side of ghostls: starts `ghostls serve --stdio`, hands it the `ghostls.*` settings,
 * shows the model's state in the status bar and offers the toggle / trigger / log / explain commands.
 * Ghost text itself is vscode-languageclient's built-in inline completion feature; this file never
 * talks to a model and never sends code anywhere but to the local server process.
 */

import * as fs from "fs";
import * as os from "os";
import * as vscode from "vscode";
import {
  DidChangeConfigurationNotification,
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  State,
} from "vscode-languageclient/node";

import { explainText } from "./explain";
import { resolveServerCommand } from "./serverCommand";
import { RESTART_KEYS, enabledFor, legacyWarnings, serverOptions } from "./settings";
import { INITIAL_STATUS, ServerStatus, onProgress, onStatusNotification, statusItem } from "./status";

const SECTION = "ghostls";
const PROGRESS_TOKEN = "ghostls/model";
const STATUS_NOTIFICATION = "ghostls/status";
const EXPLAIN_REQUEST = "ghostls/explain";

let client: LanguageClient | undefined;
let status: ServerStatus = INITIAL_STATUS;
let statusBar: vscode.StatusBarItem;
let log: vscode.LogOutputChannel;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  log = vscode.window.createOutputChannel("ghostls", { log: true });
  statusBar = vscode.window.createStatusBarItem("ghostls.status", vscode.StatusBarAlignment.Right, 100);
  statusBar.name = "ghostls";
  statusBar.command = "ghostls.toggle";
  context.subscriptions.push(log, statusBar);

  context.subscriptions.push(
    vscode.commands.registerCommand("ghostls.toggle", toggle),
    vscode.commands.registerCommand("ghostls.trigger",
      () => vscode.commands.executeCommand("editor.action.inlineSuggest.trigger")),
    vscode.commands.registerCommand("ghostls.showLog", () => log.show()),
    vscode.commands.registerCommand("ghostls.explain", explainLast),
    vscode.commands.registerCommand("ghostls.restart", restart),
    vscode.workspace.onDidChangeConfiguration(onConfigurationChanged),
    vscode.window.onDidChangeActiveTextEditor(() => render()),
    // Trust changes which settings apply (the server command, model, backend, interpreter).
    vscode.workspace.onDidGrantWorkspaceTrust(restart),
  );
  render();
  warnLegacySettings();
  await start();
}

export async function deactivate(): Promise<void> {
  await stop();
}

function read(key: string): unknown {
  return vscode.workspace.getConfiguration(SECTION).get(key);
}

// -- the server process ---------------------------------------------------------------------------

async function start(): Promise<void> {
  const resolved = resolveServerCommand({
    configured: (read("server.command") as string | undefined) ?? "",
    args: read("server.args") as string[] | undefined,
    pythonPath: pythonInterpreter(),
    pathEnv: process.env.PATH,
    platform: process.platform,
    home: os.homedir(),
    workspaceFolder: vscode.workspace.workspaceFolders?.[0]?.uri.fsPath,
    isExecutable,
  });
  if ("error" in resolved) {
    setStatus({ ...status, state: "stopped", detail: resolved.error });
    log.error(`${resolved.error} (PATH=${process.env.PATH ?? ""})`);
    const choice = await vscode.window.showErrorMessage(resolved.error, "Open Settings");
    if (choice === "Open Settings") {
      await vscode.commands.executeCommand("workbench.action.openSettings", "ghostls.server.command");
    }
    return;
  }
  log.info(`starting ${resolved.command} ${resolved.args.join(" ")} (found via ${resolved.source})`);

  const server: ServerOptions = { command: resolved.command, args: resolved.args };
  const options: LanguageClientOptions = {
    // Every language: the server knows which it can parse and answers plain-text prompts elsewhere.
    documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
    outputChannel: log,
    initializationOptions: serverOptions(read),
    middleware: {
      provideInlineCompletionItems: (document, position, context, token, next) => {
        // Switched off for this language: do not even ask the server.
        if (!enabledFor(serverOptions(read), document.languageId)) {
          return null;
        }
        return next(document, position, context, token);
      },
      // The server also answers textDocument/completion for clients without inline completion. In
      // VS Code that would duplicate the ghost text in the suggest widget, and each such request
      // would supersede the inline request for the same document on the server.
      provideCompletionItem: () => null,
      handleWorkDoneProgress: (token, params, next) => {
        if (token === PROGRESS_TOKEN) {
          setStatus(onProgress(status, params));
        }
        next(token, params);
      },
    },
  };
  client = new LanguageClient("ghostls", "ghostls", server, options);
  client.onDidChangeState((event) => {
    if (event.newState === State.Stopped) {
      setStatus({ ...status, state: "stopped", detail: "the server stopped; see the log" });
    }
  });
  client.onNotification(STATUS_NOTIFICATION, (params) => setStatus(onStatusNotification(status, params)));
  setStatus({ ...INITIAL_STATUS, enabled: status.enabled });
  try {
    await client.start();
  } catch (error) {
    setStatus({ ...status, state: "error", detail: `the server did not start: ${String(error)}` });
    log.error(`the server did not start: ${String(error)}`);
  }
}

async function stop(): Promise<void> {
  const running = client;
  client = undefined;
  if (running) {
    try {
      await running.stop(5000);
    } catch (error) {
      log.warn(`stopping the server: ${String(error)}`);
    }
  }
}

async function restart(): Promise<void> {
  await stop();
  await start();
}

/** The Python interpreter the user chose. In Restricted Mode, user settings only: a workspace
 * could otherwise point it at a script of its own, which we would then run. */
function pythonInterpreter(): string | undefined {
  const inspected = vscode.workspace.getConfiguration("python").inspect<string>("defaultInterpreterPath");
  const value = vscode.workspace.isTrusted
    ? vscode.workspace.getConfiguration("python").get<string>("defaultInterpreterPath")
    : inspected?.globalValue;
  return value || undefined;
}

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

// -- settings -------------------------------------------------------------------------------------

async function onConfigurationChanged(event: vscode.ConfigurationChangeEvent): Promise<void> {
  if (RESTART_KEYS.some((key) => event.affectsConfiguration(`${SECTION}.${key}`))
      || (event.affectsConfiguration("python.defaultInterpreterPath") && !(read("server.command") as string))) {
    await restart();
    return;
  }
  if (!event.affectsConfiguration(SECTION)) {
    return;
  }
  render();
  warnLegacySettings();
  if (client?.isRunning()) {
    await client.sendNotification(DidChangeConfigurationNotification.type, { settings: serverOptions(read) });
  }
}

async function toggle(): Promise<void> {
  const config = vscode.workspace.getConfiguration(SECTION);
  const language = vscode.window.activeTextEditor?.document.languageId;
  const options = serverOptions(read);
  // Off only for this language: turn this language back on, rather than everything off.
  if (options.enable && language && !enabledFor(options, language)) {
    const disabled = config.get<string[]>("disabledLanguages") ?? [];
    if (disabled.includes(language)) {
      await config.update("disabledLanguages", disabled.filter((id) => id !== language),
        targetOf(config, "disabledLanguages"));
    }
    const legacy = config.get<Record<string, boolean> | null>("languages");
    if (legacy && language in legacy) {
      const languages = { ...legacy };
      delete languages[language];
      await config.update("languages", languages, targetOf(config, "languages"));
    }
    return;
  }
  await config.update("enable", !options.enable, targetOf(config, "enable"));
}

/** Settings under an earlier name or meaning still work; say so once a session, with the current name. */
const warnedLegacy = new Set<string>();
function warnLegacySettings(): void {
  for (const warning of legacyWarnings(read)) {
    if (!warnedLegacy.has(warning)) {
      warnedLegacy.add(warning);
      log.warn(warning);
      void vscode.window.showWarningMessage(`ghostls: ${warning}`);
    }
  }
}

/** Where a setting is set, so that changing it is not silently overruled by a workspace value. */
function targetOf(config: vscode.WorkspaceConfiguration, key: string): vscode.ConfigurationTarget {
  const inspected = config.inspect(key);
  return inspected?.workspaceFolderValue !== undefined ? vscode.ConfigurationTarget.WorkspaceFolder
    : inspected?.workspaceValue !== undefined ? vscode.ConfigurationTarget.Workspace
      : vscode.ConfigurationTarget.Global;
}

// -- status bar -----------------------------------------------------------------------------------

function setStatus(next: ServerStatus): void {
  status = next;
  render();
}

function render(): void {
  const options = serverOptions(read);
  const language = vscode.window.activeTextEditor?.document.languageId;
  status = { ...status, enabled: language ? enabledFor(options, language) : options.enable };
  const item = statusItem(status);
  statusBar.text = item.text;
  statusBar.tooltip = item.tooltip;
  statusBar.backgroundColor = item.error ? new vscode.ThemeColor("statusBarItem.errorBackground") : undefined;
  statusBar.show();
}

// -- explain --------------------------------------------------------------------------------------

async function explainLast(): Promise<void> {
  if (!client?.isRunning()) {
    void vscode.window.showWarningMessage("ghostls: the server is not running.");
    return;
  }
  const answer = await client.sendRequest(EXPLAIN_REQUEST, {});
  const text = explainText(answer);
  log.info(`explain: ${text.summary}\n${text.detail}`);
  void vscode.window.showInformationMessage(text.summary, { modal: true, detail: text.detail });
}
