"""Runs one completion request for a handler: snapshot, debounce, supersede, model wait, worker thread.

The document's snapshot, its session's snapshot and the settings are taken on the event loop; the completion core
runs on the server's one worker thread; cancellation (client `$/cancelRequest`, a newer request, a didChange)
cancels the request's token, which the decode loop checks between tokens, so a stale generation stops within one
token. What the answer carries back (anchor, held context, shown completion) goes into the session here.
"""

from __future__ import annotations

import asyncio
import logging
import time

from lsprotocol import types
from pygls.exceptions import JsonRpcContentModified, JsonRpcException, JsonRpcInternalError, JsonRpcInvalidParams

from ghostls.completion.completer import CompletionResult, complete
from ghostls.completion.session import CancelToken, DocumentSession, SessionSnapshot
from ghostls.completion.typeahead import ShownCompletion, accepted
from ghostls.parsers.document import Document, PositionError

log = logging.getLogger(__name__)


async def run_completion(ls, uri: str, line: int, character: int, invoked: bool,
                         method: str = "textDocument/inlineCompletion") -> CompletionResult | None:
    """The completion at a position, or None when there is nothing to say (disabled, superseded...).

    An engine failure becomes an InternalError naming `method` and the document version, in the log and in
    the answer; the worker and the model stay usable for the next request.
    """
    session = ls.sessions.get(uri)
    if session is None:
        raise JsonRpcInvalidParams(f"document {uri} is not open: send textDocument/didOpen first")
    settings = ls.settings
    snapshot = session.document.snapshot()
    language = snapshot.language
    if not settings.enable or {language.name, *language.language_ids} & set(settings.disabled_languages):
        return _explained(ls, CompletionResult("", "disabled in settings", False))
    if (secret := ls.project.secret_reason(uri)) is not None:
        return _explained(ls, CompletionResult("", secret, False))
    try:
        offset = snapshot.offset_at(line, character, ls.position_encoding)
    except PositionError as exc:
        raise JsonRpcInvalidParams(f"position {line}:{character} is outside {uri}: {exc}") from exc

    # Typing through a completion already computed (or accepting it): the rest is the answer, at once.
    if (typed := session.remainder(snapshot.text, offset)) is not None:
        rest, shown = typed
        session.cancel_request("typed through a shown completion")  # anything still generating here is stale now
        return _explained(ls, CompletionResult(rest, "typed through a completion already computed", shown.multiline))
    if ls.speculation is not None:
        # A request for the model comes first: the speculation stops within a token.
        ls.speculation.cancel("a request for the model")

    token = session.start_request()
    work = None
    try:
        if not invoked and settings.debounce_ms:
            await asyncio.sleep(settings.debounce_ms / 1000)
        if token.cancelled():
            return None
        remote = settings.backend_for((language.name, *language.language_ids))
        if remote is not None:
            backend = ls.remote_backend(remote)
            if backend is None:
                return _explained(ls, CompletionResult("", "remote backend could not be set up (see the log)",
                                                       False, error="config"))
        else:
            model = await ls.models.wait(settings.load_wait_ms / 1000)
            if model is None:
                status = ls.models.status
                return _explained(ls, CompletionResult(
                    "", f"model not ready ({status.state.value}: {status.detail})", False))
            backend = model.backend
        # The thread's own future (not an asyncio one) tells when the worker really lets go after a cancel.
        work = ls.engine_worker.submit(_generate, backend, snapshot, offset, settings, session.snapshot(), token,
                                       ls.project, invoked)
        result = await asyncio.wrap_future(work)
    except asyncio.CancelledError:
        token.cancel("cancelled by the client")  # stop the decode loop within one token
        _log_when_stopped(work, uri, snapshot.version)
        raise
    except JsonRpcException:
        raise
    except Exception as exc:  # noqa: BLE001 - one failed request must not take the server down
        message = f"{method} failed on {uri} version {snapshot.version}: {type(exc).__name__}: {exc}"
        log.exception("%s", message)
        ls.window_log_message(types.LogMessageParams(types.MessageType.Error, f"ghostls: {message}"))
        raise JsonRpcInternalError(message) from exc
    finally:
        session.end_request(token)

    if remote is not None:
        ls.report_remote(remote, result)
    # Where this prompt's window began and which context it held describe the KV cache the engine now keeps for
    # the document, stale answer or not: the next request builds on them (dropping them would make the next
    # keystroke of a burst start a new window, a long prefill, whenever the answer before it came too late).
    session.keep_window(result)
    if ls.sessions.get(uri) is not session or session.document.version != snapshot.version:
        # Never place text computed for an old version at positions of a new one.
        raise JsonRpcContentModified(f"{uri} changed while the completion was computed")
    if result.reason == "cancelled":
        return None
    log.info("completion %s v%s: %d chars, %s, prompt %d tokens (%d reused), context %d snippets (%d tokens), %s",
             uri.rsplit("/", 1)[-1], snapshot.version, len(result.text), result.reason, result.prompt_tokens,
             result.reused_tokens, len(result.context.get("items", ())), result.context.get("tokens", 0),
             result.timings_ms)
    if result.shown is not None:
        session.show(result.shown)
        # Local only: a speculative request to a shared remote engine would load it for every editor.
        if settings.speculate and remote is None:
            asyncio.ensure_future(_speculate(ls, session, snapshot, result.shown, backend, settings))
    return _explained(ls, result)


async def _speculate(ls, session: DocumentSession, snapshot, shown: ShownCompletion, backend, settings) -> None:
    """Computes the completion that follows accepting `shown`, if the engine has nothing else to do."""
    if ls.speculation is not None:
        ls.speculation.cancel("a newer speculation")
    # No other document to yield to: every real request cancels a speculation outright.
    token = ls.speculation = CancelToken()
    uri = session.uri
    text, offset = accepted(shown)
    language_id = snapshot.language.language_ids[0] if snapshot.language.language_ids else None

    def job() -> CompletionResult | None:
        if token.cancelled():
            return None  # a real request arrived while this one waited for the engine
        after = Document(uri, language_id, snapshot.version, text).snapshot()
        # The anchor as it is when the engine gets to this (the answer before may have moved it); no held context.
        carried = SessionSnapshot(session.cache_key, session.anchor)
        return complete(backend, after, offset, settings, carried, token, ls.project)

    try:
        result = await asyncio.get_running_loop().run_in_executor(ls.engine_worker, job)
    except Exception:  # a speculation is only ever a bonus; a failure here must cost nothing
        log.debug("speculative completion for %s failed", uri, exc_info=True)
        return
    finally:
        if ls.speculation is token:
            ls.speculation = None
    log.debug("speculative completion for %s: %s", uri.rsplit("/", 1)[-1],
              "not run" if result is None else f"{len(result.text)} chars, {result.reason}")
    ls.last_speculation = {"uri": uri, "chars": len(result.text) if result else 0,
                           "reason": result.reason if result else "not run: the engine had a request to serve"}
    if result is not None and result.shown is not None and result.reason != "cancelled":
        session.speculated(result.shown, shown)


def _generate(backend, snapshot, offset, settings, session: SessionSnapshot, token: CancelToken, workspace,
              invoked) -> CompletionResult:
    """On the worker: a request superseded while it waited in the queue never starts (a typing burst
    queues many; only the newest should reach the model)."""
    if token.cancelled():
        return CompletionResult("", "cancelled", False)
    name = snapshot.uri.rsplit("/", 1)[-1]
    log.debug("generating for %s v%s", name, snapshot.version)
    result = complete(backend, snapshot, offset, settings, session, token, workspace, invoked)
    log.debug("generated for %s v%s: %s", name, snapshot.version, result.reason)
    return result


def _log_when_stopped(work, uri: str, version: int) -> None:
    """Logs when a cancelled generation actually let go of the worker (it checks its flag between tokens)."""
    if work is None:
        return
    cancelled_at = time.perf_counter()

    def done(future) -> None:
        reason = "never started" if future.cancelled() else "failed" if future.exception() else future.result().reason
        log.info("cancelled completion %s v%s: generation stopped (%s) %.0f ms after the cancel",
                 uri.rsplit("/", 1)[-1], version, reason, (time.perf_counter() - cancelled_at) * 1000)

    work.add_done_callback(done)


def _explained(ls, result: CompletionResult) -> CompletionResult:
    ls.last_result = result
    return result
