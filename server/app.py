"""The GhostServer: the open documents' sessions, settings, the model host and the workspace, in one place.

Holds state that handlers share; handlers live in `handlers/`, one module per LSP method group. What each document
keeps between completions (and its request's cancel token) is the completion core's DocumentSession.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from lsprotocol import types
from pygls.exceptions import JsonRpcContentModified, JsonRpcRequestCancelled
from pygls.lsp.server import LanguageServer

from ghostls import __version__
from ghostls.completion.session import CancelToken, DocumentSessions
from ghostls.completion.settings import Settings
from ghostls.parsers.document import PositionEncoding
from ghostls.parsers.ignore import uri_to_path
from ghostls.parsers.workspace import Workspace

from .model_host import ModelHost, ModelState, ModelStatus
from .remotes import RemoteBackends, plaintext_warning, redact_logs

log = logging.getLogger(__name__)

PROGRESS_TOKEN = "ghostls/model"
STATUS_NOTIFICATION = "ghostls/status"


class GhostServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("ghostls", __version__, text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        # One per open document: its text, prompt anchor, held context, shown completions and live request.
        self.sessions = DocumentSessions()
        self.settings = Settings()
        # One worker: the KV cache is one buffer, and on a CPU two generations would only share cores.
        self.engine_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ghostls-engine")
        self.models = ModelHost(on_status=self._status_from_thread, on_progress=self._progress_from_thread)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._progress_open = False
        self._warned: set[str] = set()
        # Option warnings found in `initialize`, shown once the client is `initialized`.
        self.pending_warnings: list[str] = []
        # The last completion's explanation, for `ghostls/explain`.
        self.last_result = None
        # The token of the speculative generation running, if any: every real request cancels it.
        self.speculation: CancelToken | None = None
        self.last_speculation: dict | None = None  # for `ghostls/explain`
        # Remote engines named in settings, each with its connection pool.
        self.remotes = RemoteBackends()
        # Workspace roots, secrets and the symbol index; replaced in `initialize` once the roots are known.
        self.project = Workspace(index=False)

    # -- positions -------------------------------------------------------------------------
    @property
    def position_encoding(self) -> PositionEncoding:
        encoding = self.workspace.position_encoding or "utf-16"
        return PositionEncoding(getattr(encoding, "value", encoding))

    # -- workspace -------------------------------------------------------------------------
    def open_workspace(self, params: types.InitializeParams) -> None:
        """Roots from `initialize` (folders, else rootUri/rootPath); the index starts building in the background."""
        uris = [f.uri for f in params.workspace_folders or ()] or ([params.root_uri] if params.root_uri else [])
        roots = [p for p in (uri_to_path(u) for u in uris) if p] or ([params.root_path] if params.root_path else [])
        self.project.close()
        self.project = Workspace(roots, secret_patterns=self.settings.secret_patterns,
                                   index=self.settings.workspace_context)

    # -- telling the user ------------------------------------------------------------------
    def warn_once(self, message: str) -> None:
        if message in self._warned:
            return
        self._warned.add(message)
        log.warning("%s", message)
        self.window_show_message(types.ShowMessageParams(types.MessageType.Warning, message))

    def start_model(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._supports_progress():
            self._progress_open = True
            self.work_done_progress.create(PROGRESS_TOKEN)
            self.work_done_progress.begin(PROGRESS_TOKEN, types.WorkDoneProgressBegin(
                title="ghostls", message="preparing the model", percentage=0, cancellable=False))
        self.models.start(self.settings)

    def _supports_progress(self) -> bool:
        window = self.client_capabilities.window
        return bool(window and window.work_done_progress)

    def _status_from_thread(self, status: ModelStatus) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._report_status, status)

    def _progress_from_thread(self, stage: str, fraction: float) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._report_progress, stage, fraction)

    def _report_progress(self, stage: str, fraction: float) -> None:
        if self._progress_open:
            percentage = max(0, min(100, int(fraction * 100)))
            self.work_done_progress.report(PROGRESS_TOKEN, types.WorkDoneProgressReport(
                message=stage, percentage=percentage))

    def _report_status(self, status: ModelStatus) -> None:
        self.protocol.notify(STATUS_NOTIFICATION, {
            "state": status.state.value, "detail": status.detail, "model": status.model,
            "provider": status.provider, "template": status.template})
        level = types.MessageType.Error if status.state is ModelState.ERROR else types.MessageType.Info
        self.window_log_message(types.LogMessageParams(level, f"ghostls: {status.state.value}: {status.detail}"))
        if status.state is ModelState.ERROR:
            self.window_show_message(types.ShowMessageParams(types.MessageType.Error,
                                                             f"ghostls: {status.detail}"))
        if status.state in (ModelState.READY, ModelState.ERROR) and self._progress_open:
            self._progress_open = False
            self.work_done_progress.end(PROGRESS_TOKEN, types.WorkDoneProgressEnd(message=status.state.value))

    # -- remote engines --------------------------------------------------------------------
    def remote_backend(self, config):
        """The backend for a configured remote engine, or None (reported once) when it cannot be set up."""
        self.remotes.retire_unused(self.settings)
        if (warning := plaintext_warning(config)) is not None:
            self.warn_once(warning)
        try:
            return self.remotes.get(config)
        except Exception as exc:  # noqa: BLE001 - a bad tokenizer or CA path must not fail the request
            log.exception("remote engine setup failed")
            self.warn_once(f"ghostls: cannot set up the remote engine {config.describe()}: {exc}")
            return None

    def report_remote(self, config, result) -> None:
        """Tells the client when a remote engine starts failing (and how) or answers again."""
        if result.reason == "cancelled" and not result.error:
            return
        previous = self.remotes.failures.get(config, "")
        self.remotes.failures[config] = result.error
        if result.error:
            log.warning("remote engine %s: %s", result.error, result.reason)
        if result.error == previous:
            return
        template = config.template().family
        if result.error:
            state, detail = ModelState.ERROR.value, f"remote engine {result.error}: {result.reason}"
        else:
            state, detail = ModelState.READY.value, f"remote engine {config.describe()} answering again"
        self.protocol.notify(STATUS_NOTIFICATION, {
            "state": state, "detail": detail, "model": config.model, "provider": "remote", "template": template,
            "error": result.error})
        if result.error:
            self.warn_once(f"ghostls: {detail}")
        else:
            self.window_log_message(types.LogMessageParams(types.MessageType.Info, f"ghostls: {detail}"))

    # -- the editor going away -------------------------------------------------------------
    def watch_parent(self, pid: int | None) -> None:
        """Exits when the editor process that started us is gone (it may die without `exit`)."""
        if not pid or pid == os.getpid():
            return

        def watch() -> None:
            while True:
                time.sleep(2)
                try:
                    os.kill(pid, 0)
                    gone = _is_zombie(pid)  # dead, but not yet reaped by its own parent
                except ProcessLookupError:
                    gone = True
                except PermissionError:
                    gone = False  # alive, owned by someone else
                if gone:
                    log.warning("editor process %s is gone; exiting", pid)
                    os._exit(0)

        threading.Thread(target=watch, name="ghostls-parent-watch", daemon=True).start()


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False  # no /proc (macOS): os.kill alone decides


class ExpectedAnswers(logging.Filter):
    """ContentModified and RequestCancelled are answers a typing user causes all the time, not failures:
    pygls would log each with a traceback at error level."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, (JsonRpcContentModified, JsonRpcRequestCancelled))


def create_server() -> GhostServer:
    from .handlers import register_all

    redact_logs()
    logging.getLogger("pygls.protocol.json_rpc").addFilter(ExpectedAnswers())
    server = GhostServer()
    register_all(server)
    return server
