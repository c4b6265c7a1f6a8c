"""Completion post-processing: single- or multi-line mode at the cursor, when to stop decoding, and the final cut.

Owns the rules that keep ghost text inside the block it belongs to and stop it re-typing text after the cursor.
Must never raise on broken code or model output, and never know about models or LSP: it sees strs and offsets.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import tree_sitter

from .document import DocumentSnapshot
from .languages import parser_for

MAX_LINES = 12

_OPENERS = "([{"
_CLOSERS = ")]}"
_MATCH = dict(zip(_CLOSERS, _OPENERS))
_QUOTES = "\"'`"
# Text after the cursor made only of these does not make the cursor "middle of line": it is what the editor
# auto-closed, and the completion is written in front of it.
_CLOSING_TEXT = frozenset(")]}\"'`;, \t")
_LEADING_BLANK_LINES = re.compile(r"(?:[ \t]*\r?\n)+")
# How far around the cursor we look; keeps everything here independent of the document's size.
_SUFFIX_LINES = 20
_SUFFIX_CHARS = 8_000


@dataclass(frozen=True)
class CompletionMode:
    multiline: bool
    reason: str  # e.g. "empty line in block", "middle of line", "inside string", "after block opener"
    indent: str  # indentation of the block the completion belongs to


@dataclass(frozen=True)
class Completion:
    text: str
    reason: str  # why it was cut, trimmed or emptied ("complete" when nothing was done)
    # Set by syntax_guard when it rejects: the first line, when it opens a block or a bracket; the completer's
    # last resort once the other starts it tried were rejected too.
    open_head: Completion | None = None


@dataclass(frozen=True)
class _Cursor:
    """What the rules need to know around the cursor, computed once per request."""

    before: str  # the cursor line up to the cursor
    rest: str  # the cursor line after the cursor, without its line break
    suffix_lines: tuple[str, ...]  # the next non-blank lines after the cursor line
    unit: str  # one indentation level
    closers: tuple[str, ...]  # keyword block closers ("end", "fi"...)
    line_comment: str | None

    @property
    def indent(self) -> str:
        return _indent_of(self.before)


def decide_mode(snapshot: DocumentSnapshot, offset: int) -> CompletionMode:
    cursor = _cursor(snapshot, offset)
    rules = snapshot.language
    place = _syntax_place(snapshot, offset, cursor)
    indent = cursor.indent

    if place == "string":
        return CompletionMode(False, "inside string", indent)
    if place == "comment":
        return CompletionMode(False, "inside comment", indent)
    if cursor.rest.strip() and not set(cursor.rest) <= _CLOSING_TEXT:
        return CompletionMode(False, "middle of line", indent)
    opener = ends_with_opener(cursor.before, rules.block_openers)
    # A bracket opener starts a block even inside a call (a callback body); ":" or a keyword there does not
    # (a dict value, a slice, a lambda).
    if opener and (opener in _OPENERS or place != "arguments"):
        return CompletionMode(True, "after block opener", indent + _unit_for(indent, cursor.unit))
    if place == "arguments":
        return CompletionMode(False, "inside argument list", indent)
    if not cursor.before.strip():
        indent = cursor.before or _indent_from_above(snapshot, offset, rules, cursor)
        return CompletionMode(True, "empty line in block", indent)
    return CompletionMode(False, "end of line", indent)


# Rules that `skip` can turn off, for the evaluation's ablation: token healing of a word being typed and one line
# after a block's existing code for a prefix-only model (both in completer), the block cut (stop at the end of the
# block), the suffix rules (no repeating what follows the cursor), indentation repair, the loop cut (a model
# repeating itself) and the syntax guard (in completer).
RULES = ("heal", "next_line", "block", "suffix", "indent", "repetition", "syntax")


def stop_check(
    snapshot: DocumentSnapshot, offset: int, mode: CompletionMode, max_lines: int = MAX_LINES,
    skip: frozenset[str] = frozenset(),
) -> Callable[[str], bool]:
    """A predicate over the text generated so far: True once the completion is complete and decoding can stop."""
    cursor = _cursor(snapshot, offset)

    def complete(generated: str) -> bool:
        if "repetition" not in skip and _cut_loop(generated, final=False) is not None:
            return True  # a model repeating itself will not stop on its own
        return _cut(cursor, mode, generated, max_lines, final=False, block="block" not in skip)[2]

    return complete


def finalize(
    snapshot: DocumentSnapshot, offset: int, mode: CompletionMode, generated: str, max_lines: int = MAX_LINES,
    skip: frozenset[str] = frozenset(),
) -> Completion:
    """The text to show: cut to the mode, stripped, and without text that is already after the cursor."""
    cursor = _cursor(snapshot, offset)
    reasons = []
    if "repetition" not in skip and (looped := _cut_loop(generated, final=True)) is not None:
        generated = looped
        reasons.append("cut a repeating loop")
    text, reason, _ = _cut(cursor, mode, generated, max_lines, final=True, block="block" not in skip)
    reasons += [reason] if reason else []

    text = text.rstrip()
    if "indent" not in skip and mode.multiline:
        fixed = _fix_indentation(text, cursor, mode)
        if fixed != text:
            text = fixed
            reasons.append("indentation fixed to the block")
    if "suffix" in skip:
        return Completion(text if text.strip() else "", "; ".join(reasons + ([] if text.strip() else ["empty"]))
                          or "complete")
    lines = text.split("\n")

    # The completion's last lines repeat the lines that follow the cursor: the model reached existing code.
    # Indentation must match too: a "}" one level in closes a different block than the "}" below the cursor.
    for k in range(min(len(lines) - 1, len(cursor.suffix_lines)), 0, -1):
        if [line.rstrip() for line in lines[-k:]] == [line.rstrip() for line in cursor.suffix_lines[:k]]:
            lines = lines[:-k]
            text = "\n".join(lines).rstrip()
            reasons.append("dropped lines repeating the suffix")
            break

    # The end of the completion repeats what the editor already has after the cursor (")", "\")", "]);").
    trimmed = _trim_rest_overlap(text, cursor.rest)
    if trimmed != text:
        text = trimmed.rstrip() if "\n" in trimmed else trimmed
        reasons.append("trimmed text already after the cursor")

    if not text.strip():
        text = ""
        reasons.append("empty")
    return Completion(text, "; ".join(reasons) or "complete")


# The cut ----------------------------------------------------------------------------------------------------


def _cut(
    cursor: _Cursor, mode: CompletionMode, generated: str, max_lines: int, *, final: bool, block: bool = True
) -> tuple[str, str, bool]:
    """(text, reason, complete): the generated text cut where the completion ends, and whether it ended."""
    text = generated.replace("\r\n", "\n")
    if not cursor.before.strip():
        # Nothing typed on the cursor line: a leading newline would only leave it blank.
        text = _LEADING_BLANK_LINES.sub("", text, count=1) if _LEADING_BLANK_LINES.match(text) else text
        if cursor.before and text.startswith(cursor.before):
            text = text[len(cursor.before) :]

    if not mode.multiline:
        end = text.find("\n")
        if end == -1:
            return text, "", False
        return text[:end], "single line", True

    lines = text.split("\n")
    if not block:
        # Ablation: no block rules, only the line cap.
        return ("\n".join(lines[:max_lines]), "max lines", True) if len(lines) > max_lines else (text, "", False)
    depth = 0
    block_width = _width(mode.indent)
    base_width = _width(cursor.indent)
    first_body = True
    for i, line in enumerate(lines):
        is_last = i == len(lines) - 1
        if i >= max_lines:
            return "\n".join(lines[:i]), "max lines", True
        if i > 0 and line.strip():
            width = _width(_indent_of(line))
            if first_body and mode.reason == "after block opener" and base_width < width < block_width:
                # The file indents by less than the language's usual unit; trust the model's first body line.
                block_width = width
            first_body = False
            # The model wrote the line that already follows the cursor: existing code reached.
            if (
                (not is_last or final)  # a line still being written may yet differ
                and cursor.suffix_lines
                and line.rstrip() == cursor.suffix_lines[0].rstrip()
                and not set(line.strip()) <= _CLOSING_TEXT  # lone closers are the bracket rule's business
            ):
                return "\n".join(lines[:i]), "reached the suffix", True

        # Indentation: a non-empty line shallower than the block is code after the block. A line led by a
        # closing bracket is the block's own end, which the bracket rule below decides.
        dedented = i > 0 and bool(line.strip()) and _width(_indent_of(line)) < block_width
        if dedented and line.lstrip()[0] not in _CLOSERS:
            word = line.strip().split(None, 1)[0].rstrip(";")
            if is_last and not final and any(closer.startswith(word) for closer in cursor.closers):
                break  # "e" may become "end" (kept) or "else" (cut): wait for the whole line
            if word in cursor.closers and not _keyword_present(cursor, word, _indent_of(line)):
                return "\n".join(lines[: i + 1]), "closed the block", True
            return "\n".join(lines[:i]), "dedent", True

        # Brackets: a closer that takes the nesting below the cursor's level ends the block we are in. Strings
        # rarely span lines in completions: scanning line by line keeps a stray quote local.
        for token in _scan(line, line_comment=cursor.line_comment):
            depth += (token.kind == "open") - (token.kind == "close")
            if depth < 0:
                if _closer_present(cursor, token.char, _indent_of(line)):
                    head = line[: token.at].rstrip()
                    kept = lines[:i] + [head] if head.strip() or i == 0 else lines[:i]
                else:
                    kept = lines[:i] + [line[: token.at + 1]]
                return "\n".join(kept), "closed the block", True
        if dedented:
            if is_last and not final:
                break  # a later bracket on this line may still close the block
            return "\n".join(lines[:i]), "dedent", True
    return "\n".join(lines), "", False


# A unit of text written three times in a row on one line ("x", "x", "x", ...), or the same line three times
# running: small models loop like this until the token limit. Only units of words count (see _loop_unit).
_LOOP_IN_LINE = re.compile(r"([^\n]{4,60}?)\1\1")
_LOOP_LINES = 3
# A block of 2 to this many lines written twice running is a loop too (an "if" and its body, again): code does
# not repeat a whole block verbatim, and two copies suffice where a single line needs three.
_LOOP_BLOCK_LINES = 6


def _cut_loop(text: str, *, final: bool) -> str | None:
    """The text cut after the first copy of a loop the model fell into, or None when there is none.

    While decoding (`final` False) this runs after every token, so it looks only at the tail, where a loop that
    was not there one token ago must end, and its answer means only "found" (the cut is made at the end). The last
    line may still be growing then; a loop in it counts all the same, since three copies are already written."""
    if not final:
        text = text[-(2 * _LOOP_BLOCK_LINES * 80 + 80):]
    lines = text.split("\n")
    complete = [line.rstrip() for line in (lines if final else lines[:-1])]  # indentation counts: nested
    for i in range(_LOOP_LINES - 1, len(complete)):  # "done" / "end" lines differ in it
        line = complete[i]
        if _loop_unit(line) and all(complete[i - k] == line for k in range(1, _LOOP_LINES)):
            return "\n".join(lines[: i - _LOOP_LINES + 2])
    # Blocks compare without indentation: the first line of an answer has none (the cursor's is in the prompt).
    stripped = [line.lstrip() for line in complete]
    # The first block whose second copy ends at line `end`; while decoding, only one ending at the newest line.
    for end in range(4, len(stripped) + 1) if final else [len(stripped)]:
        for size in range(2, min(_LOOP_BLOCK_LINES, end // 2) + 1):
            block = stripped[end - 2 * size : end - size]
            if block == stripped[end - size : end] and sum(1 for line in block if _loop_unit(line)) >= 2:
                return "\n".join(lines[: end - size])
    for match in _LOOP_IN_LINE.finditer(text):
        if _loop_unit(match.group(1)):
            return text[: match.start() + len(match.group(1))]
    return None


def _loop_unit(text: str) -> bool:
    """Text that counts as a loop's unit: words, not data ("0, ") nor one repeated character ("aaaa", "----")."""
    stripped = text.strip()
    return len(stripped) >= 4 and len(set(stripped)) >= 3 and any(c.isalpha() for c in stripped)


def _fix_indentation(text: str, cursor: _Cursor, mode: CompletionMode) -> str:
    """Lines after the first, re-indented in the block's own style: tabs where the block uses tabs, spaces where
    it uses spaces (a model trained mostly on one style writes it into files of the other)."""
    lines = text.split("\n")
    if len(lines) < 2:
        return text
    tabs = "\t" in mode.indent or (not mode.indent and cursor.unit == "\t")
    unit_width = 4 if tabs else max(len(cursor.unit), 1)
    out = [lines[0]]
    for line in lines[1:]:
        indent = _indent_of(line)
        if not line.strip() or not indent:
            out.append(line)
            continue
        width = _width(indent)
        if tabs and " " in indent:
            indent = "\t" * (width // 4) + " " * (width % 4)
        elif not tabs and "\t" in indent:
            indent = " " * (width // 4 * unit_width + width % 4)
        out.append(indent + line.lstrip(" \t"))
    return "\n".join(out)


def _trim_rest_overlap(text: str, rest: str) -> str:
    """Drop the longest end of text that equals the start of rest and only re-closes what the cursor is in."""
    for k in range(min(len(text), len(rest)), 0, -1):
        tail = rest[:k]
        if set(tail) <= _CLOSING_TEXT and tail.strip() and text.endswith(tail) and _closes_outside(text[:-k], tail):
            return text[:-k]
    return text


def _closes_outside(head: str, tail: str) -> bool:
    """True when every bracket and quote in tail closes something opened before the completion, not in head."""
    tokens = list(_scan(head, spanning=_QUOTES))
    quote = _open_string(tokens)
    if quote and quote in tail:
        return False  # closes a string the completion itself opened
    return not (_nesting(tokens) and set(tail) & set(_CLOSERS))  # else closes a bracket the completion opened


def _closer_present(cursor: _Cursor, closer: str, indent: str) -> bool:
    """Whether the document already has this closing bracket right after the cursor, at the same indentation."""
    rest = cursor.rest.strip()
    if rest:
        return rest.startswith(closer)
    if not cursor.suffix_lines:
        return False
    following = cursor.suffix_lines[0]
    return following.strip().startswith(closer) and _width(_indent_of(following)) == _width(indent)


def _keyword_present(cursor: _Cursor, word: str, indent: str) -> bool:
    if not cursor.suffix_lines:
        return False
    following = cursor.suffix_lines[0]
    parts = following.split(None, 1)
    return bool(parts) and parts[0].rstrip(";") == word and _width(_indent_of(following)) == _width(indent)


# The cursor's surroundings ----------------------------------------------------------------------------------


def _cursor(snapshot: DocumentSnapshot, offset: int) -> _Cursor:
    text = snapshot.text
    offset = max(0, min(offset, len(text)))
    line_start = _line_start(text, offset)
    line_end = _find_break(text, offset)
    after = text[line_end : line_end + _SUFFIX_CHARS]
    suffix_lines = tuple(line for line in after.splitlines()[1 : _SUFFIX_LINES + 1] if line.strip())
    rules = snapshot.language
    return _Cursor(
        before=text[line_start:offset],
        rest=text[offset:line_end],
        suffix_lines=suffix_lines,
        unit=rules.indent_unit,
        closers=rules.block_closers,
        line_comment=rules.line_comment,
    )


def _line_start(text: str, offset: int) -> int:
    # Look for a lone \r only within the line the \n search found, so a file without \r is not scanned whole.
    newline = text.rfind("\n", 0, offset)
    return max(newline, text.rfind("\r", newline + 1, offset)) + 1


def _find_break(text: str, offset: int) -> int:
    newline = text.find("\n", offset)
    end = len(text) if newline == -1 else newline
    carriage = text.find("\r", offset, end)
    return carriage if carriage != -1 else end


def _syntax_place(snapshot: DocumentSnapshot, offset: int, cursor: _Cursor) -> str | None:
    """"string", "comment", "arguments" or None: what the cursor is inside, from the tree when there is one."""
    tree, rules = snapshot.tree, snapshot.language
    if tree is None:
        return _textual_place(cursor)
    byte = snapshot.byte_offset(offset)
    node = tree.root_node.descendant_for_byte_range(max(byte - 1, 0), byte)
    while node is not None:
        inside = node.start_byte < byte < node.end_byte
        if node.type in rules.string_nodes and inside:
            return "string"
        # A line comment ends at the line end, where the cursor often is.
        if node.type in rules.comment_nodes and node.start_byte < byte <= node.end_byte:
            closed = (
                rules.block_comment is not None
                and node.end_byte == byte
                and snapshot.source.endswith(rules.block_comment[1].encode(), 0, byte)
            )
            if not closed:
                return "comment"
        if node.type in rules.argument_nodes and inside:
            return "arguments"
        if node.type in rules.block_nodes and inside:
            return None  # among a block's statements, even in a callback passed as an argument
        node = node.parent
    # Broken code the parser could not place (an unclosed call): fall back to the line's own brackets.
    return "arguments" if _open_brackets(cursor.before) else None


def _textual_place(cursor: _Cursor) -> str | None:
    tokens = list(_scan(cursor.before, line_comment=cursor.line_comment))
    if any(token.kind == "comment" for token in tokens):
        return "comment"
    if _open_string(tokens):
        return "string"
    return "arguments" if _open_brackets(cursor.before) else None


def _open_brackets(text: str) -> bool:
    """Whether text leaves a parenthesis or square bracket open, counting every one, quoted or not."""
    return _nesting(_scan(text, quotes=""), brackets="()[]") > 0


def ends_with_opener(before: str, openers: tuple[str, ...]) -> str | None:
    stripped = before.rstrip()
    for opener in openers:
        if opener[-1].isalnum():
            if re.search(r"(?:^|\W)" + re.escape(opener) + r"$", stripped):
                return opener
        elif stripped.endswith(opener):
            return opener
    return None


def _indent_from_above(snapshot: DocumentSnapshot, offset: int, rules, cursor: _Cursor) -> str:
    """Block indentation for a blank line at column 0: one level in after an opener, else the column itself.

    Editors indent a new line inside a block, so column 0 normally means top level; only right after an opener
    (an editor without auto-indent) is the block deeper than the cursor.
    """
    window = snapshot.text[max(0, offset - _SUFFIX_CHARS) : offset]
    for line in reversed(window.splitlines()):
        if line.strip():
            indent = _indent_of(line)
            return indent + _unit_for(indent, cursor.unit) if ends_with_opener(line, rules.block_openers) else ""
    return ""


def block_has_code_above(snapshot: DocumentSnapshot, offset: int, mode: CompletionMode) -> bool:
    """True when the cursor is on a blank line of an indented block that already holds a statement above it: the
    nearest non-blank line above is code at the block's depth (not its opener, a comment or a docstring) or deeper
    (a nested block's end). A block still empty, or only commented, wants its body; one with code, its next line."""
    cursor = _cursor(snapshot, offset)
    if cursor.before.strip() or not mode.indent or mode.reason != "empty line in block":
        return False
    rules, indent = snapshot.language, mode.indent
    window = snapshot.text[max(0, offset - _SUFFIX_CHARS) : offset]
    lines = window.splitlines()[:-1] if not window.endswith("\n") else window.splitlines()
    for line in reversed(lines):
        if not line.strip():
            continue
        width, code = _width(_indent_of(line)), line.strip()
        if width < _width(indent):
            return False  # the block's own opener: nothing in it yet
        commented = (cursor.line_comment and code.startswith(cursor.line_comment)) or code[:1] in _QUOTES or (
            rules.block_comment is not None and code.startswith(rules.block_comment[0]))
        if width == _width(indent) and (commented or ends_with_opener(line, rules.block_openers)):
            return False
        return True
    return False


def _unit_for(indent: str, unit: str) -> str:
    return "\t" if "\t" in indent else unit


def _indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _width(indent: str) -> int:
    return len(indent.expandtabs(4))


def block_continues_below(snapshot: DocumentSnapshot, offset: int, mode: CompletionMode) -> bool:
    """True when the cursor is on a blank line inside a block whose code goes on below it (the next non-blank line is
    at the block's indentation or deeper): new code goes between existing lines there, one line at a time, for a
    model that cannot see the suffix."""
    cursor = _cursor(snapshot, offset)
    if cursor.before.strip() or not cursor.suffix_lines:
        return False
    following = cursor.suffix_lines[0]
    return _width(_indent_of(following)) >= _width(mode.indent) and following.lstrip()[:1] not in _CLOSERS


# The syntax guard ---------------------------------------------------------------------------------------------


def syntax_guard(snapshot: DocumentSnapshot, offset: int, completion: Completion) -> Completion:
    """The completion, trimmed by whole lines from its end (or emptied) until merging it into the document adds no
    tree-sitter ERROR or MISSING node; a last line that opens a block may stay open (its body is the user's next).
    Emptied, it carries its first line as `open_head` when that line opens a block or a bracket.

    Parses incrementally on a copy of the snapshot's tree; a document without a tree passes unchanged.
    """
    if not completion.text or snapshot.tree is None:
        return completion
    parser = parser_for(snapshot.language)
    if parser is None:
        return completion
    at = snapshot.byte_offset(max(0, min(offset, len(snapshot.text))))
    source = snapshot.source
    baseline = error_count(snapshot.tree.root_node)

    def adds_errors(text: str) -> bool:
        if not text:
            return False
        data = text.encode("utf-8", "surrogatepass")
        tree = snapshot.tree.copy()
        merged = source[:at] + data + source[at:]
        tree.edit(start_byte=at, old_end_byte=at, new_end_byte=at + len(data), start_point=_point(source, at),
                  old_end_point=_point(source, at), new_end_point=_point(merged, at + len(data)))
        return error_count(parser.parse(merged, tree).root_node) > baseline

    text = completion.text
    if not adds_errors(text):
        return completion
    lines = text.split("\n")
    # An opener on the last line ("if x:", "{") is complete once the user writes the body: judge what is above it.
    if ends_with_opener(lines[-1], snapshot.language.block_openers) and not adds_errors("\n".join(lines[:-1])):
        return Completion(text, _join(completion.reason, "ends in an open block"))
    # The last line was cut short (a token or time limit) or ran on: close what it left open, or cut it back to a
    # word boundary, before giving the whole line up.
    above = "\n".join(lines[:-1]) + "\n" if len(lines) > 1 else ""
    for line, how in _line_repairs(lines[-1], _unclosed(above)):
        candidate = (above + line).rstrip()
        if line.strip() and not adds_errors(candidate):
            return Completion(candidate, _join(completion.reason, f"{how} the last line: as written it adds syntax errors"))
    if len(lines) == 1 and _opens_a_bracket_last(text):
        return Completion(text, _join(completion.reason, "ends in an open bracket (the rest is the user's)"))
    for keep in range(len(lines) - 1, 0, -1):
        head = "\n".join(lines[:keep]).rstrip()
        if head.strip() and not adds_errors(head):
            return Completion(head, _join(completion.reason, f"cut to {keep} line(s): the rest adds syntax errors"))
    # No head is clean. The first line alone may still open a block or a bracket, as a whole answer's last line
    # may (above): its body is the user's. (A longer head ending so would stand on a clean head, found above.)
    first = lines[0].rstrip()
    opens = ends_with_opener(first, snapshot.language.block_openers) or _opens_a_bracket_last(first)
    open_head = Completion(first, _join(completion.reason, "cut to 1 line(s), the last one open: the rest adds "
                                        "syntax errors")) if opens else None
    return Completion("", _join(completion.reason, "rejected: it adds syntax errors"), open_head)


_MAX_REPAIRS = 10


def _line_repairs(line: str, opened: list[str]):
    """Shorter or closed versions of a line, longest first: closed as is, then cut back at word boundaries
    (each also closed)."""
    tried = 0
    cuts = [len(line)] + [i for i in range(len(line) - 1, 0, -1) if line[i] in " ,.([{)]}" and line[i - 1] != " "]
    for cut in cuts:
        head = line[:cut].rstrip()
        closers = _closers_for(opened + _unclosed(head))
        for candidate, how in ((head + closers, "closed"), (head, "cut back")):
            if cut == len(line) and how == "cut back":
                continue  # the line as written already failed
            if how == "closed" and not closers:
                continue
            yield candidate, how
            tried += 1
            if tried >= _MAX_REPAIRS:
                return


def _opens_a_bracket_last(line: str) -> bool:
    """A line whose last character opens a bracket, with code before it and no closer or quote of its own left
    dangling ("def total(", "if (ready && check("): the head of a construct the user goes on writing. The guard
    keeps it as a one-line suggestion where closing the bracket (tried first) does not make it valid."""
    stripped = line.rstrip()
    if not stripped or stripped[-1] not in _OPENERS or not re.search(r"\w", stripped):
        return False
    if _nesting(_scan(stripped, quotes=""), strict=True) is None:
        return False  # a closer, quoted or not, with no opener before it
    return all(ch in _OPENERS for ch in _unclosed(stripped))


def _unclosed(text: str) -> list[str]:
    """Brackets and quotes text opens and does not close, innermost last. A closer that does not match the
    innermost opener closes nothing."""
    stack: list[str] = []
    for token in _scan(text):
        if token.kind in ("open", "string"):
            stack.append(token.char)
        elif token.kind == "string end" or (token.kind == "close" and stack and stack[-1] == _MATCH[token.char]):
            stack.pop()
    return stack


def _closers_for(opened: list[str]) -> str:
    return "".join(ch if ch in _QUOTES else _CLOSERS[_OPENERS.index(ch)] for ch in reversed(opened))


def error_count(node: tree_sitter.Node, limit: int = 200) -> int:
    """ERROR and MISSING nodes under node, visiting only subtrees that hold an error (bounded for broken files)."""
    count = 0
    stack = [node]
    while stack and count < limit:
        current = stack.pop()
        if current.is_missing or current.type == "ERROR":
            count += 1
            if current.type == "ERROR":
                continue  # one ERROR node, however much it swallowed
        stack.extend(child for child in current.children if child.has_error or child.is_missing)
    return count


def _point(data: bytes, byte_offset: int) -> tuple[int, int]:
    row = data.count(b"\n", 0, byte_offset)
    return row, byte_offset - (data.rfind(b"\n", 0, byte_offset) + 1)


def _join(reason: str, more: str) -> str:
    return more if reason in ("", "complete") else f"{reason}; {more}"


# The bracket and quote scanner --------------------------------------------------------------------------------


class _Token(NamedTuple):
    at: int  # index in the scanned text
    char: str  # the bracket, the quote, the line comment's marker, or the "\n" that ends a string
    kind: str  # "open", "close" (a bracket), "string", "string end", "comment"


def _scan(text: str, *, quotes: str = _QUOTES, line_comment: str | None = None,
          spanning: str = "`") -> Iterator[_Token]:
    """The brackets, string quotes and line comments of text, in order, for the rules above to count.

    A string runs from one of `quotes` to the same quote not right after a backslash, or to the line's end unless
    its quote is in `spanning` (template literals span lines; other strings rarely do in completions). Nothing
    inside a string counts, nor anything after `line_comment` on its line. Brackets are not matched here: each rule
    counts them its own way (see _nesting, _unclosed).
    """
    quote: str | None = None
    i, end = 0, len(text)
    while i < end:
        ch = text[i]
        if quote:
            if (ch == quote and text[i - 1] != "\\") or (ch == "\n" and quote not in spanning):
                quote = None
                yield _Token(i, ch, "string end")
        elif ch in quotes:
            quote = ch
            yield _Token(i, ch, "string")
        elif line_comment and text.startswith(line_comment, i):
            yield _Token(i, line_comment, "comment")
            i = text.find("\n", i)
            if i == -1:
                return
            continue
        elif ch in _OPENERS:
            yield _Token(i, ch, "open")
        elif ch in _CLOSERS:
            yield _Token(i, ch, "close")
        i += 1


def _open_string(tokens: list[_Token]) -> str | None:
    """The quote of the string the scanned text ends inside, if any (only its end could follow its start)."""
    return tokens[-1].char if tokens and tokens[-1].kind == "string" else None


def _nesting(tokens, *, brackets: str = "()[]{}", strict: bool = False) -> int | None:
    """How many of `brackets` the tokens leave open, any closer closing any opener. A closer with no opener
    before it closes nothing, or, when `strict`, makes the answer None."""
    depth = 0
    for token in tokens:
        if token.char not in brackets or token.kind not in ("open", "close"):
            continue
        if token.kind == "open":
            depth += 1
        elif depth:
            depth -= 1
        elif strict:
            return None
    return depth
