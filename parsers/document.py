"""Open documents: text, line index and an incrementally maintained tree-sitter tree, plus immutable snapshots.

Owns position conversion (LSP utf-8/16/32 columns <-> str offsets) and incremental reparsing. Must never know
LSP types or raise on broken user code; only impossible positions raise PositionError.
"""

from __future__ import annotations

import bisect
import enum
import functools
import re
from dataclasses import dataclass, field

import tree_sitter

from .languages import LanguageRules, parser_for, rules_for

# LSP counts \r\n, \r and \n as line breaks; \r\n must be tried first so it counts once.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class PositionEncoding(str, enum.Enum):
    UTF8 = "utf-8"
    UTF16 = "utf-16"
    UTF32 = "utf-32"


class PositionError(ValueError):
    """A position or range that cannot exist in the document (negative, or a line past the end)."""


def _line_starts(text: str) -> list[int]:
    return [0] + [m.end() for m in _LINE_BREAK.finditer(text)]


def _encode(text: str) -> bytes:
    # Lone surrogates can arrive from clients; surrogatepass keeps byte lengths consistent instead of raising.
    return text.encode("utf-8", "surrogatepass")


def _units(text: str, encoding: PositionEncoding) -> int:
    """Length of text in the encoding's code units."""
    if encoding is PositionEncoding.UTF32 or text.isascii():
        return len(text)
    if encoding is PositionEncoding.UTF8:
        return len(_encode(text))
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _index_of_units(line: str, units: int, encoding: PositionEncoding) -> int:
    """Str index in line after `units` code units; a column inside a character snaps to its start."""
    if encoding is PositionEncoding.UTF32 or line.isascii():
        return min(units, len(line))
    count = 0
    for i, ch in enumerate(line):
        cp = ord(ch)
        if encoding is PositionEncoding.UTF16:
            width = 2 if cp > 0xFFFF else 1
        else:
            width = 1 if cp < 0x80 else 2 if cp < 0x800 else 3 if cp < 0x10000 else 4
        if count + width > units:
            return i
        count += width
    return len(line)


def _line_content_end(text: str, starts: list[int], line: int) -> int:
    """Offset where the line's content ends (before its line break)."""
    if line + 1 >= len(starts):
        return len(text)
    end = starts[line + 1]
    if end >= 2 and text[end - 2 : end] == "\r\n":
        return end - 2
    return end - 1


@dataclass(frozen=True)
class DocumentSnapshot:
    """One version of a document. Immutable: safe to read on a worker thread while the Document changes."""

    uri: str
    language: LanguageRules
    version: int
    text: str
    tree: tree_sitter.Tree | None = None
    line_starts: list[int] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.line_starts is None:
            object.__setattr__(self, "line_starts", _line_starts(self.text))

    @functools.cached_property
    def source(self) -> bytes:
        """The text as the utf-8 bytes the tree was parsed from (node offsets index into these)."""
        return _encode(self.text)

    def byte_offset(self, offset: int) -> int:
        """Utf-8 byte offset for a str offset; O(offset), only worth calling on documents that have a tree."""
        return len(_encode(self.text[:offset]))

    def line_count(self) -> int:
        return len(self.line_starts)

    def line_of(self, offset: int) -> int:
        return bisect.bisect_right(self.line_starts, offset) - 1

    def offset_at(self, line: int, character: int, encoding: PositionEncoding = PositionEncoding.UTF16) -> int:
        """Str offset of an LSP position; a character past the line end clamps to the line end."""
        if line < 0 or character < 0:
            raise PositionError(f"negative position {line}:{character} in {self.uri}")
        if line >= len(self.line_starts):
            raise PositionError(
                f"line {line} is past the end of {self.uri} ({len(self.line_starts)} lines, version {self.version})"
            )
        start = self.line_starts[line]
        end = _line_content_end(self.text, self.line_starts, line)
        return start + _index_of_units(self.text[start:end], character, encoding)

    def position_at(self, offset: int, encoding: PositionEncoding = PositionEncoding.UTF16) -> tuple[int, int]:
        """LSP (line, character) of a str offset; an offset inside a \\r\\n maps to the line end."""
        if offset < 0 or offset > len(self.text):
            raise PositionError(f"offset {offset} is outside {self.uri} (length {len(self.text)})")
        line = self.line_of(offset)
        start = self.line_starts[line]
        end = min(offset, _line_content_end(self.text, self.line_starts, line))
        return line, _units(self.text[start:end], encoding)

    def line_at(self, offset: int) -> str:
        """The text of the line holding offset, without its line break."""
        line = self.line_of(max(0, min(offset, len(self.text))))
        return self.text[self.line_starts[line] : _line_content_end(self.text, self.line_starts, line)]


Range = tuple[tuple[int, int], tuple[int, int]]


class Document:
    """A document the client has open. Mutable; only the server's event loop touches it."""

    def __init__(self, uri: str, language_id: str | None, version: int, text: str, *, max_parse_bytes: int = 2_000_000):
        self.uri = uri
        self.language = rules_for(language_id, uri)
        self.max_parse_bytes = max_parse_bytes
        self._parser = parser_for(self.language)
        self._replace_all(text, version)

    # Reading -------------------------------------------------------------------------------------------------

    @property
    def text(self) -> str:
        return self._snapshot.text

    @property
    def version(self) -> int:
        return self._snapshot.version

    @property
    def tree(self) -> tree_sitter.Tree | None:
        return self._tree

    def snapshot(self) -> DocumentSnapshot:
        """An immutable view of the current version; the tree is copied so later edits cannot reach it."""
        snap = self._snapshot
        tree = self._tree.copy() if self._tree is not None else None
        out = DocumentSnapshot(snap.uri, snap.language, snap.version, snap.text, tree, snap.line_starts)
        if self._bytes is not None:
            out.__dict__["source"] = self._bytes  # already encoded for parsing; spare the reader a copy
        return out

    # Writing -------------------------------------------------------------------------------------------------

    def apply_change(self, text: str, range: Range | None, version: int, encoding: PositionEncoding) -> None:
        """Apply one LSP content change. An impossible range raises PositionError and changes nothing."""
        if range is None:
            self._replace_all(text, version)
            return
        (sl, sc), (el, ec) = range
        snap = self._snapshot
        start = snap.offset_at(sl, sc, encoding)
        end = snap.offset_at(el, ec, encoding)
        if start > end:
            raise PositionError(f"range start {sl}:{sc} is after its end {el}:{ec} in {self.uri}")
        self._splice(start, end, text, version)

    def _replace_all(self, text: str, version: int) -> None:
        self._snapshot = DocumentSnapshot(self.uri, self.language, version, text)
        self._bytes = None
        self._tree = None
        self._parse_fresh()

    def _parseable(self, text: str, size: int) -> bool:
        # Binary files and huge generated files stay plain text: parsing them costs more than it helps.
        return self._parser is not None and size <= self.max_parse_bytes and "\x00" not in text

    def _parse_fresh(self) -> None:
        text = self._snapshot.text
        # len(text) bounds the byte size from below, so a huge file is rejected before encoding it.
        if self._parser is None or len(text) > self.max_parse_bytes:
            return
        data = _encode(text)
        if not self._parseable(text, len(data)):
            return
        self._bytes = data
        self._tree = self._parser.parse(data)

    def _splice(self, start: int, end: int, new: str, version: int) -> None:
        old = self._snapshot
        old_text, starts = old.text, old.line_starts
        text = old_text[:start] + new + old_text[end:]
        new_starts = self._updated_line_starts(old_text, starts, text, start, end, len(new))
        self._snapshot = DocumentSnapshot(self.uri, self.language, version, text, None, new_starts)

        if self._tree is None or self._bytes is None:
            # No tree to edit (plain text, or it was binary/huge): try a fresh parse in case that changed.
            self._bytes, self._tree = None, None
            self._parse_fresh()
            return

        # Tree-sitter edits are in utf-8 bytes and (row, byte column) points; rows are counted by \n only.
        old_bytes = self._bytes
        start_byte = len(_encode(old_text[:start]))
        old_end_byte = start_byte + len(_encode(old_text[start:end]))
        new_end_byte = start_byte + len(_encode(new))
        data = old_bytes[:start_byte] + _encode(new) + old_bytes[old_end_byte:]
        if len(data) > self.max_parse_bytes or "\x00" in new:
            self._bytes, self._tree = None, None
            return
        self._tree.edit(
            start_byte=start_byte,
            old_end_byte=old_end_byte,
            new_end_byte=new_end_byte,
            start_point=_point(old_bytes, start_byte),
            old_end_point=_point(old_bytes, old_end_byte),
            new_end_point=_point(data, new_end_byte),
        )
        self._bytes = data
        self._tree = self._parser.parse(data, self._tree)

    @staticmethod
    def _updated_line_starts(
        old_text: str, starts: list[int], text: str, start: int, end: int, new_len: int
    ) -> list[int]:
        """Line starts after replacing old_text[start:end], rescanning only the lines around the edit.

        The rescanned window begins one line before the edit (a \\r before it may now pair with a \\n) and ends
        two lines after it, so the window's own ends are unchanged text and every break inside is seen whole.
        """
        delta = new_len - (end - start)
        lo_line = max(bisect.bisect_right(starts, start) - 2, 0)
        hi_line = bisect.bisect_right(starts, end) + 1
        lo = starts[lo_line]
        if hi_line < len(starts):
            hi = starts[hi_line] + delta
            # The break that ends just at hi is the one that already made starts[hi_line]; skip it.
            middle = [m.end() for m in _LINE_BREAK.finditer(text, lo, hi) if m.end() < hi]
            tail = [s + delta for s in starts[hi_line:]] if delta else starts[hi_line:]
        else:
            middle = [m.end() for m in _LINE_BREAK.finditer(text, lo)]
            tail = []
        return starts[: lo_line + 1] + middle + tail


def _point(data: bytes, byte_offset: int) -> tuple[int, int]:
    row = data.count(b"\n", 0, byte_offset)
    line_start = data.rfind(b"\n", 0, byte_offset) + 1
    return row, byte_offset - line_start
