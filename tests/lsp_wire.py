"""A raw JSON-RPC peer for the real `ghostls serve --stdio` process: it can send what no well-behaved client
would (broken framing, invalid JSON, a cancel at a chosen moment) and sees every byte the server answers.

pytest-lsp is the right client for well-formed sessions; this one is for the hostile and the timing-sensitive.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

SERVER = [sys.executable, "-m", "ghostls.cli.main", "serve", "--stdio", "--log-level", "debug"]


class WirePeer:
    def __init__(self, stderr_path: Path, env: dict[str, str] | None = None, args: list[str] | None = None):
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen(args or SERVER, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, env={**os.environ, **(env or {})})
        self.inbox: queue.Queue = queue.Queue()
        self.seen: list[dict] = []  # every message the server sent, in order
        self._next_id = 1000
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    # -- sending -------------------------------------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, message: dict) -> None:
        body = json.dumps(message).encode()
        self.send_raw(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    def notify(self, method: str, params) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def request_async(self, method: str, params) -> int:
        self._next_id += 1
        self.send({"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params})
        return self._next_id

    def request(self, method: str, params, timeout: float = 60) -> dict:
        return self.response(self.request_async(method, params), timeout)

    # -- receiving -----------------------------------------------------------------------------------------
    def _read(self) -> None:
        out = self.proc.stdout
        while True:
            length = None
            while True:
                line = out.readline()
                if not line:
                    self.inbox.put(None)
                    return
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                elif not line.strip():
                    break
            message = json.loads(out.read(length))
            self.seen.append(message)
            self.inbox.put(message)
            # Answer the server's own requests (progress tokens, configuration) like an editor does.
            if "method" in message and "id" in message:
                self.send({"jsonrpc": "2.0", "id": message["id"], "result": None})

    def wait_for(self, predicate, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for message in self.seen:
            if predicate(message):
                return message
        while time.monotonic() < deadline:
            try:
                message = self.inbox.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if message is None:
                raise AssertionError(f"server exited ({self.proc.poll()}); log:\n{self.log()[-3000:]}")
            if predicate(message):
                return message
        raise AssertionError(f"no matching message within {timeout}s; log:\n{self.log()[-3000:]}")

    def response(self, msg_id, timeout: float = 60) -> dict:
        return self.wait_for(lambda m: m.get("id") == msg_id and "method" not in m, timeout)

    def responses_to(self, msg_id) -> list[dict]:
        return [m for m in self.seen if m.get("id") == msg_id and "method" not in m]

    def log(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    # -- lifecycle -----------------------------------------------------------------------------------------
    def initialize(self, options: dict | None = None, capabilities: dict | None = None,
                   process_id: int | None = None, wait_ready: bool = True) -> dict:
        result = self.request("initialize", {"processId": process_id, "rootUri": None,
                                             "capabilities": capabilities or {},
                                             "initializationOptions": options or {}})
        assert "result" in result, result
        self.notify("initialized", {})
        if wait_ready:
            self.wait_for(lambda m: m.get("method") == "ghostls/status"
                          and m["params"]["state"] in ("ready", "error"), timeout=180)
        return result

    def open(self, uri: str, text: str, language: str = "python", version: int = 1) -> None:
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": language,
                                                              "version": version, "text": text}})

    def change(self, uri: str, version: int, start: tuple[int, int], end: tuple[int, int], text: str) -> None:
        self.notify("textDocument/didChange", {
            "textDocument": {"uri": uri, "version": version},
            "contentChanges": [{"range": {"start": {"line": start[0], "character": start[1]},
                                          "end": {"line": end[0], "character": end[1]}}, "text": text}]})

    def inline_async(self, uri: str, line: int, character: int, invoked: bool = True) -> int:
        return self.request_async("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
            "context": {"triggerKind": 1 if invoked else 2}})

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> int | None:
        """Clean shutdown if the server still runs; returns its exit code."""
        try:
            if self.alive():
                self.request("shutdown", None, timeout=30)
                self.notify("exit", None)
                self.proc.wait(timeout=10)
        finally:
            if self.alive():
                self.proc.kill()
                self.proc.wait()
            self._stderr.close()
        return self.proc.returncode
