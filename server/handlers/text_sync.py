"""didOpen / didChange / didClose: keep every open document's text and tree current.

Runs on the event loop (it mutates state). An invalid change is reported and dropped; the document
keeps its last good text, and the server keeps serving.
"""

from __future__ import annotations

import logging

from lsprotocol import types

from ghostls.parsers.document import Document, PositionError

log = logging.getLogger(__name__)


def register(server) -> None:
    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls, params: types.DidOpenTextDocumentParams) -> None:
        doc = params.text_document
        session = ls.sessions.open(Document(doc.uri, doc.language_id, doc.version, doc.text))
        ls.project.document_opened(session.document.snapshot())

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls, params: types.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        session = ls.sessions.get(uri)
        if session is None:
            ls.warn_once(f"ghostls: change for a document that was never opened: {uri}")
            return
        # A newer version makes any completion still running for this document stale.
        session.cancel_request("the document changed")
        document = session.document
        for change in params.content_changes:
            span = None
            if isinstance(change, types.TextDocumentContentChangePartial):
                span = ((change.range.start.line, change.range.start.character),
                        (change.range.end.line, change.range.end.character))
            try:
                document.apply_change(change.text, span, params.text_document.version, ls.position_encoding)
            except PositionError as exc:
                log.warning("dropped an invalid change to %s (version %s): %s", uri,
                            params.text_document.version, exc)
                ls.warn_once(f"ghostls: ignored an invalid edit ({exc}); re-open the file if ghost text looks wrong")
                return
        last = params.content_changes[-1] if params.content_changes else None
        edit_line = last.range.start.line if isinstance(last, types.TextDocumentContentChangePartial) else None
        # Only records the snapshot (its tree is a cheap copy); the index queries it later on its own thread.
        ls.project.document_changed(document.snapshot(), edit_line)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls, params: types.DidCloseTextDocumentParams) -> None:
        # Its request stops; its anchor, held context and shown completions go with it.
        session = ls.sessions.close(params.text_document.uri)
        ls.project.document_closed(params.text_document.uri)
        if session is not None and (model := ls.models.loaded) is not None:
            # On the engine's own thread, after any generation still running: never wait here.
            ls.engine_worker.submit(model.engine.reset, session.cache_key)
