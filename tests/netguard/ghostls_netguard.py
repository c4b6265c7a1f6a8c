"""The test suite's network guard: refuses, in this process, every connection or datagram to an address that is
not loopback, and every name lookup that could leave the machine (DNS), before the real call is made.

Installed by tests/conftest.py for pytest itself and, through tests/netguard/sitecustomize.py on PYTHONPATH,
for every Python process the tests start (the servers). It must never be imported by ghostls itself.
"""

from __future__ import annotations

import ipaddress
import socket

LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class NetworkBlocked(OSError):
    """A test tried to reach something off this machine."""


def _is_local(host) -> bool:
    if host is None or host == "" or (isinstance(host, str) and host.lower() in LOCAL_NAMES):
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    try:
        address = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return False  # a name: resolving it may already send a DNS query
    return address.is_loopback or address.is_unspecified


def _check(sock, address) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
        if not _is_local(address[0]):
            raise NetworkBlocked(f"ghostls test network guard: blocked a connection to {address[0]}:{address[1]} "
                                 "(only loopback is allowed in tests)")


def install() -> None:
    if getattr(socket, "_ghostls_guarded", False):
        return
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_sendto, real_getaddrinfo = socket.socket.sendto, socket.getaddrinfo

    def connect(self, address):
        _check(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        _check(self, address)
        return real_connect_ex(self, address)

    def sendto(self, data, *args):
        _check(self, args[-1])
        return real_sendto(self, data, *args)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_local(host):
            raise NetworkBlocked(f"ghostls test network guard: blocked a name lookup of {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto = connect, connect_ex, sendto
    socket.getaddrinfo = getaddrinfo
    socket._ghostls_guarded = True
