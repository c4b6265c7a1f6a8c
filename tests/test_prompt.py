"""Prompt building as a pure function: budget split, line-boundary cuts, prefix-only templates, huge files."""

import time
from dataclasses import dataclass

from ghostls.parsers.document import DocumentSnapshot
from ghostls.parsers.languages import rules_for
from ghostls.parsers.prompt import Prompt, build_prompt


@dataclass(frozen=True)
class Fim:
    uses_suffix: bool = True

    def render(self, prefix: str, suffix: str, context: str) -> str:
        if not self.uses_suffix:
            return context + prefix
        return f"<PRE>{context}{prefix}<SUF>{suffix}<MID>"


class Counter:
    """A stand-in tokenizer: one token per 4 utf-8 bytes, counting its own calls."""

    def __init__(self):
        self.calls = 0
        self.chars = 0

    def __call__(self, text: str) -> int:
        self.calls += 1
        self.chars += len(text)
        return (len(text.encode("utf-8")) + 3) // 4


def snap(text: str, language: str = "python") -> DocumentSnapshot:
    return DocumentSnapshot("file:///t", rules_for(language), 1, text)


def at_cursor(marked: str) -> tuple[DocumentSnapshot, int]:
    offset = marked.index("|")
    return snap(marked[:offset] + marked[offset + 1 :]), offset


def numbered(n: int) -> str:
    return "".join(f"line {i:04d}\n" for i in range(n))  # 10 chars, 3 tokens per line


def test_small_document_goes_in_whole():
    doc, offset = at_cursor("def add(a, b):\n    return a +| b\n")
    prompt = build_prompt(doc, offset, Fim(), Counter())
    assert prompt == Prompt(
        text="<PRE>def add(a, b):\n    return a +<SUF> b\n<MID>",
        prefix="def add(a, b):\n    return a +",
        suffix=" b\n",
        context="",
        prefix_truncated=False,
        suffix_truncated=False,
    )


def test_budget_split_and_line_boundaries():
    text = numbered(400)
    offset = text.index("line 0200") + 5
    count = Counter()
    prompt = build_prompt(snap(text), offset, Fim(), count, budget=100, suffix_share=0.25)
    assert prompt.prefix_truncated and prompt.suffix_truncated
    assert prompt.prefix.endswith("\nline ") and prompt.prefix.startswith("line ")  # cut at a line start
    assert prompt.suffix.startswith("0200\n") and prompt.suffix.endswith("\n")  # cut after a line break
    suffix_tokens, prefix_tokens = Counter()(prompt.suffix), Counter()(prompt.prefix)
    assert suffix_tokens <= 25 and prefix_tokens + suffix_tokens <= 100
    assert prefix_tokens >= 60  # the budget is used, not wasted
    assert count.calls <= 12


def test_unused_suffix_budget_goes_to_prefix():
    text = numbered(400)
    offset = len(text) - 3
    prompt = build_prompt(snap(text), offset, Fim(), Counter(), budget=100, suffix_share=0.5)
    assert prompt.suffix == "99\n" and not prompt.suffix_truncated
    assert Counter()(prompt.prefix) > 80


def test_prefix_only_template_spends_everything_on_prefix():
    text = numbered(400)
    offset = text.index("line 0300")
    prompt = build_prompt(snap(text), offset, Fim(uses_suffix=False), Counter(), budget=100)
    assert prompt.suffix == "" and not prompt.suffix_truncated
    assert prompt.text == prompt.prefix and prompt.prefix.endswith("line 0299\n")
    assert 85 <= Counter()(prompt.prefix) <= 100


def test_cursor_line_is_kept_whole_even_at_tiny_budget():
    doc, offset = at_cursor("x = 1\nresult = compute(alpha, beta)|\n")
    prompt = build_prompt(doc, offset, Fim(), Counter(), budget=6)
    assert prompt.prefix == "result = compute(alpha, beta)"
    assert prompt.prefix_truncated


def test_context_is_first_counted_and_trimmed_from_its_top():
    text = numbered(400)
    offset = text.index("line 0200")
    context = "import os\n" + "".join(f"class Scope{i}:\n" for i in range(40))
    prompt = build_prompt(snap(text), offset, Fim(), Counter(), budget=100, context=context)
    assert prompt.text.startswith("<PRE>" + prompt.context)
    assert prompt.context.endswith("class Scope39:\n") and not prompt.context.startswith("import")
    assert Counter()(prompt.context) <= 50
    total = sum(Counter()(part) for part in (prompt.context, prompt.prefix, prompt.suffix))
    assert total <= 100


def test_twenty_megabyte_document_is_fast_and_bounded():
    text = "line 0001\n" * 2_000_000  # 20 MB
    offset = len(text) // 2 + 3
    count = Counter()
    started = time.perf_counter()
    prompt = build_prompt(snap_fast(text), offset, Fim(), count, budget=1500)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.05  # a few ms in practice; generous for slow CI
    assert count.calls <= 12 and count.chars < 100_000
    assert len(prompt.text) < 10_000 and prompt.prefix_truncated and prompt.suffix_truncated


def test_minified_single_line_is_cut_by_characters():
    text = "var a=1;" * 1_000_000  # one 8 MB line
    prompt = build_prompt(snap_fast(text), len(text) // 2, Fim(), Counter(), budget=200)
    assert 0 < Counter()(prompt.prefix) <= 200 and prompt.suffix == ""


def test_unicode_lines_cut_whole():
    text = "".join(f"s{i} = '😀漢字'\n" for i in range(300))
    offset = text.index("s150 ")
    prompt = build_prompt(snap(text), offset, Fim(), Counter(), budget=120)
    assert prompt.prefix.startswith("s") and prompt.prefix.endswith("'😀漢字'\n")
    assert prompt.suffix.startswith("s150 = '😀漢字'\n") and prompt.suffix.endswith("\n")
    assert Counter()(prompt.prefix) + Counter()(prompt.suffix) <= 120


def test_crlf_suffix_is_not_split():
    text = "a = 1\r\n" * 100
    prompt = build_prompt(snap(text), 350, Fim(), Counter(), budget=40)
    assert prompt.suffix.endswith("\r\n")


def snap_fast(text: str) -> DocumentSnapshot:
    # A plain-text snapshot with a trivial line index: the prompt builder must not need a full one.
    return DocumentSnapshot("file:///big", rules_for(None), 1, text, None, [0])


# Context the prefix window lost ------------------------------------------------------------------------------

from ghostls.parsers.context import gather_context  # noqa: E402
from ghostls.parsers.document import Document  # noqa: E402

PY_SOURCE = (
    "import os\n"
    "from typing import Any\n"
    "\n"
    "class Foo(Base):\n"
    "    '''A foo.'''\n"
    "\n"
    "    def run(self, x: Any) -> int:\n"
    + "".join(f"        v{i} = {i}\n" for i in range(50))
    + "        return |\n"
)


def parsed(language: str, marked: str, uri: str):
    offset = marked.index("|")
    return Document(uri, language, 1, marked[:offset] + marked[offset + 1 :]).snapshot(), offset


def test_context_lists_imports_and_enclosing_headers_above_the_window():
    snapshot, offset = parsed("python", PY_SOURCE, "file:///f.py")
    prefix_start = snapshot.text.index("        v40")
    assert gather_context(snapshot, offset, prefix_start) == (
        "import os\nfrom typing import Any\nclass Foo(Base):\n    def run(self, x: Any) -> int:\n"
    )
    # Headers inside the window are not repeated; imports above it still are.
    inside = snapshot.text.index("    def run")
    assert gather_context(snapshot, offset, inside) == "import os\nfrom typing import Any\nclass Foo(Base):\n"


def test_context_is_empty_when_the_window_reaches_the_top_or_there_is_no_tree():
    snapshot, offset = parsed("python", PY_SOURCE, "file:///f.py")
    assert gather_context(snapshot, offset, 0) == ""
    plain = DocumentSnapshot("file:///f.txt", rules_for(None), 1, snapshot.text)
    assert gather_context(plain, offset, 100) == ""


def test_context_for_go_method_and_build_into_prompt():
    source = (
        'package main\n\nimport (\n\t"fmt"\n\t"os"\n)\n\nfunc (s *S) Run() error {\n'
        + "".join(f"\tx{i} := {i}\n" for i in range(40))
        + "\t|\n}\n"
    )
    snapshot, offset = parsed("go", source, "file:///m.go")
    prefix_start = snapshot.text.index("\tx30")
    context = gather_context(snapshot, offset, prefix_start)
    assert context == 'package main\nimport (\n\t"fmt"\n\t"os"\n)\nfunc (s *S) Run() error {\n'
    prompt = build_prompt(snapshot, offset, Fim(), Counter(), budget=60, context=context)
    assert prompt.text.startswith("<PRE>package main\n") and prompt.prefix_truncated


def test_context_caps_lines_and_survives_broken_code():
    imports = "".join(f"import m{i}\n" for i in range(50))
    snapshot, offset = parsed("python", imports + "def f(:\n    x = (\n    |", "file:///b.py")
    context = gather_context(snapshot, offset, len(imports))
    assert context.count("\n") <= 20 + 8 and context.startswith("import m0\n")


def test_indentation_before_the_cursor_stays_and_extra_spaces_are_dropped():
    snapshot, offset = at_cursor("def f():\n    |\n")
    prompt = build_prompt(snapshot, offset, Fim(), Counter())
    assert prompt.text == "<PRE>def f():\n    <SUF>\n<MID>"
    assert prompt.at_indent and prompt.healed == ""
    assert prompt.heal(" return 1") == "return 1"
    assert prompt.heal("return 1\n    x") == "return 1\n    x"


def test_a_prefix_only_prompt_at_indentation_ends_one_space_short():
    # "\n   " + " return" is how the tokenizer splits an indented line: ending the prompt after all four
    # spaces made the model write five on every line.
    snapshot, offset = at_cursor("def f():\n    |\n")
    prompt = build_prompt(snapshot, offset, Fim(uses_suffix=False), Counter())
    assert prompt.text == "def f():\n   "
    assert prompt.at_indent and prompt.healed == " "
    assert prompt.heal(" return 1\n    x") == "return 1\n    x"
    assert prompt.heal("  return 1") == "return 1"  # deeper: the cursor's indentation stands
    snapshot, offset = at_cursor("def f():\n\t|\n")
    assert build_prompt(snapshot, offset, Fim(uses_suffix=False), Counter()).text == "def f():\n\t"


def test_a_block_begun_one_level_deeper_than_the_cursor_keeps_its_shape_at_the_cursor():
    # SmolLM2's tokenizer folds "\n\t" into one token: after a Go prompt ending on it the model writes one
    # more tab before every line of the body (seen in `ghostls eval` on cobra: every multi-line body a tab deep).
    snapshot, offset = at_cursor("func f(e error) {\n\t|\n}\n")
    prompt = build_prompt(snapshot, offset, Fim(uses_suffix=False), Counter())
    assert prompt.at_indent and prompt.healed == ""
    assert prompt.heal("\tif e != nil {\n\t\t\tpanic(e)\n\t\t}") == "if e != nil {\n\t\tpanic(e)\n\t}"
    # From the first line that is not that deep, the model left its block: that line and the rest stand.
    assert prompt.heal("\tif e != nil {\n\t\t\tpanic(e)\n\t\t}\n\t\treturn e\n}") == \
        "if e != nil {\n\t\tpanic(e)\n\t}\n\treturn e\n}"
    assert prompt.heal("\t// check\n\treturn e") == "// check\n\treturn e"
    # Spaces, past the one the prompt left out: the same.
    snapshot, offset = at_cursor("def f(x):\n    |\n")
    prompt = build_prompt(snapshot, offset, Fim(uses_suffix=False), Counter())
    assert prompt.heal("     if x:\n            y()\n\n        z()") == "if x:\n        y()\n\n    z()"
    assert prompt.heal(" if x:\n        y()") == "if x:\n        y()"


def test_space_after_an_operator_is_healed_too():
    snapshot, offset = at_cursor("x = |")
    prompt = build_prompt(snapshot, offset, Fim(uses_suffix=False), Counter())
    assert prompt.text == "x ="
    assert not prompt.at_indent
    assert prompt.heal(" 42") == "42"


def test_no_trailing_whitespace_means_no_healing():
    snapshot, offset = at_cursor("print(|)")
    prompt = build_prompt(snapshot, offset, Fim(), Counter())
    assert prompt.healed == ""
    assert prompt.heal(" x") == " x"


def test_anchored_window_keeps_its_start_while_the_user_types():
    """Typing in a file longer than the budget: without an anchor the window start moves down with almost
    every line (a new prompt from its first token: no KV reuse); with one it stays for many lines."""
    lines = numbered(400)
    offset = lines.index("line 0300")
    text = lines[:offset]
    typed = "".join(f"value_{i} = {i}\n" for i in range(40))  # 40 new lines, typed one character at a time

    def starts(use_anchor: bool) -> list[int]:
        anchor, seen = None, []
        for i in range(0, len(typed) + 1, 3):
            doc = text + typed[:i] + lines[offset:]
            prompt = build_prompt(snap(doc), offset + i, Fim(uses_suffix=False), Counter(), budget=200,
                                  anchor=anchor if use_anchor else None)
            assert Counter()(prompt.prefix) <= 200 * 1.15  # a kept window may run over by _ANCHOR_SLACK
            start = offset + i - len(prompt.prefix)
            seen.append(start)
            anchor = start
        return seen

    moves = lambda seen: sum(a != b for a, b in zip(seen, seen[1:]))  # noqa: E731
    assert moves(starts(False)) >= 30
    with_anchor = starts(True)
    assert moves(with_anchor) <= 4
    assert with_anchor[1] == with_anchor[0]  # the first window, filled whole, survives the next keystrokes


def test_an_anchor_that_no_longer_fits_or_is_not_a_line_start_is_replaced():
    text = numbered(400)
    offset = text.index("line 0300")
    first = build_prompt(snap(text), offset, Fim(uses_suffix=False), Counter(), budget=100)
    anchor = offset - len(first.prefix)
    # Far below: the old start would overflow the budget; the new window leaves room to grow.
    later = text.index("line 0390")
    moved = build_prompt(snap(text), later, Fim(uses_suffix=False), Counter(), budget=100, anchor=anchor)
    assert later - len(moved.prefix) > anchor and 60 <= Counter()(moved.prefix) <= 80
    # Mid-line anchors (an edit above shifted the text) are not used.
    odd = build_prompt(snap(text), offset, Fim(uses_suffix=False), Counter(), budget=100, anchor=anchor + 3)
    assert offset - len(odd.prefix) != anchor + 3
