"""The workspace as completions see it: its roots, what may be read (secrets, ignore files), the symbol index,
the files whose code is most like the cursor's, and the recently edited regions of open documents.

The server calls the `document_*` / `files_changed` methods on its event loop; each only records or queues (never
parses or reads a file there). `context_for` runs on the engine's worker thread. Knows nothing of LSP.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from .document import DocumentSnapshot
from .ignore import IGNORE_FILE, IgnoreRules, uri_to_path
from .index import IndexLimits, IndexWorker, SymbolIndex, document_key
from .languages import rules_for
from .repo_context import (EMPTY, RecentEdit, RepoContext, SimilarCode, build_repo_context, identifier_sets,
                           most_similar)

MAX_RECENT_EDITS = 4
RECENT_EDIT_LINES = (3, 4)  # lines above and below an edit that go into other documents' prompts
# An edit region enters other documents' prompts once its document has been quiet this long. Text that
# changes at every keystroke at the top of a prompt would void the KV cache of every prompt it is in
# (measured: four editors typing at once went from cache hits to a cold prefill per request).
RECENT_EDIT_SETTLE_S = 2.0
# Where similar code is looked for: the other open documents, then files of the same language in the cursor
# file's folder (a test's siblings are tests), at most this many in all and none larger than SIMILAR_MAX_BYTES.
SIMILAR_FILES = 12
SIMILAR_MAX_BYTES = 200_000


class Workspace:
    def __init__(self, roots: Iterable[str] = (), *, secret_patterns: Iterable[str] = (), index: bool = True,
                 limits: IndexLimits = IndexLimits()) -> None:
        self.roots = tuple(os.path.abspath(r) for r in roots)
        self.ignore = IgnoreRules(self.roots, tuple(secret_patterns))
        self.index = SymbolIndex()
        self.worker = IndexWorker(self.index, self.ignore, limits) if index else None
        self._texts: dict[str, str] = {}  # open documents' newest text, by key
        # key -> (line of the last edit, its time.monotonic()), newest last
        self._recent: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._lock = threading.Lock()
        # The candidates of similar code, by key: (what they were read from: an open document's text or a file's
        # mtime, identifier sets per line, lines). Worker thread only; an unchanged document is not read again.
        self._identifiers: dict[str, tuple[object, list[frozenset[str]], list[str]]] = {}
        if self.worker is not None and self.roots:
            self.worker.scan()

    # -- what may be read ----------------------------------------------------------------------------------
    def secret_reason(self, uri: str) -> str | None:
        """Why no completion may run in this document (a secret or .ghostlsignore'd file), or None."""
        path = uri_to_path(uri)
        if path is not None and self.ignore.is_secret(path):
            return f"no completion in {os.path.basename(path)}: it matches a secret or {IGNORE_FILE} pattern"
        return None

    # -- events from the editor (event loop: record and queue only) -----------------------------------------
    def document_opened(self, snapshot: DocumentSnapshot) -> None:
        self._update(snapshot, edit_line=None)

    def document_changed(self, snapshot: DocumentSnapshot, edit_line: int | None) -> None:
        self._update(snapshot, edit_line)

    def document_closed(self, uri: str) -> None:
        key = document_key(uri)
        with self._lock:
            self._texts.pop(key, None)
            self._recent.pop(key, None)
        if self.worker is not None:
            self.worker.closed(uri)

    def files_changed(self, uris: Iterable[str]) -> None:
        """Files created, changed or deleted on disk (didSave, didChangeWatchedFiles)."""
        reload = False
        for uri in uris:
            path = uri_to_path(uri)
            if path is None:
                continue
            if os.path.basename(path) in (".gitignore", IGNORE_FILE):
                reload = True
            elif self.worker is not None:
                self.worker.file_changed(path)
        if reload:
            self.ignore.reload()
            if self.worker is not None:
                self.worker.scan()  # files may have come in or out of the index

    def _update(self, snapshot: DocumentSnapshot, edit_line: int | None) -> None:
        if self.secret_reason(snapshot.uri):
            return  # never kept, never indexed
        key = document_key(snapshot.uri)
        with self._lock:
            self._texts[key] = snapshot.text
            if edit_line is not None:
                self._recent.pop(key, None)
                self._recent[key] = (edit_line, time.monotonic())
                while len(self._recent) > MAX_RECENT_EDITS:
                    self._recent.popitem(last=False)
        if self.worker is not None:
            self.worker.document(snapshot)

    # -- per request (worker thread) ------------------------------------------------------------------------
    def recent_edits(self, exclude_key: str, now: float | None = None) -> list[RecentEdit]:
        """Lines around the last edit of each other open document quiet for RECENT_EDIT_SETTLE_S, oldest first."""
        settled = (time.monotonic() if now is None else now) - RECENT_EDIT_SETTLE_S
        with self._lock:
            recent = [(key, line, self._texts.get(key)) for key, (line, at) in self._recent.items()
                      if key != exclude_key and at <= settled]
        out = []
        above, below = RECENT_EDIT_LINES
        for key, line, text in recent:
            if text is None:
                continue
            lines = text.splitlines()
            window = "\n".join(lines[max(0, line - above) : line + below]).strip("\n")
            if window.strip():
                out.append(RecentEdit(key, self._display(key), line, window))
        return out

    def similar_code(self, snapshot: DocumentSnapshot, offset: int) -> SimilarCode | None:
        """The code in other open documents or sibling files most like the lines before the cursor (or None)."""
        key = document_key(snapshot.uri)
        with self._lock:
            texts = [(k, text) for k, text in self._texts.items() if k != key]
        candidates = [(k, self._display(k), *self._identifier_sets(k, text, lambda text=text: text))
                      for k, text in texts[-SIMILAR_FILES:]]
        path = uri_to_path(snapshot.uri)
        if path is not None and len(candidates) < SIMILAR_FILES:
            open_keys = {k for k, _text in texts} | {key}
            for sibling in self._siblings_of(path, snapshot.language.name):
                if len(candidates) >= SIMILAR_FILES:
                    break
                sibling_key = document_key(sibling)
                if sibling_key not in open_keys and (read := self._read_sibling(sibling)) is not None:
                    candidates.append((sibling_key, self._display(sibling_key), *read))
        return most_similar(snapshot, offset, candidates)

    def _siblings_of(self, path: str, language: str) -> list[str]:
        """Files of the same language in the folder of `path`, nearest in name first, never ignored or secret."""
        folder, name = os.path.split(path)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return []
        stem = name.split(".", 1)[0]
        found = [e.path for e in entries if e.is_file() and e.path != path and rules_for(None, e.path).name == language
                 and not self.ignore.is_ignored(e.path) and not self.ignore.is_secret(e.path)]
        # Names ending like this one first: a _test.go file's nearest kin are the other _test.go files.
        found.sort(key=lambda p: -len(os.path.commonprefix([stem[::-1], os.path.basename(p).split(".", 1)[0][::-1]])))
        return found

    def _read_sibling(self, path: str) -> tuple[list[frozenset[str]], list[str]] | None:
        def read() -> str:
            with open(path, encoding="utf-8") as f:
                return f.read()

        try:
            stat = os.stat(path)
            if stat.st_size > SIMILAR_MAX_BYTES:
                return None
            return self._identifier_sets(document_key(path), stat.st_mtime_ns, read)
        except (OSError, UnicodeDecodeError):
            return None

    def _identifier_sets(self, key: str, stamp: object, text: Callable[[], str]) -> tuple[list[frozenset[str]],
                                                                                          list[str]]:
        """`identifier_sets` of a candidate, computed again only when its stamp (a text, an mtime) changed."""
        cached = self._identifiers.get(key)
        if cached is not None and (cached[0] is stamp or cached[0] == stamp):
            return cached[1], cached[2]
        sets, lines = identifier_sets(text())
        if len(self._identifiers) >= 4 * SIMILAR_FILES:
            self._identifiers.clear()  # a handful of documents and folders at most; read again as the user moves on
        self._identifiers[key] = (stamp, sets, lines)
        return sets, lines

    def context_for(self, snapshot: DocumentSnapshot, offset: int, family: str, count_tokens: Callable[[str], int],
                    budget: int) -> RepoContext:
        if budget <= 0:
            return EMPTY
        key = document_key(snapshot.uri)
        return build_repo_context(snapshot, offset, self.index.lookup, self.recent_edits(key), family,
                                  count_tokens, budget, root=self._root_of(key),
                                  similar=self.similar_code(snapshot, offset))

    def status(self) -> dict:
        if self.worker is None:
            return {"state": "off"}
        s = self.worker.status()
        return {"state": s.state, "files": s.files, "symbols": s.symbols, "bytes": s.bytes,
                "skippedLarge": s.skipped_large, "capped": s.capped, "roots": len(self.roots)}

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    def _root_of(self, key: str) -> str | None:
        for root in self.roots:
            if os.path.isabs(key) and not os.path.relpath(key, root).startswith(".."):
                return root
        return self.roots[0] if self.roots else None

    def _display(self, key: str) -> str:
        root = self._root_of(key)
        if root and os.path.isabs(key) and not os.path.relpath(key, root).startswith(".."):
            return os.path.relpath(key, root).replace(os.sep, "/")
        return key.rsplit("/", 1)[-1]
