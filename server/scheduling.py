"""Runs one completion request for a handler: snapshot, debounce, supersede, model wait, worker thread.

The snapshot and settings are taken on the event loop; the engine runs on the server's one worker
thread; cancellation (client `$/cancelRequest`, a newer request, a didChange) sets a flag that the
decode loop checks between tokens, so a stale generation stops within one token.
"""

from __future__ import annotations

import asyncio
import logging

from pygls.exceptions import JsonRpcContentModified, JsonRpcInvalidParams

from ghostls.parsers.document import PositionError

from .completer import CompletionResult, complete

log = logging.getLogger(__name__)


async def run_completion(ls, uri: str, line: int, character: int, invoked: bool) -> CompletionResult | None:
    """The completion at a position, or None when there is nothing to say (disabled, superseded...)."""
    document = ls.documents.get(uri)
    if document is None:
        raise JsonRpcInvalidParams(f"document {uri} is not open: send textDocument/didOpen first")
    settings = ls.settings
    snapshot = document.snapshot()
    language = snapshot.language
    if not settings.enable or {language.name, *language.language_ids} & set(settings.disabled_languages):
        return _explained(ls, CompletionResult("", "disabled in settings", False))
    if (secret := ls.project.secret_reason(uri)) is not None:
        return _explained(ls, CompletionResult("", secret, False))
    try:
        offset = snapshot.offset_at(line, character, ls.position_encoding)
    except PositionError as exc:
        raise JsonRpcInvalidParams(f"position {line}:{character} is outside {uri}: {exc}") from exc

    cancelled = ls.supersede(uri)
    try:
        if not invoked and settings.debounce_ms:
            await asyncio.sleep(settings.debounce_ms / 1000)
        if cancelled.is_set():
            return None
        model = await ls.models.wait(settings.load_wait_ms / 1000)
        if model is None:
            status = ls.models.status
            return _explained(ls, CompletionResult("", f"model not ready ({status.state.value}: {status.detail})",
                                                   False))
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(ls.engine_worker, complete, model, snapshot, offset, settings,
                                            cancelled.is_set, ls.project, invoked)
    except asyncio.CancelledError:
        cancelled.set()  # the client gave up: stop the decode loop within one token
        raise
    finally:
        ls.release(uri, cancelled)

    current = ls.documents.get(uri)
    if current is None or current.version != snapshot.version:
        # Never place text computed for an old version at positions of a new one.
        raise JsonRpcContentModified(f"{uri} changed while the completion was computed")
    if result.reason == "cancelled":
        return None
    log.info("completion %s v%s: %d chars, %s, prompt %d tokens (%d reused), context %d snippets (%d tokens), %s",
             uri.rsplit("/", 1)[-1], snapshot.version, len(result.text), result.reason, result.prompt_tokens,
             result.reused_tokens, len(result.context.get("items", ())), result.context.get("tokens", 0),
             result.timings_ms)
    return _explained(ls, result)


def _explained(ls, result: CompletionResult) -> CompletionResult:
    ls.last_result = result
    return result
