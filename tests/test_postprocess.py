"""Post-processing snapshots: a document with a `|` cursor, a raw model output, and the exact final text.

Every case parses the document with the real tree-sitter grammar, as the server does.
"""

import pytest

from ghostls.parsers.document import Document
from ghostls.parsers.postprocess import (Completion, CompletionMode, block_has_code_above, decide_mode, finalize,
                                         stop_check)

EXTENSIONS = {"python": "py", "typescript": "ts", "javascript": "js", "go": "go", "rust": "rs", "cpp": "cpp", "lua": "lua",
              "plaintext": "txt"}


def at_cursor(language: str, marked: str):
    offset = marked.index("|")
    text = marked[:offset] + marked[offset + 1 :]
    return Document(f"file:///t.{EXTENSIONS[language]}", language, 1, text).snapshot(), offset


# (language, document with | cursor, raw model output, expected final text)
CASES = [
    # Python: blocks end at dedent.
    ("python", "def f(x):|\n", "\n    return x + 1\n\ndef g():\n    pass\n", "\n    return x + 1"),
    ("python", "def f(x):\n    |\n\nprint(1)\n", "y = x * 2\n    return y\nprint(2)", "y = x * 2\n    return y"),
    ("python", "class A:\n    def f(self):|\n\n    def g(self):\n        pass\n",
     "\n        return 1\n\n    def g(self):\n        pass", "\n        return 1"),
    ("python", "def f(n):\n    if n:|\n", "\n        return 1\n    return 0\n", "\n        return 1"),
    ("python", "def f():\n  if x:|\n", "\n    y = 1\n  z = 2", "\n    y = 1"),  # 2-space file
    # Python: never re-type what is after the cursor.
    ("python", "print(|)\n", "'hello')", "'hello'"),
    ("python", 'print("|")\n', 'hello")', "hello"),
    ("python", "x = foo(a, |)\n", "b)", "b"),
    ("python", "x = foo(a, |)\n", "bar())", "bar()"),
    ("python", "x = foo(a, |)\n", "bar()", "bar()"),  # its ")" closes its own call: kept
    ("python", "def f(x):\n    |\n    return y\n", "\n    y = x + 1\n    return y", "y = x + 1"),
    ("python", "for i in range(10):\n    |\n    print(i)\n", "total += i\n    print(i)", "total += i"),
    ("python", "def f():\n    a = 1\n    |\n    b = 2\n    return b\n", "c = 3\n    b = 2\n    return b", "c = 3"),
    # Python: single-line cases.
    ("python", 'x = "abc|"\n', 'def"\ny = 2', "def"),
    ("python", "# compute |\n", "the sum\nfoo", "the sum"),
    ("python", "x = 1|\n", " + 2\ny = 3", " + 2"),
    ("python", "|\n", "\n\nimport os\nimport sys\n", "import os\nimport sys"),
    ("python", "x = 1|\n", "   \n", ""),
    # TypeScript.
    ("typescript", "function f(a: number) {|\n}\n", "\n  return a + 1;\n}\n\nfunction g() {}", "\n  return a + 1;"),
    ("typescript", "const x = [1, 2|];\n", ", 3];", ", 3"),
    ("typescript", "foo(function () {|});\n", "\n  return 1;\n});", "\n  return 1;"),
    ("typescript", "const o = {|};\n", "\n  a: 1,\n};", "\n  a: 1,"),
    ("typescript", "if (ok) {\n  |\n}\n", "run();\n} else {\n  stop();\n}", "run();"),
    ("typescript", 'log("x|");\n', 'yz");\nlog(2);', "yz"),
    # Go: blocks end at the closing brace; a missing brace is written once.
    ("go", "package main\n\nfunc main() {\n\t|\n}\n", 'fmt.Println("hi")\n\tx := 1\n}\n\nfunc other() {\n}',
     'fmt.Println("hi")\n\tx := 1'),
    ("go", "package main\n\nfunc main() {|\n", "\n\tfmt.Println(1)\n}\n\nfunc other() {}", "\n\tfmt.Println(1)\n}"),
    ("go", "package main\n\nfunc main() {\n\tif x {|\n\t}\n}\n", "\n\t\treturn\n\t}\n}", "\n\t\treturn"),
    ("go", "package main\n\nfunc main() {\n\tif x {|\n}\n", "\n\t\treturn\n\t}\n}", "\n\t\treturn\n\t}"),
    ("go", "package main\n\nfunc main() {\n\tfmt.Printf(\"%d\\n\", |)\n}\n", "n)\n}", "n"),
    # Rust.
    ("rust", "fn main() {\n    let v = vec![1, 2|];\n}\n", ", 3];", ", 3"),
    ("rust", "fn main() {\n    |\n}\n", 'let x = 1;\n    println!("{}", x);\n}\n\nfn other() {}',
     'let x = 1;\n    println!("{}", x);'),
    ("rust", "impl Foo {\n    fn f(&self) -> i32 {|\n    }\n}\n", "\n        self.x + 1\n    }\n}",
     "\n        self.x + 1"),
    ("rust", 'fn main() {\n    println!("|");\n}\n', 'hello");', "hello"),
    ("rust", "fn main() {\n    let n = compute(|);\n}\n", "a, b);\n    n", "a, b"),
    # Keyword-delimited blocks: a missing `end` is written, an existing one is not.
    ("lua", "function f()\n  if x then|\n  end\nend\n", "\n    y()\n  end\nend", "\n    y()"),
    ("lua", "function f()\n  if x then|\nend\n", "\n    y()\n  end\nend", "\n    y()\n  end"),
    # Plain text has no tree and still works.
    ("plaintext", "Dear |\n", "Sir,\nthanks", "Sir,"),
]


@pytest.mark.parametrize(("language", "marked", "raw", "expected"), CASES)
def test_final_text(language, marked, raw, expected):
    snapshot, offset = at_cursor(language, marked)
    mode = decide_mode(snapshot, offset)
    assert finalize(snapshot, offset, mode, raw).text == expected


@pytest.mark.parametrize(("language", "marked", "raw", "expected"), CASES)
def test_stop_check_stops_where_finalize_cuts(language, marked, raw, expected):
    # Streaming token by token (here: char by char), decoding stops no later than the cut point, and what
    # was generated by then finalizes to the same text as the full output.
    snapshot, offset = at_cursor(language, marked)
    mode = decide_mode(snapshot, offset)
    done = stop_check(snapshot, offset, mode)
    stopped_at = next((i for i in range(1, len(raw) + 1) if done(raw[:i])), len(raw))
    assert finalize(snapshot, offset, mode, raw[:stopped_at]).text == expected


MODES = [
    ("python", "def f(x):|\n", True, "after block opener", "    "),
    ("python", "def f(x):\n    |\n", True, "empty line in block", "    "),
    ("python", "def f(x):\n|\n", True, "empty line in block", "    "),  # no auto-indent yet
    ("python", "x = 1\n|\n", True, "empty line in block", ""),
    ("python", "x = foo|(1)\n", False, "middle of line", ""),
    ("python", "print(|)\n", False, "inside argument list", ""),
    ("python", 'x = "ab|c"\n', False, "inside string", ""),
    ("python", "x = 1  # note |\n", False, "inside comment", ""),
    ("python", "d = {'a':|}\n", False, "inside argument list", ""),
    ("python", "foo(\n    a,\n    |\n)\n", False, "inside argument list", "    "),
    ("python", "x = 1|\n", False, "end of line", ""),
    ("python", "items = foo(1,|\n", False, "inside argument list", ""),  # unclosed call: broken code is data
    ("typescript", "function f() {|}\n", True, "after block opener", "  "),
    ("typescript", "call(() => {|});\n", True, "after block opener", "  "),
    ("typescript", "const s = 'a|';\n", False, "inside string", ""),
    ("go", "package main\nfunc main() {|\n}\n", True, "after block opener", "\t"),
    ("go", "package main\nfunc main() {\n\tx := f(|)\n}\n", False, "inside argument list", "\t"),
    ("rust", "fn main() {\n    // todo |\n}\n", False, "inside comment", "    "),
    ("rust", "fn main() {\n    |\n}\n", True, "empty line in block", "    "),
]


@pytest.mark.parametrize(("language", "marked", "multiline", "reason", "indent"), MODES)
def test_mode(language, marked, multiline, reason, indent):
    snapshot, offset = at_cursor(language, marked)
    assert decide_mode(snapshot, offset) == CompletionMode(multiline, reason, indent)


# A callback's body passed as an argument is a block: its empty line takes a block, not one line; a call inside
# that body is still an argument list. (‸ marks the cursor: Rust closures use "|".)
CALLBACK_MODES = [
    ("go", "package a\nfunc f() {\n\tflags.VisitAll(func(p *Flag) {\n\t\t‸\n\t})\n}\n", True, "empty line in block", "\t\t"),
    ("typescript", "function f() {\n  items.forEach((el) => {\n    ‸\n  });\n}\n", True, "empty line in block", "    "),
    ("javascript", "items.forEach(function (el) {\n  ‸\n});\n", True, "empty line in block", "  "),
    ("rust", "fn f() {\n    v.iter().for_each(|x| {\n        ‸\n    });\n}\n", True, "empty line in block", " " * 8),
    ("cpp", "void f() {\n  g([](int x) {\n    ‸\n  });\n}\n", True, "empty line in block", "    "),
    ("lua", "g(function(x)\n  ‸\nend)\n", True, "empty line in block", "  "),
    ("go", "package a\nfunc f() {\n\tgo func() {\n\t\tx := g(‸)\n\t}()\n}\n", False, "inside argument list", "\t\t"),
    ("typescript", "items.forEach((el) => {\n  g(el, ‸);\n});\n", False, "inside argument list", "  "),
    ("rust", "fn f() {\n    v.iter().for_each(|x| {\n        g(x, ‸);\n    });\n}\n", False, "inside argument list",
     " " * 8),
]


@pytest.mark.parametrize(("language", "marked", "multiline", "reason", "indent"), CALLBACK_MODES)
def test_mode_in_a_callback_body(language, marked, multiline, reason, indent):
    offset = marked.index("‸")
    snapshot = Document(f"file:///t.{EXTENSIONS[language]}", language, 1, marked.replace("‸", "")).snapshot()
    assert decide_mode(snapshot, offset) == CompletionMode(multiline, reason, indent)


def test_max_lines_and_reasons():
    snapshot, offset = at_cursor("python", "|\n")
    mode = decide_mode(snapshot, offset)
    raw = "".join(f"x{i} = {i}\n" for i in range(30))
    completion = finalize(snapshot, offset, mode, raw, max_lines=5)
    assert completion == Completion("x0 = 0\nx1 = 1\nx2 = 2\nx3 = 3\nx4 = 4", "max lines")
    assert stop_check(snapshot, offset, mode, max_lines=5)(raw)
    assert not stop_check(snapshot, offset, mode, max_lines=5)("x0 = 0\nx1")


def test_single_line_leading_newlines_on_empty_line():
    snapshot, offset = at_cursor("python", "x = [\n    1,\n    |\n]\n")
    mode = decide_mode(snapshot, offset)
    assert not mode.multiline
    assert finalize(snapshot, offset, mode, "\n    2,\n    3,").text == "2,"
    assert not stop_check(snapshot, offset, mode)("\n")  # nothing yet: keep decoding


def test_empty_completion_says_why():
    snapshot, offset = at_cursor("go", "package main\n\nfunc main() {\n\t|\n}\n")
    completion = finalize(snapshot, offset, decide_mode(snapshot, offset), "}\n")
    assert completion == Completion("", "closed the block; empty")


def test_broken_code_and_odd_offsets_never_raise():
    snapshot, offset = at_cursor("python", "def f(:\n    ))) '''|\n")
    mode = decide_mode(snapshot, offset)
    finalize(snapshot, offset, mode, "\x00\n\n}}}")
    stop_check(snapshot, offset, mode)("")
    end = len(snapshot.text)
    assert isinstance(finalize(snapshot, end, decide_mode(snapshot, end), "x"), Completion)


def test_random_documents_and_outputs_never_raise_and_streaming_agrees():
    # Broken code is data: random fragments in every mode, and a stop decision that never cuts differently
    # from the final cut of the full output.
    import random

    pieces = list("(){}[]\"'`:;,\n\t ") + ["if x:", "end", "then", "def f", "fn", "//", "#", "😀", "    ", "\r\n"]
    rng = random.Random(7)
    for _ in range(300):
        language = rng.choice(list(EXTENSIONS))
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        offset = rng.randint(0, len(text))
        snapshot, _ = at_cursor(language, text[:offset] + "|" + text[offset:])
        mode = decide_mode(snapshot, offset)
        raw = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 20)))
        done = stop_check(snapshot, offset, mode)
        stopped_at = next((i for i in range(1, len(raw) + 1) if done(raw[:i])), len(raw))
        assert finalize(snapshot, offset, mode, raw[:stopped_at]).text == finalize(snapshot, offset, mode, raw).text


# A small model falls into loops; the loop is cut after its first copy, and decoding stops once it shows.
LOOPS = [
    ('check(a, "name", "name", "name", "name", "na', 'check(a, "name"'),
    ("call(\n        window,\n        max_size,\n        max_size,\n        max_size,\n        max_",
     "call(\n        window,\n        max_size,"),
]


@pytest.mark.parametrize("raw, expected", LOOPS)
def test_a_loop_is_cut_after_its_first_copy(raw, expected):
    snapshot, offset = at_cursor("python", "def f(a):\n    |\n")
    mode = decide_mode(snapshot, offset)
    completion = finalize(snapshot, offset, mode, raw)
    assert completion.text == expected
    assert "repeating loop" in completion.reason
    assert finalize(snapshot, offset, mode, raw, skip=frozenset({"repetition"})).text.startswith(raw.rstrip()[:60])
    done = stop_check(snapshot, offset, mode)
    stopped_at = next(i for i in range(1, len(raw) + 1) if done(raw[:i]))
    # Not before the third copy is written, and the early stop cuts where the whole output would.
    assert raw[:stopped_at].count("name") >= 3 or raw[:stopped_at].count("max_size") >= 3
    assert finalize(snapshot, offset, mode, raw[:stopped_at]).text == expected


@pytest.mark.parametrize("line", ["x = [0, 0, 0, 0, 0, 0]", 'print("-" * 40, "=========")', 'pad = "aaaaaaaaaaaa"',
                                  "grid = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]"])
def test_data_that_repeats_is_not_a_loop(line):
    snapshot, offset = at_cursor("python", "def f(a):\n    |\n")
    mode = decide_mode(snapshot, offset)
    assert finalize(snapshot, offset, mode, line).text == line
    assert not stop_check(snapshot, offset, mode)(line)


def test_a_block_written_twice_is_cut_after_its_first_copy():
    snapshot, offset = at_cursor("go", "package a\nfunc f(cmd *Command) error {\n\t|\n}\n")
    mode = decide_mode(snapshot, offset)
    block = 'if cmd.Syntax == "g" {\n\t\treturn cmd.UsageFunc()(cmd)\n\t}'
    raw = f"{block}\n\t{block}\n\t{block}\n\tif cmd.Syn"
    completion = finalize(snapshot, offset, mode, raw)
    assert (completion.text, "repeating loop" in completion.reason) == (block, True)
    done = stop_check(snapshot, offset, mode)
    stopped_at = next(i for i in range(1, len(raw) + 1) if done(raw[:i]))
    # Decoding stops once the second copy's last line is written, and that cut is the whole output's.
    assert raw[:stopped_at].count("if cmd.Syntax") == 2 and raw[:stopped_at].endswith("}\n")
    assert finalize(snapshot, offset, mode, raw[:stopped_at]).text == block


@pytest.mark.parametrize("raw", [
    "x = f(a)\n\ny = f(a)\n\nx = f(a)\n",  # one line between blank ones: two copies are not a loop
    "if a {\n\tb()\n}\nif a {\n\tc()\n}\n",  # alike, not the same
    "foo()\n}\nfoo()\n}\n",  # one line of words per copy: a closer is not a second one
])
def test_blocks_that_only_look_repeated_are_not_a_loop(raw):
    snapshot, offset = at_cursor("go", "package a\nfunc f() {\n\t|\n}\n")
    assert "loop" not in finalize(snapshot, offset, decide_mode(snapshot, offset), raw).reason


def test_nested_closers_on_their_own_lines_are_not_a_loop():
    snapshot, offset = at_cursor("lua", "function f()\n  |\nend\n")
    raw = "for i = 1, 3 do\n    for j = 1, 3 do\n      for k = 1, 3 do\n        g()\n      end\n    end\n  end"
    assert "loop" not in finalize(snapshot, offset, decide_mode(snapshot, offset), raw).reason


# A block with code above the cursor gets its next line from a prefix-only model; an empty (or only commented) one,
# its body. (Applied by the completer; decide_mode still says "empty line in block".)
@pytest.mark.parametrize(("language", "marked", "has_code"), [
    ("python", "def f(x):\n    y = x\n    |\n", True),
    ("python", "def f(x):\n    if x:\n        return 1\n    |\n", True),
    ("python", "def f(x):\n    # sum the squares\n    |\n", False),
    ("python", 'def f(x):\n    """Doc."""\n\n    |\n', False),
    ("python", "def f(x):\n    |\n", False),
    ("typescript", "function f() {\n  const a = 1;\n  |\n}\n", True),
    ("go", "package main\nfunc main() {\n\t// loop\n\t|\n}\n", False),
    ("python", "x = 1\ny = 2\n|\n", False),  # top level: a new definition may follow
    ("python", "def f(x):\n    y = x\n    z|\n", False),  # not a blank line
])
def test_block_has_code_above(language, marked, has_code):
    snapshot, offset = at_cursor(language, marked)
    assert block_has_code_above(snapshot, offset, decide_mode(snapshot, offset)) is has_code
