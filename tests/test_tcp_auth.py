"""`ghostls serve --tcp`: loopback by default; another address needs a token; with a token set, a client that
does not present it in `initialize` gets a 401-style error and is disconnected, and the server keeps waiting
for the right client. Every listener here binds 127.0.0.1 (the tests never open a port beyond loopback)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

GHOSTLS = [sys.executable, "-m", "ghostls.cli.main"]
TOKEN = "s3cret-token-for-tests-0123456789"
UNAUTHORIZED = -32001


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connect(port: int, timeout: float = 30) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _send(sock: socket.socket, message: dict) -> None:
    body = json.dumps(message).encode()
    sock.sendall(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


def _receive(sock: socket.socket) -> dict | None:
    stream = sock.makefile("rb")
    length = None
    while True:
        line = stream.readline()
        if not line:
            return None
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
        elif not line.strip():
            return json.loads(stream.read(length))


def _initialize(options: dict, msg_id: int = 1) -> dict:
    return {"jsonrpc": "2.0", "id": msg_id, "method": "initialize",
            "params": {"processId": None, "capabilities": {}, "initializationOptions": options}}


@pytest.fixture
def tcp_server(tmp_path):
    port = _free_port()
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([*GHOSTLS, "serve", "--tcp", str(port), "--log-level", "debug"], stderr=log,
                            env={**os.environ, "GHOSTLS_TCP_TOKEN": TOKEN})
    yield port, proc, tmp_path / "server.log"
    proc.kill()
    proc.wait()
    log.close()


def test_a_client_without_the_token_is_refused_and_the_right_one_served(tcp_server):
    port, proc, log = tcp_server
    options = {"model": "/nonexistent"}
    for attempt in ({**options}, {**options, "ghostlsToken": "wrong-token-wrong-token"}):
        with _connect(port) as stranger:
            _send(stranger, _initialize(attempt))
            answer = _receive(stranger)
            assert answer["error"]["code"] == UNAUTHORIZED and "401" in answer["error"]["message"]
            assert _receive(stranger) is None  # and the connection is closed
    # A request that is not `initialize` is refused the same way.
    with _connect(port) as stranger:
        _send(stranger, {"jsonrpc": "2.0", "id": 5, "method": "ghostls/explain", "params": None})
        assert _receive(stranger)["error"]["code"] == UNAUTHORIZED
    assert proc.poll() is None
    with _connect(port) as client:
        _send(client, _initialize({**options, "ghostlsToken": TOKEN}))
        answer = _receive(client)
        assert "result" in answer, answer
        _send(client, {"jsonrpc": "2.0", "id": 2, "method": "ghostls/explain", "params": None})
        while (message := _receive(client)) is not None and message.get("id") != 2:
            pass
        assert message["result"]["model"]["state"] in ("starting", "converting", "error")
    # The token is taken out before the options are read: never echoed into the log or the settings.
    assert TOKEN not in log.read_text()


def test_non_loopback_host_needs_a_token():
    env = {k: v for k, v in os.environ.items() if k != "GHOSTLS_TCP_TOKEN"}
    result = subprocess.run([*GHOSTLS, "serve", "--tcp", "0", "--host", "0.0.0.0"], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 2
    assert "without a token" in result.stderr and "GHOSTLS_TCP_TOKEN" in result.stderr


def test_a_short_token_is_refused(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("short\n")
    result = subprocess.run([*GHOSTLS, "serve", "--tcp", "0", "--token-file", str(token_file)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "at least 16" in result.stderr
