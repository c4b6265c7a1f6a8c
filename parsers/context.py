"""Context the prefix window lost: import statements and the header lines of the scopes around the cursor.

A pure function of a snapshot and offsets, read from the tree with node types listed in languages.toml.
Must never raise on broken code and never return more than a few lines.
"""

from __future__ import annotations

import tree_sitter

from .document import DocumentSnapshot

MAX_IMPORT_LINES = 20
MAX_SCOPE_LINES = 8


def gather_context(
    snapshot: DocumentSnapshot,
    offset: int,
    prefix_start: int,
    *,
    max_import_lines: int = MAX_IMPORT_LINES,
    max_scope_lines: int = MAX_SCOPE_LINES,
) -> str:
    """Imports and enclosing scope headers that start above prefix_start, as lines of source ("" if none)."""
    tree, rules = snapshot.tree, snapshot.language
    if tree is None or prefix_start <= 0:
        return ""
    offset = max(0, min(offset, len(snapshot.text)))
    prefix_start = min(prefix_start, offset)
    limit = snapshot.byte_offset(prefix_start)
    source = snapshot.source

    lines: list[str] = []
    for node in _imports(tree.root_node, rules.import_nodes, limit):
        # Whole lines of the statement, but never those already inside the window.
        if node.end_byte <= limit:
            text = _lines_of(source, node.start_byte, node.end_byte)
        else:
            text = source[source.rfind(b"\n", 0, node.start_byte) + 1 : limit].decode("utf-8", "replace")
        lines.extend(text.splitlines())
        if len(lines) >= max_import_lines:
            break
    lines = lines[:max_import_lines]

    headers = [
        _lines_of(source, node.start_byte, node.start_byte).rstrip("\r\n")
        for node in _enclosing_scopes(snapshot, offset, rules.scope_nodes)
        if node.start_byte < limit
    ]
    # The innermost scopes matter most when there are too many.
    lines.extend(headers[-max_scope_lines:])
    return "".join(line + "\n" for line in lines if line.strip())


def _imports(root: tree_sitter.Node, types: frozenset[str], limit: int):
    # Imports live at the top level (or one level down, inside a namespace/package); don't walk the whole tree.
    for node in root.children:
        if node.start_byte >= limit:
            return
        if node.type in types:
            yield node
        elif node.child_count:
            for child in node.children:
                if child.start_byte >= limit:
                    break
                if child.type in types:
                    yield child


def _enclosing_scopes(snapshot: DocumentSnapshot, offset: int, types: frozenset[str]) -> list[tree_sitter.Node]:
    """Scope nodes around the cursor, outermost first."""
    # Anchor on the last non-blank character before the cursor: on an empty line at the end of a Python
    # body the cursor itself lies outside every node, but the code just above it is in the right scope.
    text = snapshot.text
    anchor = offset
    floor = max(0, offset - 10_000)
    while anchor > floor and text[anchor - 1].isspace():
        anchor -= 1
    byte = snapshot.byte_offset(max(anchor - 1, 0))
    node = snapshot.tree.root_node.descendant_for_byte_range(byte, byte)
    scopes = []
    while node is not None:
        if node.type in types:
            scopes.append(node)
        node = node.parent
    scopes.reverse()
    return scopes


def _lines_of(source: bytes, start: int, end: int) -> str:
    """The full source lines covering bytes [start, end], decoded."""
    line_start = source.rfind(b"\n", 0, start) + 1
    line_end = source.find(b"\n", end)
    if line_end == -1:
        line_end = len(source)
    return source[line_start:line_end].decode("utf-8", "replace")
