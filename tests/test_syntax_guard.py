"""The syntax guard: a completion whose merge adds tree-sitter ERROR/MISSING nodes is cut or rejected (real parses)."""

from __future__ import annotations

import pytest

from ghostls.parsers.document import Document
from ghostls.parsers.languages import all_rules
from ghostls.parsers.postprocess import Completion, syntax_guard

# A small valid file per language, with the cursor at "|" on a line of its own at top level.
FILES = {
    "python": "import os\n|\nx = 1\n",
    "javascript": "const a = 1;\n|\nlet b = 2;\n",
    "typescript": "const a: number = 1;\n|\nlet b = 2;\n",
    "tsx": "const a = 1;\n|\nlet b = 2;\n",
    "go": "package main\n\n|\nfunc main() {}\n",
    "rust": "fn a() {}\n|\nfn b() {}\n",
    "java": "class A {\n|\n}\n",
    "c": "int a;\n|\nint b;\n",
    "cpp": "int a;\n|\nint b;\n",
    "csharp": "class A {\n|\n}\n",
    "ruby": "a = 1\n|\nb = 2\n",
    "php": "<?php\n$a = 1;\n|\n$b = 2;\n",
    "lua": "local a = 1\n|\nlocal b = 2\n",
    "bash": "a=1\n|\nb=2\n",
}


def _guard(language: str, source: str, text: str) -> Completion:
    offset = source.index("|")
    document = Document(f"file:///t/{language}", language, 1, source.replace("|", "", 1))
    return syntax_guard(document.snapshot(), offset, Completion(text, "complete"))


def test_every_language_is_covered():
    assert set(FILES) == set(all_rules())


@pytest.mark.parametrize("language", sorted(FILES))
def test_garbage_is_rejected_and_a_comment_kept(language):
    rules = all_rules()[language]
    assert _guard(language, FILES[language], ")]} ((").text == ""
    assert "adds syntax errors" in _guard(language, FILES[language], ")]} ((").reason
    comment = f"{rules.line_comment} a note" if rules.line_comment else f"{rules.block_comment[0]} a note {rules.block_comment[1]}"
    assert _guard(language, FILES[language], comment) == Completion(comment, "complete")


def test_a_multi_line_body_is_cut_before_its_broken_line():
    source = "def total(items):\n    |\n"
    got = _guard("python", source, "result = 0\n    for item in items:\n        result += item\n    ]] )")
    assert got.text == "result = 0\n    for item in items:\n        result += item"
    assert "cut to 3 line(s)" in got.reason


def test_an_opener_on_the_last_line_may_stay_open():
    assert _guard("python", "def f(x):\n    |\n    return x\n", "if x > 0:").text == "if x > 0:"
    got = _guard("javascript", "function f(x) {\n  |\n}\n", "if (x > 0) {")
    assert got.text == "if (x > 0) {"
    assert "open block" in got.reason


def test_a_body_broken_after_a_line_that_opens_is_cut_to_that_line_as_a_last_resort():
    # The whole answer breaks, and no clean head is left: rejected, so that the completer tries other starts;
    # the rejection carries the head that ends opening a block or a bracket, shown when those break too.
    source = "package main\n\nfunc f() []string {\n\t|\n}\n"
    body = 'comps := []string{\n\t\t"first",\n\t\t"second" "third"\n\t)}'
    assert _guard("go", source, body).text == ""
    offset = source.index("|")
    snapshot = Document("file:///t/go", "go", 1, source.replace("|", "", 1)).snapshot()
    got = syntax_guard(snapshot, offset, Completion(body, "complete")).open_head
    assert got.text == "comps := []string{" and "cut to 1 line(s), the last one open" in got.reason
    source = "function f(x) {\n  |\n}\n"
    snapshot = Document("file:///t/javascript", "javascript", 1, source.replace("|", "", 1)).snapshot()
    body = "if (x > 0) {\n    ]] (\n  }"
    got = syntax_guard(snapshot, source.index("|"), Completion(body, "complete")).open_head
    assert got.text == "if (x > 0) {" and "cut to 1 line(s), the last one open" in got.reason
    # A clean head comes first: no rejection, so no last resort is needed.
    clean = syntax_guard(snapshot, source.index("|"), Completion("x += 1;\n  if (x > 0) {\n    ]] (\n  }", "complete"))
    assert (clean.text, clean.open_head) == ("x += 1;", None)


def test_existing_errors_do_not_count_against_the_completion():
    # The document is already broken above the cursor; a clean completion keeps it no worse.
    got = _guard("python", "def broken(:\n    pass\n\nvalue = |\n", "compute(1, 2)")
    assert got == Completion("compute(1, 2)", "complete")


def test_completing_an_open_call_is_accepted_and_unbalancing_it_is_not():
    source = "result = compute(|)\n"
    assert _guard("python", source, "1, 2").text == "1, 2"
    # One ")" too many against the suffix's own: cut back to where it balances.
    assert _guard("python", source, "1, 2))").text == "1, 2"


def _finalize(language: str, source: str, generated: str, skip=frozenset()):
    from ghostls.parsers.postprocess import decide_mode, finalize

    offset = source.index("|")
    snapshot = Document(f"file:///t/{language}", language, 1, source.replace("|", "", 1)).snapshot()
    return finalize(snapshot, offset, decide_mode(snapshot, offset), generated, skip=skip)


def test_indentation_follows_the_block_style():
    # A Go file indents with tabs; the model wrote spaces.
    got = _finalize("go", "package main\n\nfunc f(x int) int {\n\t|\n}\n", "if x > 0 {\n        return x\n    }\n\treturn 0")
    assert got.text == "if x > 0 {\n\t\treturn x\n\t}\n\treturn 0"
    assert "indentation fixed" in got.reason
    kept = _finalize("go", "package main\n\nfunc f(x int) int {\n\t|\n}\n", "if x > 0 {\n        return x\n    }",
                     skip=frozenset({"indent"}))
    assert kept.text == "if x > 0 {\n        return x\n    }"


def test_skipping_the_block_rule_keeps_lines_past_the_block():
    source = "def f(x):\n    |\n\nprint(1)\n"
    generated = "return x\n\ndef g():\n    pass"
    assert _finalize("python", source, generated).text == "return x"
    assert _finalize("python", source, generated, skip=frozenset({"block"})).text == generated


def test_block_continues_below():
    from ghostls.parsers.postprocess import block_continues_below, decide_mode

    def check(source: str) -> bool:
        offset = source.index("|")
        snapshot = Document("file:///t/a.py", "python", 1, source.replace("|", "", 1)).snapshot()
        return block_continues_below(snapshot, offset, decide_mode(snapshot, offset))

    assert check("def f(x):\n    y = 1\n    |\n    return y\n")  # code goes on below: between lines
    assert not check("def f(x):\n    y = 1\n    |\n\nprint(f(1))\n")  # the block ends here
    assert not check("def f(x):\n    |\n")  # nothing below
    assert not check("def f(x):\n    y = |\n    return y\n")  # not a blank line


def test_a_line_cut_short_is_closed_or_cut_back_before_it_is_given_up():
    # Cut off by the token limit inside a call: closing it is enough.
    got = _guard("python", "import os\n|\nx = 1\n", "path = os.path.join(root, 'conf")
    assert got.text == "path = os.path.join(root, 'conf')"
    assert "closed the last line" in got.reason
    # Ran on into something that cannot be closed: cut back to where it still parses.
    got = _guard("python", "import os\n|\nx = 1\n", "value = compute(1) if")
    assert got.text == "value = compute(1)"
    assert "cut back the last line" in got.reason
    # The lines above are kept; only the last one is repaired.
    got = _guard("python", "def f(items):\n    |\n", "total = 0\n    for item in items:\n        total += weight(item")
    assert got.text == "total = 0\n    for item in items:\n        total += weight(item)"


@pytest.mark.parametrize("language, source, text", [
    ("python", "import os\n|\n\nx = 1\n", "def bench_precision_with_context("),
    ("python", "import os\n|\n", "class Loader("),
    ("typescript", "function f(ready: boolean) {\n  |\n}\n", "if (ready && check("),
])
def test_a_single_line_that_opens_a_bracket_last_is_kept(language, source, text):
    # The head of a def or a condition whose rest the user writes next (closing the bracket would not make it
    # valid): shown, not dropped as "adds syntax errors".
    got = _guard(language, source, text)
    assert got.text == text and "open bracket" in got.reason


@pytest.mark.parametrize("text", ["x = f(a))(", ")]} ((", "print('unclosed(", "(", "a = 1\nb = f("])
def test_a_bracket_at_the_end_does_not_excuse_other_damage(text):
    got = _guard("python", "import os\n|\nx = 1\n", text)
    assert "open bracket" not in got.reason


def test_a_call_left_open_is_still_closed_rather_than_kept_open():
    assert _guard("python", "def f():\n    |\n", "rows = [").text == "rows = []"
