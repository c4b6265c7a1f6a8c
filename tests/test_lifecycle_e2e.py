"""The server's life around the editor's: it exits when the editor process dies (the processId watch), and it
handles the `initialize` payloads real editors send, captured into tests/fixtures/initialize/."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lsp_wire import WirePeer

FIXTURES = Path(__file__).parent / "fixtures" / "initialize"
EXIT_WITHIN_S = 5


def _wait_exit(proc_or_pid, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if isinstance(proc_or_pid, subprocess.Popen):
            if proc_or_pid.poll() is not None:
                return time.monotonic() - started
        elif not _pid_alive(proc_or_pid):
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"still running {timeout}s after the editor died")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def test_server_exits_when_the_editor_process_dies_even_unreaped(tmp_path):
    """The editor is a real process that is killed and left a zombie (its parent, this test, does not reap it
    yet): the server must still see it as gone. The server's stdin stays open, so only the watch can end it."""
    editor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    peer = WirePeer(tmp_path / "server.log")
    try:
        peer.initialize({"model": str(tmp_path / "no-model")}, process_id=editor.pid)
        editor.kill()
        took = _wait_exit(peer.proc, EXIT_WITHIN_S)
        assert "editor process %d is gone" % editor.pid in peer.log()
        print(f"server exited {took:.2f}s after the editor died")
    finally:
        editor.wait()
        peer.close()


PARENT = textwrap.dedent('''
    import json, os, subprocess, sys, time
    # An editor: starts the server as its child and tells it its own pid, then lives until killed.
    server = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "processId": os.getpid(), "capabilities": {}, "initializationOptions": {"model": "/nonexistent"}}}).encode()
    server.stdin.write(b"Content-Length: %d\\r\\n\\r\\n" % len(body) + body)
    server.stdin.flush()
    while server.stdout.readline().strip():  # the answer's headers: it is initialized and watching
        pass
    print(server.pid, flush=True)
    time.sleep(120)
''')


def test_server_exits_when_its_real_parent_editor_is_killed(tmp_path):
    server_cmd = [sys.executable, "-m", "ghostls.cli.main", "serve", "--stdio"]
    parent = subprocess.Popen([sys.executable, "-c", PARENT, *server_cmd], stdout=subprocess.PIPE, text=True)
    server_pid = int(parent.stdout.readline())
    try:
        assert _pid_alive(server_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        _wait_exit(server_pid, EXIT_WITHIN_S)
    finally:
        if _pid_alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)


def _fixtures() -> list[Path]:
    return sorted(FIXTURES.glob("*.json"))


def test_the_neovim_capture_is_present():
    assert (FIXTURES / "nvim.json").is_file(), "tests/fixtures/initialize/nvim.json is the captured Neovim payload"


@pytest.mark.parametrize("fixture", _fixtures(), ids=lambda p: p.stem)
def test_server_handles_a_captured_initialize_payload(tmp_path, fixture, tiny_model):
    """Replays a real editor's `initialize` params byte for byte (only processId and the model are ours), then
    opens a document and asks for a completion in the position encoding the server chose for that editor."""
    payload = json.loads(fixture.read_text())
    params = payload.get("params", payload)
    assert "capabilities" in params
    params = {**params, "processId": None,
              "initializationOptions": {**(params.get("initializationOptions") or {}), "model": str(tiny_model("qwen")),
                                        "loadWaitMs": 120_000, "debounceMs": 0, "maxNewTokens": 8}}
    peer = WirePeer(tmp_path / "server.log")
    try:
        answer = peer.request("initialize", params)
        assert "result" in answer, answer
        capabilities = answer["result"]["capabilities"]
        assert capabilities["textDocumentSync"]["change"] == 2
        offered = params["capabilities"].get("general", {}).get("positionEncodings") or ["utf-16"]
        assert capabilities.get("positionEncoding", "utf-16") in offered
        peer.notify("initialized", {})
        peer.wait_for(lambda m: m.get("method") == "ghostls/status" and m["params"]["state"] in ("ready", "error"),
                      timeout=120)
        uri = "file:///work/captured.py"
        peer.open(uri, "def add(a, b):\n    return \n")
        result = peer.response(peer.inline_async(uri, 1, 11))
        assert "result" in result, result
        assert peer.request("ghostls/explain", None)["result"]["last"]["prompt_tokens"] > 0
    finally:
        assert peer.close() == 0


@pytest.mark.embedded
@pytest.mark.parametrize("after_shutdown", [True, False])
def test_exit_while_the_model_loads_ends_the_server_with_the_lsp_exit_code(tmp_path, embedded_model_dir,
                                                                           after_shutdown):
    """`exit` right after `initialized` (what `ghostls complete` on a secrets file does) comes while the model is
    loading on its thread: the server still leaves at once, with 0 after `shutdown` and 1 without (LSP)."""
    peer = WirePeer(tmp_path / "server.log")
    try:
        peer.initialize({"model": str(embedded_model_dir)}, wait_ready=False)
        if after_shutdown:
            assert "result" in peer.request("shutdown", None)
        peer.notify("exit", None)
        _wait_exit(peer.proc, EXIT_WITHIN_S)
        assert peer.proc.returncode == (0 if after_shutdown else 1), peer.log()[-2000:]
    finally:
        peer.close()
