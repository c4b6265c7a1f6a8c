"""Cross-file context for one request: definitions from other files of the identifiers used near the cursor, the
code elsewhere most like the lines before the cursor (and what follows it there), and recently edited regions of
other documents, fitted to a token budget and rendered for the model family.

A pure function of (snapshot, offset, definitions lookup, similar code, recent edits, family, tokenizer, budget).
Ordering keeps the KV prefix stable: definitions sorted by file and line (they change least), then the similar
code (it changes when the cursor changes line), recent edits last.
Must never read files (the index did) and never put text from the current file in (the prefix has it).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from .document import DocumentSnapshot
from .index import Definition, document_key
from .languages import LanguageRules

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# How much text around the cursor is searched for identifiers (chars before, after).
_NEAR_BEFORE = 3_000
_NEAR_AFTER = 600
# A name defined in more files than this is too common to tell which one is meant ("get", "run").
_MAX_DEFINITIONS_PER_NAME = 3
MAX_DEFINITIONS = 12

# Repository-level prompt formats of the families that were trained with them (data, not branches).
REPO_FORMATS: dict[str, dict[str, str]] = {
    "qwen": {"repo": "<|repo_name|>{repo}\n", "file": "<|file_sep|>{path}\n{text}\n", "current": "<|file_sep|>{path}\n"},
    "starcoder": {"repo": "<repo_name>{repo}", "file": "<file_sep>{path}\n{text}\n", "current": "<file_sep>{path}\n"},
}


@dataclass(frozen=True)
class RecentEdit:
    key: str
    path: str  # as shown in the prompt
    line: int
    text: str  # the lines around the edit


@dataclass(frozen=True)
class SimilarCode:
    """Lines of another file that look like the lines before the cursor, with the lines that follow them there:
    a test beside its sibling, a handler beside the last one, a licence header beside another file's."""

    key: str
    path: str  # as shown in the prompt
    line: int  # 0-based first line
    text: str
    score: float  # Jaccard similarity of the identifiers, 0..1


@dataclass(frozen=True)
class ContextItem:
    """What went in, for `ghostls/explain` (names and places only, never the text)."""

    source: str  # definition | similar | recent_edit
    name: str
    kind: str
    path: str
    line: int
    tokens: int


@dataclass(frozen=True)
class RepoContext:
    text: str
    format: str  # the family's repo format, "comment", or "none"
    items: tuple[ContextItem, ...] = ()
    tokens: int = 0
    candidates: int = 0  # definitions found for names near the cursor, before the budget cut
    dropped: int = 0  # candidates left out for the budget


EMPTY = RepoContext("", "none")


def identifiers_near(text: str, offset: int) -> list[str]:
    """Identifiers around the cursor, nearest first (those before the cursor, then those after)."""
    before = _IDENTIFIER.findall(text[max(0, offset - _NEAR_BEFORE) : offset])
    after = _IDENTIFIER.findall(text[offset : offset + _NEAR_AFTER])
    seen: dict[str, None] = {}
    for name in reversed(before):
        seen.setdefault(name, None)
    for name in after:
        seen.setdefault(name, None)
    return list(seen)


# Similar code: the identifiers of this many lines before the cursor are compared with every window of as many
# lines in the candidate files; the best window, if at least this alike, goes in with the lines after it.
# The threshold, from ghostls eval's 204 holes in four repositories: the holes whose best window scored 0.6 or
# more gained 3.4 edit-similarity points in all, those under it lost 0.3 (a window that only shares common
# words misleads the model as often as it helps).
SIMILAR_WINDOW = 10
SIMILAR_AFTER = 8
SIMILAR_MIN_SCORE = 0.6


def most_similar(snapshot: DocumentSnapshot, offset: int, candidates: list[tuple[str, str, list[frozenset[str]],
                 list[str]]]) -> SimilarCode | None:
    """The window of a candidate file (key, path, identifier sets per line, lines) most like the lines before the
    cursor, with the SIMILAR_AFTER lines after it; None when nothing is SIMILAR_MIN_SCORE alike."""
    start = snapshot.line_starts[snapshot.line_of(offset)]
    above = [line for line in snapshot.text[max(0, start - 4_000) : start].split("\n") if line.strip()]
    query = frozenset(_IDENTIFIER.findall("\n".join(above[-SIMILAR_WINDOW:])))
    if len(query) < 3:
        return None
    best: tuple[float, int, int] | None = None  # (score, candidate, first line)
    for index, (_key, _path, line_sets, _lines) in enumerate(candidates):
        for first in range(0, max(1, len(line_sets) - SIMILAR_WINDOW + 1)):
            window = frozenset().union(*line_sets[first : first + SIMILAR_WINDOW])
            if not window:
                continue
            score = len(query & window) / len(query | window)
            if best is None or score > best[0]:
                best = (score, index, first)
    if best is None or best[0] < SIMILAR_MIN_SCORE:
        return None
    score, index, first = best
    key, path, _sets, lines = candidates[index]
    text = "\n".join(lines[first : first + SIMILAR_WINDOW + SIMILAR_AFTER]).strip("\n")
    return SimilarCode(key, path, first, text, round(score, 3))


def _fit_similar(similar: SimilarCode, budget: int, count_tokens: Callable[[str], int]) -> SimilarCode | None:
    """The similar code cut from its top until it fits `budget` tokens: the lines that matched the cursor's last
    lines, and what followed them, are what the model copies from. None when not even three lines fit."""
    lines = similar.text.split("\n")
    dropped = 0
    while len(lines) - dropped >= 3 and count_tokens("\n".join(lines[dropped:])) + 4 > budget:
        dropped += 1
    if len(lines) - dropped < 3:
        return None
    return dataclasses.replace(similar, line=similar.line + dropped, text="\n".join(lines[dropped:]))


def identifier_sets(text: str) -> tuple[list[frozenset[str]], list[str]]:
    """A candidate file for `most_similar`: each line's identifiers, and the lines."""
    lines = text.split("\n")
    return [frozenset(_IDENTIFIER.findall(line)) for line in lines], lines


def build_repo_context(
    snapshot: DocumentSnapshot,
    offset: int,
    lookup: Callable[[str], tuple[Definition, ...]],
    recent: list[RecentEdit],
    family: str,
    count_tokens: Callable[[str], int],
    budget: int,
    root: str | None = None,
    similar: SimilarCode | None = None,
) -> RepoContext:
    """The context block (may be "") and a record of what is in it."""
    if budget <= 0:
        return EMPTY
    own = document_key(snapshot.uri)
    # The similar code is what the model can most directly copy from: it is taken first, up to half the budget.
    similar = _fit_similar(similar, budget // 2, count_tokens) if similar is not None and similar.key != own else None
    similar_tokens = count_tokens(similar.text) + 4 if similar is not None else 0
    budget -= similar_tokens
    imports = _import_text(snapshot)

    # 1. Rank: names nearest the cursor first; a definition in a file the current file imports wins ties.
    ranked: list[Definition] = []
    seen: set[tuple[str, int]] = set()
    for name in identifiers_near(snapshot.text, offset):
        definitions = [d for d in lookup(name) if d.key != own]
        if not definitions or len(definitions) > _MAX_DEFINITIONS_PER_NAME:
            continue
        definitions.sort(key=lambda d: (_stem(d.key) not in imports, d.key, d.line))
        for definition in definitions[:1]:
            if (definition.key, definition.line) not in seen:
                seen.add((definition.key, definition.line))
                ranked.append(definition)
        if len(ranked) >= 4 * MAX_DEFINITIONS:
            break
    # A method inside a class that is itself chosen is already in the class's snippet.
    candidates = len(ranked)

    # 2. Take by rank until the budget is spent (recent edits get what definitions leave, up to a quarter).
    chosen: list[tuple[Definition, int]] = []
    spent = 0
    definition_budget = budget - min(budget // 4, _recent_need(recent, count_tokens)) if recent else budget
    for definition in ranked:
        if len(chosen) >= MAX_DEFINITIONS:
            break
        tokens = count_tokens(definition.snippet) + 4
        if spent + tokens <= definition_budget:
            chosen.append((definition, tokens))
            spent += tokens
    edits: list[tuple[RecentEdit, int]] = []
    for edit in recent:
        if edit.key == own:
            continue
        tokens = count_tokens(edit.text) + 4
        if spent + tokens <= budget:
            edits.append((edit, tokens))
            spent += tokens

    if not chosen and not edits and similar is None:
        return RepoContext("", "none", candidates=candidates, dropped=candidates)

    # 3. Order for the KV cache: definitions by (file, line), so the block does not reshuffle as the cursor
    #    moves; recent edits, which change on every keystroke elsewhere, last.
    chosen.sort(key=lambda item: (item[0].key, item[0].line))
    files: dict[str, list[str]] = {}
    items: list[ContextItem] = []
    for definition, tokens in chosen:
        path = _display(definition.key, root)
        files.setdefault(path, []).append(definition.snippet)
        items.append(ContextItem("definition", definition.name, definition.kind, path, definition.line, tokens))
    if similar is not None:
        files.setdefault(similar.path, []).append(similar.text)
        items.append(ContextItem("similar", "", "code", similar.path, similar.line, similar_tokens))
    for edit, tokens in edits:
        files.setdefault(edit.path, []).append(edit.text)
        items.append(ContextItem("recent_edit", "", "edit", edit.path, edit.line, tokens))

    text, kind = _render(files, snapshot, family, root)
    if not text:
        return RepoContext("", "none", candidates=candidates, dropped=candidates)
    return RepoContext(text, kind, tuple(items), spent + similar_tokens, candidates, candidates - len(chosen))


def _render(files: dict[str, list[str]], snapshot: DocumentSnapshot, family: str, root: str | None) -> tuple[str, str]:
    layout = REPO_FORMATS.get(family)
    if layout is not None:
        repo = os.path.basename(root.rstrip("/")) if root else "workspace"
        out = [layout["repo"].format(repo=repo)]
        out += [layout["file"].format(path=path, text="\n\n".join(texts)) for path, texts in files.items()]
        out.append(layout["current"].format(path=_display(document_key(snapshot.uri), root)))
        return "".join(out), family
    block = _comment_block(files, snapshot.language)
    return block, "comment" if block else "none"


def _comment_block(files: dict[str, list[str]], rules: LanguageRules) -> str:
    """The snippets as comments in the current file's own syntax, so the model reads them as notes, not code."""
    lines = []
    for path, texts in files.items():
        lines.append(f"Code from {path}:")
        for text in texts:
            lines.extend(text.splitlines())
            lines.append("")
    if rules.line_comment:
        mark = rules.line_comment
        return "".join(f"{mark} {line}".rstrip() + "\n" for line in lines)
    if rules.block_comment:
        opener, closer = rules.block_comment
        body = "\n".join(line.replace(closer, "") for line in lines)
        return f"{opener}\n{body}\n{closer}\n"
    return ""


def _recent_need(recent: list[RecentEdit], count_tokens: Callable[[str], int]) -> int:
    return sum(len(edit.text) // 3 for edit in recent)


def _import_text(snapshot: DocumentSnapshot) -> str:
    tree = snapshot.tree
    if tree is None:
        return ""
    parts = []
    for node in tree.root_node.children[:200]:
        if node.type in snapshot.language.import_nodes:
            parts.append(snapshot.source[node.start_byte : node.end_byte].decode("utf-8", "replace"))
    return "\n".join(parts)


def _stem(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    return name.split(".", 1)[0]


def _display(key: str, root: str | None) -> str:
    if root and os.path.isabs(key):
        rel = os.path.relpath(key, root)
        if not rel.startswith(".."):
            return rel.replace(os.sep, "/")
    return key.rsplit("/", 1)[-1]
