"""The workspace symbol index, ignore rules and cross-file context, on real tree-sitter parses of a fixture
workspace (tests/fixtures/workspace) copied into a temporary folder."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import tree_sitter

from ghostls.parsers.document import Document, PositionEncoding
from ghostls.parsers.index import IndexLimits, _tag_query
from ghostls.parsers.languages import all_rules
from ghostls.parsers.repo_context import build_repo_context
from ghostls.parsers import workspace as workspace_module
from ghostls.parsers.workspace import Workspace

FIXTURE = Path(__file__).parent / "fixtures" / "workspace"
CANARY = "GHOSTLS-CANARY-5b1e0c9d"
SECRET_FILES = (".env", ".env.production", "id_rsa", "deploy/server.pem", "credentials.json", "config/api.key")


def count_tokens(text: str) -> int:
    return max(1, len(text) // 4)  # the budget logic only needs a monotonic count


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    shutil.copytree(FIXTURE, root)
    for name in SECRET_FILES:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        # Secrets that look like code, so an index that read them would find definitions.
        path.write_text(f"def leaked_{path.stem.replace('.', '_').replace('-', '_')}():\n    return '{CANARY}'\n")
    return root


@pytest.fixture
def workspace(root: Path):
    ws = Workspace([str(root)])
    assert ws.worker.wait_idle(30)
    yield ws
    ws.close()


def _open(ws: Workspace, path: Path, language: str = "python", text: str | None = None) -> Document:
    text = path.read_text() if text is None else text
    document = Document(path.as_uri(), language, 1, text)
    ws.document_opened(document.snapshot())
    return document


def test_every_language_has_a_tag_query_that_compiles():
    for name, rules in all_rules().items():
        query = _tag_query(name, rules.grammar)
        assert isinstance(query, tree_sitter.Query), name
        assert query.pattern_count > 0, name


def test_index_finds_definitions_across_languages(workspace: Workspace, root: Path):
    geometry = str(root / "shapes" / "geometry.py")
    kinds = {d.name: d.kind for d in workspace.index.in_file(geometry)}
    assert kinds == {"ORIGIN": "constant", "distance_between": "function", "Polygon": "class",
                     "__init__": "function", "perimeter": "function", "area": "function"}
    [pad] = workspace.index.lookup("padTwo")
    assert pad.kind == "function" and pad.key.endswith("web/format.js")
    assert pad.snippet.startswith("/** Pads a number to two digits. */\nfunction padTwo(n) {")
    assert {d.kind for d in workspace.index.lookup("label")} == {"method"}
    # A long class is its signature, docstring and member signatures, not its bodies.
    [polygon] = workspace.index.lookup("Polygon")
    assert polygon.snippet.splitlines() == [
        "class Polygon:", '    """A closed polygon given by its vertices in order."""',
        "    def __init__(self, vertices):", "    def perimeter(self):", "    def area(self):"]


def test_index_respects_gitignore_ghostlsignore_and_secrets(workspace: Workspace):
    assert workspace.index.lookup("generated_only_function") == ()  # .gitignore: generated/
    assert workspace.index.lookup("private_helper_function") == ()  # .ghostlsignore: private/
    files, symbols, _ = workspace.index.counts()
    assert files == 4  # main.py, shapes/geometry.py, web/format.js, web/app.js
    for name in SECRET_FILES:
        stem = Path(name).stem.replace(".", "_").replace("-", "_")
        assert workspace.index.lookup(f"leaked_{stem}") == ()


def test_secret_documents_are_refused_and_never_kept(workspace: Workspace, root: Path):
    for name in (*SECRET_FILES, "private/notes.py"):
        uri = (root / name).as_uri()
        assert workspace.secret_reason(uri) is not None, name
        secret = Document(uri, "python", 1, (root / name).read_text())
        workspace.document_changed(secret.snapshot(), edit_line=0)
    assert workspace.secret_reason((root / "main.py").as_uri()) is None
    assert workspace.worker.wait_idle(10)
    assert all(CANARY not in edit.text for edit in workspace.recent_edits(""))
    assert workspace.index.lookup("leaked_env") == ()


def test_secret_patterns_setting_adds_patterns(root: Path):
    ws = Workspace([str(root)], secret_patterns=["*.py"], index=False)
    assert ws.secret_reason((root / "main.py").as_uri()) is not None
    assert ws.secret_reason((root / "web" / "app.js").as_uri()) is None


def test_context_brings_definitions_from_other_files(workspace: Workspace, root: Path):
    main = _open(workspace, root / "main.py")
    snapshot = main.snapshot()
    context = workspace.context_for(snapshot, len(snapshot.text), "qwen", count_tokens, 400)
    names = [item.name for item in context.items]
    assert set(names) == {"distance_between", "Polygon", "perimeter"}
    assert "report" not in names  # defined in this very file: the prefix has it
    assert context.text.startswith("<|repo_name|>ws\n<|file_sep|>shapes/geometry.py\n")
    assert '    """Euclidean distance between two points given as (x, y) tuples."""' in context.text
    assert context.text.endswith("<|file_sep|>main.py\n")
    # Ordered by file and line, not by rank, so the block is the same wherever the cursor is.
    assert [item.line for item in context.items] == sorted(item.line for item in context.items)


def test_context_is_a_comment_block_for_families_without_a_repo_format(workspace: Workspace, root: Path):
    app = _open(workspace, root / "web" / "app.js", "javascript")
    snapshot = app.snapshot()
    context = workspace.context_for(snapshot, len(snapshot.text), "prefix_only", count_tokens, 400)
    assert context.format == "comment"
    assert {item.name for item in context.items} == {"Clock", "padTwo"}
    assert context.text.startswith("// Code from web/format.js:\n")
    assert "// function padTwo(n) {" in context.text
    assert all(line.startswith("//") for line in context.text.splitlines())


def test_context_fits_the_budget_and_keeps_the_nearest_names(workspace: Workspace, root: Path):
    main = _open(workspace, root / "main.py")
    snapshot = main.snapshot()
    small = workspace.context_for(snapshot, len(snapshot.text), "qwen", count_tokens, 40)
    assert small.tokens <= 40
    assert [item.name for item in small.items] == ["distance_between"]  # the name at the cursor
    assert small.dropped == 2
    none = workspace.context_for(snapshot, len(snapshot.text), "qwen", count_tokens, 0)
    assert none.text == ""


def test_index_follows_edits_saves_and_deletions(workspace: Workspace, root: Path):
    geometry = root / "shapes" / "geometry.py"
    # An open document's new text is indexed (didChange), without touching the disk.
    document = _open(workspace, geometry)
    document.apply_change("\n\ndef midpoint(a, b):\n    return a\n", ((32, 0), (32, 0)), 2, PositionEncoding.UTF16)
    workspace.document_changed(document.snapshot(), edit_line=34)
    assert workspace.worker.wait_idle(10)
    assert [d.name for d in workspace.index.lookup("midpoint")] == ["midpoint"]
    # A new file on disk (didChangeWatchedFiles) comes in; a deleted one goes out.
    extra = root / "shapes" / "extra.py"
    extra.write_text("def brand_new_helper():\n    pass\n")
    workspace.files_changed([extra.as_uri()])
    assert workspace.worker.wait_idle(10)
    assert len(workspace.index.lookup("brand_new_helper")) == 1
    extra.unlink()
    workspace.files_changed([extra.as_uri()])
    assert workspace.worker.wait_idle(10)
    assert workspace.index.lookup("brand_new_helper") == ()
    # Recently edited regions of other documents come with the context, last, once their document is quiet
    # (text changing at every keystroke at the top of a prompt would void its KV cache).
    main = _open(workspace, root / "main.py").snapshot()
    context = workspace.context_for(main, len(main.text), "qwen", count_tokens, 400)
    assert "recent_edit" not in [item.source for item in context.items]
    settled = time.monotonic() + workspace_module.RECENT_EDIT_SETTLE_S
    assert [edit.line for edit in workspace.recent_edits("", now=settled)] == [34]
    workspace_module.RECENT_EDIT_SETTLE_S, saved = 0.0, workspace_module.RECENT_EDIT_SETTLE_S
    try:
        context = workspace.context_for(main, len(main.text), "qwen", count_tokens, 400)
    finally:
        workspace_module.RECENT_EDIT_SETTLE_S = saved
    assert context.items[-1].source == "recent_edit"
    assert "def midpoint(a, b):" in context.text


def test_size_caps_stop_the_scan(root: Path):
    ws = Workspace([str(root)], limits=IndexLimits(max_files=2))
    assert ws.worker.wait_idle(10)
    status = ws.status()
    assert status["files"] == 2 and status["capped"]
    big = Workspace([str(root)], limits=IndexLimits(max_file_bytes=200))
    assert big.worker.wait_idle(10)
    assert big.index.lookup("Polygon") == ()  # geometry.py is over 200 bytes
    assert big.status()["skippedLarge"] >= 1
    ws.close(), big.close()


def test_build_repo_context_is_pure_over_a_lookup(root: Path):
    # Without any index: a lookup function is all it needs.
    main = Document((root / "main.py").as_uri(), "python", 1, (root / "main.py").read_text()).snapshot()
    assert build_repo_context(main, len(main.text), lambda name: (), [], "qwen", count_tokens, 400).text == ""


# -- similar code: the lines elsewhere most like the cursor's, with what follows them there ----------------------

GO_TEST_A = '''package cli

func TestFishNoActiveHelp(t *testing.T) {
	c := &Command{Use: "c", Run: emptyRun}
	buf := new(bytes.Buffer)
	assertNoErr(t, c.GenFishCompletion(buf, true))
	output := buf.String()
	activeHelpVar := activeHelpEnvVar(c.Name())
	check(t, output, fmt.Sprintf("%s=0", activeHelpVar))
}
'''
GO_TEST_B_HEAD = '''package cli

func TestZshNoActiveHelp(t *testing.T) {
	c := &Command{Use: "c", Run: emptyRun}
	buf := new(bytes.Buffer)
	assertNoErr(t, c.GenZshCompletion(buf, true))
	output := buf.String()
'''


def _go_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "cli"
    folder.mkdir(parents=True)
    (folder / "fish_test.go").write_text(GO_TEST_A)
    (folder / "unrelated.go").write_text("package cli\n\nvar table = map[string]int{\"x\": 1}\n")
    return folder


def _zsh_test(folder: Path, text: str = GO_TEST_B_HEAD + "\t"):
    """A new test file beside fish_test.go, its cursor at the end."""
    return Document((folder / "zsh_test.go").as_uri(), "go", 1, text).snapshot()


def test_similar_code_comes_from_a_sibling_with_the_lines_that_follow_it(tmp_path: Path):
    folder = _go_folder(tmp_path)
    ws = Workspace([str(tmp_path)], index=False)
    snapshot = _zsh_test(folder)
    context = ws.context_for(snapshot, len(snapshot.text), "prefix_only", count_tokens, 400)
    similar = [item for item in context.items if item.source == "similar"]
    assert [(item.path, item.line) for item in similar] == [("cli/fish_test.go", 0)]
    # The model sees the next lines of the sibling: what it can copy.
    assert "// \tcheck(t, output, fmt.Sprintf(" in context.text
    assert "var table" not in context.text


def test_similar_code_is_never_the_file_itself_nor_an_ignored_one(tmp_path: Path):
    folder = _go_folder(tmp_path)
    (tmp_path / ".ghostlsignore").write_text("fish_test.go\n")
    ws = Workspace([str(tmp_path)], index=False)
    snapshot = _zsh_test(folder)
    assert ws.similar_code(snapshot, len(snapshot.text)) is None
    # In a folder that ignores nothing, fish_test.go's own copy on disk (the same text) is not similar code to it.
    plain = _go_folder(tmp_path / "plain")
    own = Document((plain / "fish_test.go").as_uri(), "go", 1, GO_TEST_A).snapshot()
    assert Workspace([str(tmp_path / "plain")], index=False).similar_code(own, len(GO_TEST_A)) is None


def test_similar_code_below_the_threshold_stays_out_and_a_small_budget_cuts_it_from_the_top(tmp_path: Path):
    folder = _go_folder(tmp_path)
    ws = Workspace([str(tmp_path)], index=False)
    other = _zsh_test(folder, "package cli\n\nfunc main() {\n\tfmt.Println(1)\n")
    assert ws.similar_code(other, len(other.text)) is None
    snapshot = _zsh_test(folder)
    # Half of 80 tokens holds the sibling's last lines only: what follows the lines like the cursor's stays.
    small = ws.context_for(snapshot, len(snapshot.text), "prefix_only", count_tokens, 80)
    [similar] = [item for item in small.items if item.source == "similar"]
    assert similar.line > 0 and similar.tokens <= 40 and small.tokens <= 80
    assert "// \tcheck(t, output, fmt.Sprintf(" in small.text and "package cli" not in small.text
    # Too small for three lines: left out.
    tiny = ws.context_for(snapshot, len(snapshot.text), "prefix_only", count_tokens, 20)
    assert all(item.source != "similar" for item in tiny.items)
