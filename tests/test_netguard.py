"""The network guard itself: it must refuse a non-loopback connection before any packet leaves, in the test
process and in the processes the tests start, and still let loopback through. TEST-NET-1 (192.0.2.1, RFC 5737)
is the target: reserved for documentation, and never actually contacted because the guard refuses first."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from ghostls_netguard import NetworkBlocked

TEST_NET = ("192.0.2.1", 9)


def test_guard_refuses_a_non_loopback_connection_before_connecting():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Non-blocking: had the kernel's connect() run, it would have sent a SYN and raised EINPROGRESS (or
        # ENETUNREACH without a route). NetworkBlocked instead means the guard refused before the system call.
        sock.setblocking(False)
        with pytest.raises(NetworkBlocked, match="192.0.2.1"):
            sock.connect(TEST_NET)
        assert sock.connect_ex(("127.0.0.1", 9)) != 0  # the same socket still works: refused, loopback port
    with pytest.raises(NetworkBlocked):
        socket.create_connection(TEST_NET, timeout=1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, pytest.raises(NetworkBlocked):
        udp.sendto(b"x", TEST_NET)
    with pytest.raises(NetworkBlocked):
        socket.getaddrinfo("example.com", 443)  # a DNS query would leave the machine


async def test_guard_covers_asyncio_connections():
    import asyncio

    with pytest.raises(NetworkBlocked):
        await asyncio.open_connection(*TEST_NET)


def test_guard_lets_loopback_through():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5):
            pass
    assert socket.getaddrinfo("localhost", 80)


def test_guard_is_installed_in_subprocesses():
    code = "import socket; socket.create_connection(('192.0.2.1', 9), timeout=1)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "NetworkBlocked" in result.stderr and "ghostls test network guard" in result.stderr
