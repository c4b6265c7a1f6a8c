"""Per-language rules, loaded once from languages.toml, and the tree-sitter parsers they name.

Owns the mapping from an LSP languageId or a file extension to LanguageRules. Must never raise for an
unknown language (that is plain text) and never branch on a language name: knowledge lives in the TOML.
"""

from __future__ import annotations

import functools
import importlib
import logging
import tomllib
from dataclasses import dataclass
from importlib import resources

import tree_sitter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LanguageRules:
    name: str
    language_ids: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()
    grammar: str | None = None  # "module:function"; None = plain text, no tree
    line_comment: str | None = None
    block_comment: tuple[str, str] | None = None
    indent_blocks: bool = False
    block_openers: tuple[str, ...] = ()
    block_closers: tuple[str, ...] = ()
    indent_unit: str = "    "
    string_nodes: frozenset[str] = frozenset()
    comment_nodes: frozenset[str] = frozenset()
    import_nodes: frozenset[str] = frozenset()
    scope_nodes: frozenset[str] = frozenset()
    argument_nodes: frozenset[str] = frozenset()
    block_nodes: frozenset[str] = frozenset()


PLAINTEXT = LanguageRules(name="plaintext", language_ids=("plaintext",), extensions=(".txt",))


def _rules_from_table(name: str, table: dict) -> LanguageRules:
    block = table.get("block_comment") or None
    return LanguageRules(
        name=name,
        language_ids=tuple(table.get("language_ids", [name])),
        extensions=tuple(table.get("extensions", [])),
        grammar=table.get("grammar") or None,
        line_comment=table.get("line_comment") or None,
        block_comment=(block[0], block[1]) if block else None,
        indent_blocks=bool(table.get("indent_blocks", False)),
        block_openers=tuple(table.get("block_openers", [])),
        block_closers=tuple(table.get("block_closers", [])),
        indent_unit=table.get("indent_unit", "    "),
        string_nodes=frozenset(table.get("string_nodes", [])),
        comment_nodes=frozenset(table.get("comment_nodes", [])),
        import_nodes=frozenset(table.get("import_nodes", [])),
        scope_nodes=frozenset(table.get("scope_nodes", [])),
        argument_nodes=frozenset(table.get("argument_nodes", [])),
        block_nodes=frozenset(table.get("block_nodes", [])),
    )


@functools.cache
def all_rules() -> dict[str, LanguageRules]:
    """Every language in languages.toml, by table name; read once per process."""
    data = resources.files(__package__).joinpath("languages.toml").read_text(encoding="utf-8")
    return {name: _rules_from_table(name, table) for name, table in tomllib.loads(data).items()}


@functools.cache
def _indexes() -> tuple[dict[str, LanguageRules], dict[str, LanguageRules]]:
    by_id: dict[str, LanguageRules] = {}
    by_ext: dict[str, LanguageRules] = {}
    for rules in all_rules().values():
        for language_id in rules.language_ids:
            by_id.setdefault(language_id.lower(), rules)
        for ext in rules.extensions:
            by_ext.setdefault(ext.lower(), rules)
    return by_id, by_ext


def rules_for(language_id: str | None, uri: str | None = None) -> LanguageRules:
    """Rules for an LSP languageId, else for the uri's extension, else plain text."""
    by_id, by_ext = _indexes()
    if language_id and (rules := by_id.get(language_id.lower())):
        return rules
    if uri:
        # Only the last path segment; a query or fragment is not part of the file name.
        name = uri.split("?", 1)[0].split("#", 1)[0].rsplit("/", 1)[-1].lower()
        dot = name.rfind(".")
        if dot > 0 and (rules := by_ext.get(name[dot:])):
            return rules
    return PLAINTEXT


@functools.cache
def tree_sitter_language(grammar: str) -> tree_sitter.Language | None:
    """The tree-sitter Language of a grammar spec ("module" or "module:function"), or None if it cannot load."""
    # Cached per grammar (including failures) so a broken grammar package warns once, not per keystroke.
    module_name, _, function_name = grammar.partition(":")
    try:
        module = importlib.import_module(module_name)
        return tree_sitter.Language(getattr(module, function_name or "language")())
    except Exception as exc:  # an ABI mismatch surfaces as ValueError, a missing package as ImportError
        log.warning("tree-sitter grammar %s unavailable, falling back to plain text: %s", grammar, exc)
        return None


def parser_for(rules: LanguageRules) -> tree_sitter.Parser | None:
    """A new Parser for the language (parsers are not thread-safe, so each Document owns one)."""
    if rules.grammar is None:
        return None
    language = tree_sitter_language(rules.grammar)
    return tree_sitter.Parser(language) if language is not None else None
