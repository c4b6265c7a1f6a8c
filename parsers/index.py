"""The workspace symbol index: definitions (functions, classes, methods, types, constants) found by tree-sitter tag
queries (parsers/tags/<language>.scm) in open documents and workspace files, kept current by a background thread.

Owns which files are read (never a secret or ignored file, never past the size caps) and what a definition's
snippet is (signature, docstring, the body when small). Must never block its caller: every update is queued, and
lookups read a dict swapped under a lock. Knows nothing of LSP.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import tree_sitter

from .document import DocumentSnapshot
from .ignore import IgnoreRules, uri_to_path
from .languages import PLAINTEXT, LanguageRules, parser_for, rules_for, tree_sitter_language

log = logging.getLogger(__name__)

# A definition this short goes in whole; a longer one as its signature, docstring and member signatures.
SMALL_BODY_LINES = 12
MAX_SNIPPET_LINES = 24
MAX_DOC_LINES = 6
# An open document is re-indexed this long after its last change (a typing burst costs one query).
DOCUMENT_QUIET_S = 0.3


@dataclass(frozen=True)
class IndexLimits:
    max_file_bytes: int = 512_000
    max_files: int = 5_000
    max_total_bytes: int = 64_000_000


@dataclass(frozen=True)
class Definition:
    name: str
    kind: str  # function | class | method | type | constant
    key: str  # the file: its path for file: uris and workspace files, else the uri
    line: int  # 0-based line of the definition's first line
    snippet: str  # the text that goes into a prompt


@dataclass(frozen=True)
class IndexStatus:
    state: str  # idle | building | ready
    files: int
    symbols: int
    bytes: int
    skipped_large: int
    capped: bool  # a file-count or total-size cap stopped the scan


def document_key(uri: str) -> str:
    """The index key of a document: its file system path when it has one (so a workspace file and the same file
    opened in the editor are one entry), else the uri."""
    return uri_to_path(uri) or uri


@functools.cache
def _tag_query(language_name: str, grammar: str) -> tree_sitter.Query | None:
    try:
        source = resources.files(__package__).joinpath("tags", f"{language_name}.scm").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return None
    language = tree_sitter_language(grammar)
    if language is None:
        return None
    try:
        return tree_sitter.Query(language, source)
    except Exception as exc:  # a query that does not fit the installed grammar: no index for it, once
        log.warning("tag query for %s does not compile: %s", language_name, exc)
        return None


def definitions_in(key: str, source: bytes, tree: tree_sitter.Tree, rules: LanguageRules) -> list[Definition]:
    """Every definition the language's tag query finds in one parsed file."""
    if rules.grammar is None:
        return []
    query = _tag_query(rules.name, rules.grammar)
    if query is None:
        return []
    found: list[tuple[tree_sitter.Node, str, str]] = []
    for _, captures in tree_sitter.QueryCursor(query).matches(tree.root_node):
        names = captures.get("name")
        if not names:
            continue
        for capture, nodes in captures.items():
            if capture.startswith("definition."):
                name = source[names[0].start_byte : names[0].end_byte].decode("utf-8", "replace")
                found.append((nodes[0], capture.split(".", 1)[1], name))
    found.sort(key=lambda item: item[0].start_byte)
    out = []
    for node, kind, name in found:
        members = [n for n, _, _ in found if n.start_byte > node.start_byte and n.end_byte <= node.end_byte]
        out.append(Definition(name, kind, key, node.start_point[0], _snippet(source, node, members, rules)))
    return out


def _snippet(source: bytes, node: tree_sitter.Node, members: list[tree_sitter.Node], rules: LanguageRules) -> str:
    start = source.rfind(b"\n", 0, node.start_byte) + 1  # from the line start, so indentation is kept
    doc = _leading_comment(source, node, rules)
    text = source[start : node.end_byte].decode("utf-8", "replace")
    lines = text.splitlines()
    if len(lines) <= SMALL_BODY_LINES:
        return doc + text
    body = node.child_by_field_name("body")
    head_end = body.start_byte if body is not None else source.find(b"\n", node.start_byte)
    head = source[start : max(head_end, node.start_byte)].decode("utf-8", "replace").rstrip()
    if body is not None and body.start_point[0] == node.start_point[0]:
        # The body opens on the signature line ("{"): keep that line whole.
        head = lines[0]
    kept = head.splitlines()[:MAX_DOC_LINES]
    kept += _docstring(source, body, rules)
    # Members, by their signature lines only: enough to call them correctly.
    for member in members:
        if member.parent is not None and len(kept) < MAX_SNIPPET_LINES:
            line_start = source.rfind(b"\n", 0, member.start_byte) + 1
            line_end = source.find(b"\n", member.start_byte)
            kept.append(source[line_start : line_end if line_end != -1 else None].decode("utf-8", "replace"))
    return doc + "\n".join(kept[:MAX_SNIPPET_LINES])


def _leading_comment(source: bytes, node: tree_sitter.Node, rules: LanguageRules) -> str:
    # Doc comments sit right above the definition (JSDoc, ///, #, --).
    lines: list[str] = []
    sibling = node.prev_named_sibling
    row = node.start_point[0]
    while sibling is not None and sibling.type in rules.comment_nodes and sibling.end_point[0] >= row - 1:
        lines[:0] = source[sibling.start_byte : sibling.end_byte].decode("utf-8", "replace").splitlines()
        row = sibling.start_point[0]
        sibling = sibling.prev_named_sibling
    if not lines:
        return ""
    indent = source[source.rfind(b"\n", 0, node.start_byte) + 1 : node.start_byte].decode("utf-8", "replace")
    lines = lines[-MAX_DOC_LINES:]
    return "".join(indent + line.strip() + "\n" for line in lines)


def _docstring(source: bytes, body: tree_sitter.Node | None, rules: LanguageRules) -> list[str]:
    # A string as the first statement of the body (Python's docstring).
    if body is None or not body.named_children:
        return []
    first = body.named_children[0]
    if first.type == "expression_statement" and first.named_children and first.named_children[0].type in rules.string_nodes:
        line_start = source.rfind(b"\n", 0, first.start_byte) + 1
        return source[line_start : first.end_byte].decode("utf-8", "replace").splitlines()[:MAX_DOC_LINES]
    return []


class SymbolIndex:
    """Definitions by name and by file. Writes come from the index thread; reads from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_file: dict[str, tuple[Definition, ...]] = {}
        self._sizes: dict[str, int] = {}
        self._by_name: dict[str, tuple[Definition, ...]] = {}

    def put(self, key: str, definitions: list[Definition], size: int) -> None:
        with self._lock:
            self._drop(key)
            self._by_file[key] = tuple(definitions)
            self._sizes[key] = size
            for definition in definitions:
                self._by_name[definition.name] = self._by_name.get(definition.name, ()) + (definition,)

    def remove(self, key: str) -> None:
        with self._lock:
            self._drop(key)

    def _drop(self, key: str) -> None:
        for definition in self._by_file.pop(key, ()):
            left = tuple(d for d in self._by_name.get(definition.name, ()) if d.key != key)
            if left:
                self._by_name[definition.name] = left
            else:
                self._by_name.pop(definition.name, None)
        self._sizes.pop(key, None)

    def lookup(self, name: str) -> tuple[Definition, ...]:
        with self._lock:
            return self._by_name.get(name, ())

    def in_file(self, key: str) -> tuple[Definition, ...]:
        with self._lock:
            return self._by_file.get(key, ())

    def counts(self) -> tuple[int, int, int]:
        with self._lock:
            return len(self._by_file), sum(len(d) for d in self._by_file.values()), sum(self._sizes.values())


class IndexWorker:
    """One daemon thread that scans workspace folders and re-indexes changed files and documents.

    Updates for the same file coalesce: only the newest text of a document is parsed. Open documents win over
    their file on disk (their text is what the user sees).
    """

    def __init__(self, index: SymbolIndex, ignore: IgnoreRules, limits: IndexLimits = IndexLimits()) -> None:
        self.index, self.ignore, self.limits = index, ignore, limits
        self._jobs: queue.Queue = queue.Queue()
        self._pending: dict[str, tuple[DocumentSnapshot, float]] = {}
        self._open: set[str] = set()
        self._lock = threading.Lock()
        self._state = "idle"
        self._skipped_large = 0
        self._capped = False
        self._thread = threading.Thread(target=self._run, name="ghostls-index", daemon=True)
        self._thread.start()

    # -- requests (any thread; never blocks) ---------------------------------------------------------------
    def scan(self) -> None:
        self._state = "building"
        self._jobs.put(("scan", None))

    def document(self, snapshot: DocumentSnapshot) -> None:
        """An open document's newest version; its tree (already parsed by the document) is queried later, on the
        index thread, after a short quiet spell so a typing burst costs one query."""
        key = document_key(snapshot.uri)
        if self._is_secret(key):
            return
        with self._lock:
            self._open.add(key)
            fresh = key not in self._pending
            self._pending[key] = (snapshot, time.monotonic())
        if fresh:
            self._jobs.put(("text", key))

    def closed(self, uri: str) -> None:
        key = document_key(uri)
        with self._lock:
            self._open.discard(key)
        # The file on disk is what the index should hold now (or nothing, for an unsaved buffer).
        self._jobs.put(("file", key))

    def file_changed(self, path: str) -> None:
        self._jobs.put(("file", path))

    def stop(self) -> None:
        self._jobs.put(("stop", None))

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """For tests and the CLI: True once every queued job is done."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._jobs.unfinished_tasks == 0:
                return True
            time.sleep(0.02)
        return False

    def status(self) -> IndexStatus:
        files, symbols, size = self.index.counts()
        return IndexStatus(self._state, files, symbols, size, self._skipped_large, self._capped)

    # -- the thread ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            kind, key = self._jobs.get()
            try:
                if kind == "stop":
                    return
                if kind == "scan":
                    self._scan()
                elif kind == "text":
                    self._index_snapshot(key)
                elif kind == "file":
                    self._index_file(key)
            except Exception:  # one bad file must not stop the index
                log.exception("indexing failed (%s)", kind)
            finally:
                self._jobs.task_done()

    def _is_secret(self, key: str) -> bool:
        return os.path.isabs(key) and self.ignore.is_secret(key)

    def _index_snapshot(self, key: str) -> None:
        while True:
            with self._lock:
                _, since = self._pending[key]
            quiet = since + DOCUMENT_QUIET_S - time.monotonic()
            if quiet <= 0:
                break
            time.sleep(quiet)
        with self._lock:
            snapshot, _ = self._pending.pop(key)
        if len(snapshot.text) > self.limits.max_file_bytes:
            self.index.remove(key)  # chars <= bytes: over the cap without encoding it
            return
        if snapshot.tree is None:
            self._index_text(key, snapshot.text, snapshot.language)
            return
        source = snapshot.source
        if len(source) > self.limits.max_file_bytes:
            self.index.remove(key)
            return
        self.index.put(key, definitions_in(key, source, snapshot.tree, snapshot.language), len(source))

    def _index_text(self, key: str, text: str, rules: LanguageRules) -> None:
        if len(text) > self.limits.max_file_bytes:
            self.index.remove(key)
            return
        data = text.encode("utf-8", "surrogatepass")
        if len(data) > self.limits.max_file_bytes or b"\x00" in data:
            self.index.remove(key)
            return
        parser = parser_for(rules)
        if parser is None:
            return
        tree = parser.parse(data)
        self.index.put(key, definitions_in(key, data, tree, rules), len(data))

    def _index_file(self, path: str) -> None:
        with self._lock:
            if path in self._open:
                return  # the editor's text wins over the disk
        if not os.path.isabs(path) or self.ignore.is_ignored(path) or not self._inside_roots(path):
            self.index.remove(path)
            return
        rules = rules_for(None, path)
        if rules is PLAINTEXT:
            return
        try:
            if os.path.getsize(path) > self.limits.max_file_bytes:
                self.index.remove(path)
                return
            data = Path(path).read_bytes()
        except OSError:
            self.index.remove(path)  # deleted
            return
        self._index_text(path, data.decode("utf-8", "replace"), rules)

    def _inside_roots(self, path: str) -> bool:
        return any(not os.path.relpath(path, root).startswith("..") for root in self.ignore.roots)

    def _scan(self) -> None:
        started = time.perf_counter()
        files = total = 0
        self._capped = False
        for root in self.ignore.roots:
            for directory, dirnames, filenames in os.walk(root):
                # Prune ignored folders before descending (node_modules, .git, what .gitignore lists).
                dirnames[:] = sorted(d for d in dirnames if not self.ignore.is_ignored(os.path.join(directory, d) + os.sep)
                                     and not os.path.islink(os.path.join(directory, d)))
                for name in sorted(filenames):
                    path = os.path.join(directory, name)
                    if rules_for(None, path) is PLAINTEXT or self.ignore.is_ignored(path):
                        continue
                    with self._lock:
                        if path in self._open:
                            continue
                    try:
                        size = os.path.getsize(path)
                    except OSError:
                        continue
                    if size > self.limits.max_file_bytes:
                        self._skipped_large += 1
                        continue
                    if files >= self.limits.max_files or total + size > self.limits.max_total_bytes:
                        self._capped = True
                        break
                    self._index_file(path)
                    files, total = files + 1, total + size
                    time.sleep(0)  # let the event loop thread take the GIL between files
                if self._capped:
                    break
            if self._capped:
                break
        self._state = "ready"
        log.info("workspace index: %d files, %d symbols in %.1f s%s", *self.index.counts()[:2],
                 time.perf_counter() - started, " (capped)" if self._capped else "")
