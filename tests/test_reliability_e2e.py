"""Reliability end to end: the real server process on a real tiny ONNX model, driven over raw JSON-RPC so that
cancels, edits and bursts land at chosen moments and every answer is counted.

Faults come from tests/fault_server.py, which starts `ghostls serve` with them patched into the real engine: it
either raises inside generate() or slows each decoded token. A slowed token stands in for a large model on a slow
CPU, so that "stopped within one token" is measurable with a model that otherwise decodes a token in a
millisecond. ghostls itself has no fault switch (the last test holds it to that).
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from lsp_wire import SERVER, WirePeer

URI = "file:///work/reliab.py"
SOURCE = '''import os


def read_config(path):
    """Read a config file."""
    with open(path) as handle:
        return handle.read()


def main():
    
'''
CONTENT_MODIFIED, REQUEST_CANCELLED, INTERNAL_ERROR = -32801, -32800, -32603


def _options(model_dir, **extra) -> dict:
    return {"model": str(model_dir), "loadWaitMs": 120_000, "debounceMs": 0, "maxNewTokens": 40,
            "timeBudgetMs": 60_000, **extra}


def _start(tmp_path, model_dir, fault: str = "", **options) -> WirePeer:
    """The real server; with `fault` (tests/fault_server.py's FAULTS), started through the fault harness."""
    harness = [sys.executable, str(Path(__file__).with_name("fault_server.py")), fault, *SERVER[3:]]
    peer = WirePeer(tmp_path / "server.log", args=harness if fault else None)
    peer.initialize(_options(model_dir, **options))
    return peer


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line.split()[1] for line in status if line.startswith("VmRSS:")))


def _wait_log(peer: WirePeer, pattern: str, timeout: float = 30) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if match := re.search(pattern, peer.log()):
            return match
        time.sleep(0.02)
    raise AssertionError(f"no {pattern!r} in the server log:\n{peer.log()[-3000:]}")


# 1 -----------------------------------------------------------------------------------------------------------
def test_engine_fault_is_internal_error_naming_method_and_version_and_next_request_succeeds(tmp_path, tiny_model):
    peer = _start(tmp_path, tiny_model("qwen"), fault="raise_on_generate=1")
    try:
        peer.open(URI, SOURCE, version=7)
        failed = peer.response(peer.inline_async(URI, 10, 4))
        assert failed["error"]["code"] == INTERNAL_ERROR
        assert "textDocument/inlineCompletion" in failed["error"]["message"]
        assert "version 7" in failed["error"]["message"]
        # The server's log and the client's log both name the method and the document version.
        assert re.search(r"ERROR .*textDocument/inlineCompletion failed on file:///work/reliab.py version 7",
                         peer.log())
        assert any(m.get("method") == "window/logMessage" and "version 7" in m["params"]["message"]
                   for m in peer.seen)
        # The engine is not poisoned: the next request (generate call 2) runs the model.
        answer = peer.response(peer.inline_async(URI, 10, 4))
        assert "result" in answer, answer
        explained = peer.request("ghostls/explain", None)["result"]
        assert explained["last"]["prompt_tokens"] > 20 and explained["model"]["state"] == "ready"
        assert peer.alive()
    finally:
        assert peer.close() == 0


# 2 -----------------------------------------------------------------------------------------------------------
TOKEN_DELAY_MS = 150


@pytest.fixture
def slow_peer(tmp_path, tiny_model):
    peer = _start(tmp_path, tiny_model("qwen"), fault=f"token_delay_ms={TOKEN_DELAY_MS}")
    yield peer
    assert peer.close() == 0


def test_cancel_during_generation_gives_one_response_and_stops_within_one_token(slow_peer):
    peer = slow_peer
    peer.open(URI, SOURCE)
    msg_id = peer.inline_async(URI, 10, 4)
    _wait_log(peer, r"generating for reliab.py v1")
    time.sleep(3 * TOKEN_DELAY_MS / 1000)  # a few tokens into the decode loop
    peer.notify("$/cancelRequest", {"id": msg_id})
    assert peer.response(msg_id)["error"]["code"] == REQUEST_CANCELLED
    stopped = _wait_log(peer, r"cancelled completion reliab.py v1: generation stopped \((\w+)\) (\d+) ms after")
    # It was still generating when cancelled (not ended by itself) and let go within about one token.
    assert stopped.group(1) == "cancelled"
    assert int(stopped.group(2)) < TOKEN_DELAY_MS + 250, stopped.group(0)
    print(stopped.group(0))
    time.sleep(0.5)
    assert len(peer.responses_to(msg_id)) == 1
    # The worker is free: the next request is answered.
    assert "result" in peer.response(peer.inline_async(URI, 10, 4))


# 3 -----------------------------------------------------------------------------------------------------------
def test_did_change_during_generation_is_content_modified_never_stale_text(slow_peer):
    peer = slow_peer
    peer.open(URI, SOURCE)
    msg_id = peer.inline_async(URI, 10, 4)
    _wait_log(peer, r"generating for reliab.py v1")
    peer.change(URI, 2, (10, 4), (10, 4), "ret")
    answer = peer.response(msg_id)
    assert answer.get("error", {}).get("code") == CONTENT_MODIFIED, answer
    assert len(peer.responses_to(msg_id)) == 1
    # A request for the new version is answered for the new version.
    fresh = peer.response(peer.inline_async(URI, 10, 7))
    assert "result" in fresh
    for item in fresh["result"]["items"]:
        assert item["range"]["start"] == {"line": 10, "character": 7}


def test_a_stale_answer_still_leaves_its_prompt_window_for_the_next_keystroke(tmp_path, tiny_model):
    # A document longer than the prompt budget: the prompt is a window of it, filled whole the first time. The
    # answer comes after the user typed on, so it is dropped; its window (and the KV cache behind it) must still
    # serve the next request, which otherwise starts a new window: a second long prefill in the middle of typing.
    source = "".join(f"value_{i} = compute({i}, {i * 3})\n" for i in range(200)) + "result = "
    line, column, typed = source.count("\n"), len("result = "), "total_of_values + "
    peer = _start(tmp_path, tiny_model("qwen"), fault="token_delay_ms=100", maxPromptTokens=150)
    try:
        peer.open(URI, source)
        msg_id = peer.inline_async(URI, line, column)
        _wait_log(peer, r"generating for reliab.py v1")
        peer.change(URI, 2, (line, column), (line, column), typed)
        assert peer.response(msg_id).get("error", {}).get("code") == CONTENT_MODIFIED
        assert "result" in peer.response(peer.inline_async(URI, line, column + len(typed)))
        last = peer.request("ghostls/explain", None)["result"]["last"]
        assert last["prompt_tokens"] > 100 and last["reused_tokens"] > 0.8 * last["prompt_tokens"], last
    finally:
        peer.close()


# 4 -----------------------------------------------------------------------------------------------------------
def test_typing_burst_one_generation_per_document_flat_memory_edits_never_delayed(tmp_path, tiny_model):
    # A realistic small-model speed (20 ms a token), no debounce, so that generations really overlap the typing:
    # 200 requests in 2 s, one per keystroke.
    peer = _start(tmp_path, tiny_model("qwen"), fault="token_delay_ms=20", debounceMs=0)
    try:
        peer.open(URI, SOURCE)

        def burst(count: int, version: int, column: int) -> tuple[list[int], list[float], int, int]:
            ids, latencies = [], []
            started = time.monotonic()
            for i in range(count):
                version += 1
                peer.change(URI, version, (10, column), (10, column), "x")
                column += 1
                ids.append(peer.inline_async(URI, 10, column, invoked=False))
                if i % 10 == 0:  # the event loop answers at once, whatever the engine is doing
                    sent = time.monotonic()
                    peer.request("ghostls/explain", None, timeout=10)
                    latencies.append(time.monotonic() - sent)
                time.sleep(max(0.0, started + (i + 1) * 2.0 / count - time.monotonic()))
            for msg_id in ids:
                peer.response(msg_id, timeout=60)
            return ids, latencies, version, column

        _, _, version, column = burst(50, 1, 4)  # warm up allocators and the KV cache
        rss_before = _rss_kb(peer.proc.pid)
        log_before = len(peer.log())
        ids, latencies, version, column = burst(200, version, column)
        rss_after = _rss_kb(peer.proc.pid)
        # The worker logs each generation's start and end: they must strictly alternate (never two in flight).
        events = re.findall(r"(generating|generated) for reliab.py v(\d+)(?:: (\w+))?", peer.log()[log_before:])
        assert [kind for kind, _, _ in events] == ["generating", "generated"] * (len(events) // 2), events
        generations = len(events) // 2
        cancelled = sum(reason == "cancelled" for _, _, reason in events)

        print(f"burst: {len(ids)} requests, {generations} generations ({cancelled} cancelled mid-way), "
              f"explain latency max "
              f"{max(latencies) * 1000:.0f} ms, RSS {rss_before} -> {rss_after} kB")
        for msg_id in ids:
            answers = peer.responses_to(msg_id)
            assert len(answers) == 1, answers
            ok = "result" in answers[0] or answers[0]["error"]["code"] in (CONTENT_MODIFIED, REQUEST_CANCELLED)
            assert ok, answers[0]
        # Requests superseded while queued never reach the model; those already generating are cut short.
        assert 0 < generations < len(ids), generations
        assert cancelled > 0
        # The last keystroke's request is answered for the final text (a wrong text would put it out of range).
        last = peer.response(peer.inline_async(URI, 10, column))
        assert "result" in last, last
        assert max(latencies) < 0.5, latencies
        assert rss_after - rss_before < 30_000, (rss_before, rss_after)
    finally:
        assert peer.close() == 0


# 7 -----------------------------------------------------------------------------------------------------------
def _big_inputs() -> dict[str, tuple[str, int, int]]:
    line = "value = compute(alpha, beta) + 1  # a comment that pads the line\n"
    twenty_mb = line * (20_000_000 // len(line))
    long_line = "x = [" + "1, " * 350_000 + "]"
    binary = "".join(chr(b) for b in bytes(range(256)) * 400)
    return {
        "20MB": (twenty_mb, twenty_mb.count("\n"), 0),
        "1MB-line": (long_line, 0, len(long_line) // 2),
        "binary": (binary, binary.count("\n") + binary.count("\r") - binary.count("\r\n"), 0),
    }


@pytest.mark.parametrize("name", ["20MB", "1MB-line", "binary"])
def test_large_and_binary_inputs_have_a_bounded_prompt_and_time(tmp_path, tiny_model, name):
    text, line, character = _big_inputs()[name]
    peer = _start(tmp_path, tiny_model("qwen"), maxNewTokens=8)
    try:
        uri = f"file:///work/big-{name}.py"
        sent = time.monotonic()
        peer.open(uri, text)
        answer = peer.response(peer.inline_async(uri, line, character), timeout=60)
        elapsed = time.monotonic() - sent
        assert "result" in answer, answer
        explained = peer.request("ghostls/explain", None)["result"]["last"]
        assert 0 < explained["prompt_tokens"] <= 2048, explained
        assert elapsed < 20, f"{name}: {elapsed:.1f}s"
        print(f"{name}: open + first answer {elapsed:.1f}s, prompt {explained['prompt_tokens']} tokens")
        # An edit to the big document is handled, and the next answer is as bounded.
        peer.change(uri, 2, (0, 0), (0, 0), "# top\n")
        answer = peer.response(peer.inline_async(uri, line + 1, character), timeout=60)
        assert "result" in answer, answer
        assert peer.alive()
    finally:
        assert peer.close() == 0


# 9 -----------------------------------------------------------------------------------------------------------
def _break(folder, fault: str) -> str:
    """Breaks a copy of a converted model; returns what the message to the user must say."""
    graph = folder / "model.onnx"
    if fault == "missing-onnx":
        graph.unlink()
        return "missing, empty or not an ONNX file"
    if fault == "truncated-onnx":
        data = graph.read_bytes()
        graph.write_bytes(data[: len(data) // 2])
        return "truncated"
    if fault == "corrupt-onnx":
        data = bytearray(graph.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64  # same size, protobuf header intact
        graph.write_bytes(bytes(data))
        return "sha256 differs"
    if fault == "pickle":
        (folder / "pytorch_model.bin").write_bytes(b"\x80\x04\x95")  # a pickle's opening bytes
        return "can run code when loaded"
    if fault == "custom-op-library":
        (folder / "libcustom_ops.so").write_bytes(b"\x7fELF")
        return "can run code when loaded"
    if fault == "tampered-op-library":  # ghostls's own attention op's name, other bytes
        (folder / "libghostls_ops.so").write_bytes(b"\x7fELF")
        return "can run code when loaded"
    if fault == "custom-op-config":
        import json

        config_path = folder / "genai_config.json"
        config = json.loads(config_path.read_text())
        config["model"]["decoder"]["session_options"]["custom_ops_library"] = "/tmp/libevil.so"
        config_path.write_text(json.dumps(config))
        return "custom_ops_library"
    raise ValueError(fault)


@pytest.mark.parametrize("fault", ["missing-onnx", "truncated-onnx", "corrupt-onnx", "pickle", "custom-op-library",
                                   "tampered-op-library", "custom-op-config"])
def test_model_faults_are_a_clear_message_and_the_server_serves_nothing(tmp_path, tiny_model, fault):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model("qwen"), folder)  # a copy: the shared converted model is never touched
    expected = _break(folder, fault)
    peer = WirePeer(tmp_path / "server.log")
    try:
        peer.initialize(_options(folder))
        status = peer.wait_for(lambda m: m.get("method") == "ghostls/status" and m["params"]["state"] == "error")
        assert expected in status["params"]["detail"], status
        peer.wait_for(lambda m: m.get("method") == "window/showMessage" and expected in m["params"]["message"]
                      and m["params"]["type"] == 1, timeout=10)  # 1: an error the editor shows
        peer.open(URI, SOURCE)
        answer = peer.response(peer.inline_async(URI, 10, 4))
        assert answer["result"]["items"] == []
        assert peer.request("ghostls/explain", None)["result"]["model"]["state"] == "error"
    finally:
        assert peer.close() == 0


# Fault injection belongs to the harness ---------------------------------------------------------------------------
@pytest.mark.parametrize("variable", ["raise_on_generate=1,token_delay_ms=5000", "token_delay_ms=fast,raise_on"],
                         ids=["valid", "malformed"])
def test_a_fault_variable_in_the_editors_environment_changes_nothing(tmp_path, tiny_model, monkeypatch, variable):
    """`ghostls serve` reads no fault switch: GHOSTLS_FAULT_INJECT, valid or malformed, in the environment an editor
    starts it in neither keeps it from starting nor changes a completion (faults come from fault_server.py only)."""
    monkeypatch.delenv("GHOSTLS_FAULT_INJECT", raising=False)

    def first_completion(log: str, env: dict | None) -> dict:
        peer = WirePeer(tmp_path / log, env=env)
        try:
            peer.initialize(_options(tiny_model("qwen")))
            peer.open(URI, SOURCE)
            answer = peer.response(peer.inline_async(URI, 10, 4))
            assert "result" in answer, answer
            return answer["result"]
        finally:
            assert peer.close() == 0, peer.log()[-3000:]

    assert first_completion("with.log", {"GHOSTLS_FAULT_INJECT": variable}) == first_completion("without.log", None)
