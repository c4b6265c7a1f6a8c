"""What the completion core remembers about each open document between requests, and the token of a request.

A DocumentSession is one open document: its text, where its last prompt window began (the anchor), the
cross-file context held while typing along a line, the completions shown (typed through or accepted without the
model), the key of its KV cache in the engine, and the token of its newest request. DocumentSessions holds them
all and answers the one question that spans documents: do others wait for the engine? Mutated on one thread (the
server's event loop); the engine's worker only reads a token. No LSP, no model.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ghostls.parsers.document import Document
from ghostls.parsers.repo_context import RepoContext

from .typeahead import ShownCompletion

if TYPE_CHECKING:
    from .completer import CompletionResult

# How long after two documents' requests last overlapped the engine still counts as shared (see contended()).
CONTENTION_HOLD_S = 10.0


class CancelToken:
    """One request's cancellation, and what its generation may ask about the other documents' requests.

    Cancelled from the event loop (a newer request, an edit, the client giving up); read by the decode loop
    between tokens, so a stale generation stops within one token. `reason` says who cancelled it."""

    def __init__(self, sessions: DocumentSessions | None = None, uri: str = "") -> None:
        self._flag = threading.Event()
        self._sessions = sessions  # None: a request with no other documents to yield to
        self.uri = uri
        self.reason = ""

    def cancel(self, reason: str) -> None:
        if not self._flag.is_set():
            self.reason = reason
            self._flag.set()

    def cancelled(self) -> bool:
        return self._flag.is_set()

    def others_waiting(self) -> bool:
        """Whether a live request for another document waits (in debounce or for the engine) now."""
        return self._sessions is not None and self._sessions.others_waiting(self.uri)

    def contended(self) -> bool:
        """Whether other documents want the engine now or did within CONTENTION_HOLD_S."""
        return self._sessions is not None and self._sessions.contended(self.uri)


@dataclass(frozen=True)
class SessionSnapshot:
    """What a request carries from its document's earlier answers; taken on the event loop, read on the worker."""

    cache_key: str  # the engine's KV cache for this document
    anchor: int | None = None  # where the last prompt's prefix began (see parsers.prompt.build_prompt)
    held: tuple[int, RepoContext] | None = None  # (cursor line, cross-file context) of the last answer


@dataclass(eq=False)
class DocumentSession:
    document: Document
    anchor: int | None = None
    held: tuple[int, RepoContext] | None = None
    # The completion last shown, and the one speculated for after its acceptance (0 to 2 of them).
    shown: list[ShownCompletion] = field(default_factory=list)
    token: CancelToken | None = None  # the newest request's, until it ends
    sessions: DocumentSessions | None = field(default=None, repr=False)

    @property
    def uri(self) -> str:
        return self.document.uri

    @property
    def cache_key(self) -> str:
        return self.document.uri

    def snapshot(self) -> SessionSnapshot:
        return SessionSnapshot(self.cache_key, self.anchor, self.held)

    # -- requests ----------------------------------------------------------------------------------------------
    def start_request(self) -> CancelToken:
        """The token of a new request, which cancels the one it replaces."""
        self.cancel_request("superseded by a newer request")
        self.token = CancelToken(self.sessions, self.uri)
        return self.token

    def end_request(self, token: CancelToken) -> None:
        if self.token is token:
            self.token = None

    def cancel_request(self, reason: str) -> None:
        if self.token is not None:
            self.token.cancel(reason)
            self.token = None

    # -- answers -----------------------------------------------------------------------------------------------
    def keep_window(self, result: CompletionResult) -> None:
        """Takes the anchor and held context of a CompletionResult: they describe the KV cache the engine now keeps
        for the document, whether or not the answer itself came too late to show."""
        if result.prefix_start is not None:
            self.anchor = result.prefix_start
        if result.held_context is not None:
            self.held = result.held_context

    def show(self, shown: ShownCompletion) -> None:
        self.shown = [shown]

    def speculated(self, after: ShownCompletion, shown: ShownCompletion) -> None:
        """Adds the completion that follows accepting `shown`, if `shown` is still the one on screen."""
        if self.shown and self.shown[0] is shown:
            self.shown.append(after)

    def remainder(self, text: str, offset: int) -> tuple[str, ShownCompletion] | None:
        """What is left of a shown completion the user is typing through (or accepted), and that completion."""
        for shown in self.shown:
            if (rest := shown.remainder(text, offset)):
                return rest, shown
        return None

    def close(self) -> None:
        """Drops everything at once: the request still running stops, nothing shown or anchored survives."""
        self.cancel_request("document closed")
        self.anchor, self.held, self.shown = None, None, []


class DocumentSessions:
    """The open documents' sessions, by URI, and when their requests last overlapped."""

    def __init__(self) -> None:
        self._open: dict[str, DocumentSession] = {}
        self.contended_at = float("-inf")

    def open(self, document: Document) -> DocumentSession:
        """The session of a newly opened document (a document opened again keeps its session, with the new text)."""
        session = self._open.get(document.uri)
        if session is None:
            session = self._open[document.uri] = DocumentSession(document, sessions=self)
        session.document = document
        return session

    def get(self, uri: str) -> DocumentSession | None:
        return self._open.get(uri)

    def close(self, uri: str) -> DocumentSession | None:
        session = self._open.pop(uri, None)
        if session is not None:
            session.close()
        return session

    def __iter__(self):
        return iter(list(self._open.values()))

    def cancel_all(self, reason: str) -> None:
        for session in self:
            session.cancel_request(reason)

    def others_waiting(self, uri: str) -> bool:
        """Whether a live request for another document waits. Called from the worker thread: reads a copy of the
        sessions (the event loop only ever replaces single entries)."""
        waiting = any(s.uri != uri and (token := s.token) is not None and not token.cancelled()
                      for s in list(self._open.values()))
        if waiting:
            self.contended_at = time.monotonic()
        return waiting

    def contended(self, uri: str) -> bool:
        """Other documents want the engine now or did within CONTENTION_HOLD_S: while they take turns, each keeps
        the small prompt window it got (growing it back costs a long prefill at the worst time)."""
        return self.others_waiting(uri) or time.monotonic() - self.contended_at < CONTENTION_HOLD_S
