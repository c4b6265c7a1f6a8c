"""Edit fuzzing of the document model (hypothesis): random incremental edits full of surrogate pairs, lone
surrogates, combining marks, CJK and CRLF, addressed in utf-16 and utf-8 columns, against a reference model
(plain str splicing on independently computed offsets). After every edit the text, the line index and the
incrementally edited tree-sitter tree must equal the reference text and a fresh parse of it; an invalid range
raises PositionError and changes nothing.

CI runs 5 sequences of 200 edits (1,000 edits, plus the invalid ones); GHOSTLS_FUZZ=long runs 50 (10,000 edits).
"""

from __future__ import annotations

import bisect

from hypothesis import given
from hypothesis import strategies as st

from fuzzing import fuzz_settings
from ghostls.parsers.document import Document, PositionEncoding, PositionError, _line_starts
from ghostls.parsers.languages import parser_for

EDITS_PER_SEQUENCE = 200
U8, U16 = PositionEncoding.UTF8, PositionEncoding.UTF16
PIECES = ["a", "x", " ", "(", ")", ":", "=", '"', "#", "\t", "\n", "\r", "\r\n", "    ", "def f():", "if x:\n    ",
          "😀", "👍🏽", "𝔘", "漢字", "한", "e\u0301", "\u0301", "\u200d", "\ud83d", "\ufeff",
          "return 1\r\n"]
text_pieces = st.lists(st.sampled_from(PIECES), max_size=5).map("".join)


def _position(text: str, offset: int, encoding: PositionEncoding) -> tuple[int, int]:
    starts = _line_starts(text)
    line = bisect.bisect_right(starts, offset) - 1
    part = text[starts[line]:offset]
    if encoding is U8:
        return line, len(part.encode("utf-8", "surrogatepass"))
    return line, len(part.encode("utf-16-le", "surrogatepass")) // 2


def _addressable(text: str, offset: int) -> int:
    # The middle of a \r\n is no LSP position (it is the end of the line); step back to before the \r.
    return offset - 1 if 0 < offset < len(text) and text[offset - 1:offset + 1] == "\r\n" else offset


def _fresh_tree(doc: Document) -> str:
    return str(parser_for(doc.language).parse(doc.text.encode("utf-8", "surrogatepass")).root_node)


@fuzz_settings(ci=5, long=50)
@given(data=st.data(), start_text=text_pieces)
def test_random_edits_match_the_reference_model(data, start_text):
    text = "def f(a, b):\r\n    return a + b\n\nx = '😀漢e\u0301'\n" + start_text
    doc = Document("file:///fuzz.py", "python", 1, text)
    for version in range(2, EDITS_PER_SEQUENCE + 2):
        encoding = data.draw(st.sampled_from([U8, U16]))
        a = _addressable(text, data.draw(st.integers(0, len(text))))
        b = _addressable(text, min(len(text), a + data.draw(st.integers(0, 6))))
        new = data.draw(text_pieces)
        doc.apply_change(new, (_position(text, a, encoding), _position(text, b, encoding)), version, encoding)
        text = text[:a] + new + text[b:]
        assert doc.text == text
        assert doc.version == version
        assert doc.snapshot().line_starts == _line_starts(text)
        assert doc.tree is not None and str(doc.tree.root_node) == _fresh_tree(doc), repr(text)
        if data.draw(st.integers(0, 9)) == 0:
            _assert_invalid_range_is_rejected(doc, data)


def _assert_invalid_range_is_rejected(doc: Document, data) -> None:
    before = (doc.text, doc.version, str(doc.tree.root_node))
    lines = len(_line_starts(doc.text))
    kind = data.draw(st.sampled_from(["past-end", "inverted", "negative"]))
    if kind == "past-end":
        span = ((lines + data.draw(st.integers(0, 5)), 0), (lines + 9, 0))
    elif kind == "inverted":
        line = data.draw(st.integers(0, lines - 1))
        if line + 1 < lines:
            span = ((line + 1, 0), (line, 0))
        elif doc.snapshot().line_at(doc.snapshot().line_starts[line]):
            # The line's end (a column past it clamps there) before its start. Not (line, 1): a utf-8 column
            # inside a multi-byte character snaps to that character's start, which is column 0 again.
            span = ((line, 10_000), (line, 0))
        else:
            return  # an empty last line has no two distinct positions to invert
    else:
        span = ((data.draw(st.integers(-5, -1)), 0), (0, 0))
    encoding = data.draw(st.sampled_from([U8, U16]))
    try:
        doc.apply_change("junk", span, before[1] + 1, encoding)
    except PositionError:
        pass
    else:
        raise AssertionError(f"{kind} range {span} was accepted")
    assert (doc.text, doc.version, str(doc.tree.root_node)) == before
