"""The JSON-RPC wire: framing, decoding and answering malformed messages, over stdio or TCP.

Replaces pygls's read loop, which logs a malformed message and never answers it (a client then waits forever),
and which loses the next message after a wrong Content-Length. Here every bad request gets the error JSON-RPC
names (-32700 parse, -32600 invalid request, -32601 unknown method, -32602 invalid params, also for well-typed
params pygls's document store would raise on) and the reader resynchronises on the next `Content-Length` header.
Knows nothing of completions; one message must never stop the server.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import sys
import threading
from urllib.parse import unquote, urlsplit

from pygls.exceptions import (JsonRpcInternalError, JsonRpcInvalidParams, JsonRpcInvalidRequest,
                              JsonRpcParseError)
from pygls.io_ import StdinAsyncReader, StdoutWriter

log = logging.getLogger(__name__)

# A header ends a line; anything before it on that line is junk left by a wrong Content-Length.
_CONTENT_LENGTH = re.compile(rb"content-length:\s*(\d+)\s*$", re.IGNORECASE)
# Far above a 20 MB document as JSON; a larger body is skipped unread so it cannot exhaust memory.
MAX_CONTENT_LENGTH = 128 * 1024 * 1024
_SKIP_CHUNK = 1 << 20
# The error a TCP client gets when its first message lacks the token (HTTP's 401, in JSON-RPC clothes).
UNAUTHORIZED = -32001
EXIT_GRACE_S = 2.0  # the most time the server takes to end after `exit`


class Unauthorized(Exception):
    pass


async def read_messages(reader, protocol, stop_event: threading.Event) -> None:
    """Reads framed messages until EOF or `stop_event`, answering every malformed one."""
    length: int | None = None
    while not stop_event.is_set():
        try:
            line = await reader.readline()
        except (ValueError, asyncio.LimitOverrunError):  # a header line longer than the stream's limit
            log.warning("dropped an over-long header line")
            continue
        if not line:
            return
        if line.strip():
            if match := _CONTENT_LENGTH.search(line):
                length = int(match.group(1))
            continue  # other headers (Content-Type) and junk are ignored
        if length is None:
            continue  # a blank line without a Content-Length before it: nothing to read
        size, length = length, None
        if size > MAX_CONTENT_LENGTH:
            _send_error(protocol, None, JsonRpcInvalidRequest(
                f"message of {size} bytes is over the {MAX_CONTENT_LENGTH}-byte limit; skipped"))
            await _skip(reader, size)
            continue
        try:
            body = await reader.readexactly(size)
        except asyncio.IncompleteReadError:
            return
        if len(body) < size:
            return  # EOF inside a body
        dispatch(protocol, body)


async def _skip(reader, size: int) -> None:
    while size > 0:
        try:
            chunk = await reader.readexactly(min(size, _SKIP_CHUNK))
        except asyncio.IncompleteReadError:
            return
        if not chunk:
            return
        size -= len(chunk)


def dispatch(protocol, body: bytes) -> None:
    """Decodes one body and hands it to pygls, or answers it with the right JSON-RPC error."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("parse error in a %d-byte message: %s", len(body), exc)
        _send_error(protocol, None, JsonRpcParseError(f"parse error: {exc}"))
        return
    if not isinstance(data, dict):
        kind = type(data).__name__
        _send_error(protocol, None, JsonRpcInvalidRequest(f"a message must be a JSON object, not {kind}"))
        return
    msg_id = data.get("id")
    if msg_id is not None and (isinstance(msg_id, bool) or not isinstance(msg_id, (int, str))):
        _send_error(protocol, None, JsonRpcInvalidRequest(f"invalid id {msg_id!r}: must be a number or a string"))
        return
    method = data.get("method")
    is_response = "method" not in data and ("result" in data or "error" in data) and "id" in data
    if data.get("jsonrpc") != "2.0" or (not is_response and not isinstance(method, str)):
        if "id" in data or "method" not in data:  # a notification is never answered, even a broken one
            _send_error(protocol, msg_id, JsonRpcInvalidRequest("not a JSON-RPC 2.0 request, response or notification"))
        return
    try:
        message = protocol.structure_message(data)
    except Exception as exc:  # noqa: BLE001 - params of the wrong shape
        cause = exc.__cause__ or exc
        log.warning("invalid params for %s: %s", method, cause)
        if "id" in data and not is_response:
            _send_error(protocol, msg_id, JsonRpcInvalidParams(f"invalid params for {method}: {_brief(cause)}"))
        return
    if (problem := _refusal(protocol, method, data.get("params"))) is not None:
        log.warning("invalid params for %s: %s", method, problem)
        if "id" in data and not is_response:
            _send_error(protocol, msg_id, JsonRpcInvalidParams(f"invalid params for {method}: {problem}"))
        return
    try:
        protocol.handle_message(message)
    except Exception as exc:  # noqa: BLE001 - pygls answers handler errors; this is anything before that
        log.exception("%s failed before its handler ran", method)
        if "id" in data and not is_response:
            _send_error(protocol, msg_id, JsonRpcInternalError(f"{method} failed: {exc}"))


def _refusal(protocol, method: str, params) -> str | None:
    """Why pygls's own document store would raise on this well-typed message, or None. It runs before any handler
    of ghostls's, so its failures would reach the client as an internal error (a notification's as an "Error in
    server" pop-up): a `uri` that is no URI, a change to a document never opened."""
    if (problem := _unparsable_uri(params)) is not None:
        return problem
    if method == "textDocument/didChange":
        uri = params["textDocument"]["uri"]  # the params were structured: the shape is right
        try:
            known = unquote(uri) in protocol.workspace.text_documents
        except RuntimeError:  # no workspace before `initialize`
            known = False
        if not known:
            return f"a change to {uri}, which is not open"
    return None


def _unparsable_uri(params, depth: int = 0) -> str | None:
    """Says which `uri` in the params (a document's, a watched file's, a workspace folder's) is no URI at all."""
    if depth > 8:
        return None
    if isinstance(params, dict):
        uri = params.get("uri")
        if isinstance(uri, str):
            try:
                urlsplit(uri)
            except ValueError as exc:
                return f"{uri!r} is not a URI ({exc})"
        children = params.values()
    elif isinstance(params, list):
        children = params
    else:
        return None
    for child in children:
        if (problem := _unparsable_uri(child, depth + 1)) is not None:
            return problem
    return None


def _brief(exc: BaseException) -> str:
    # cattrs groups nest one error per field; their messages name the field that failed.
    parts = [str(exc)]
    for sub in getattr(exc, "exceptions", ()):
        parts.append(_brief(sub))
    return "; ".join(p for p in parts if p)[:500]


def _send_error(protocol, msg_id, error) -> None:
    protocol._send_data({"jsonrpc": "2.0", "id": msg_id,
                         "error": {"code": error.code, "message": error.message}})


def _authorize(protocol, body: bytes, token: str) -> bytes:
    """The first message with the token checked and taken out, or Unauthorized after answering it."""
    try:
        data = json.loads(body)
        options = data["params"].get("initializationOptions") or {}
        offered = options.pop("ghostlsToken", None) if isinstance(options, dict) else None
        ok = data.get("method") == "initialize" and isinstance(offered, str) and hmac.compare_digest(
            offered.encode(), token.encode())
    except (ValueError, KeyError, TypeError, AttributeError):
        data, ok = None, False
    if not ok:
        msg_id = data.get("id") if isinstance(data, dict) else None
        protocol._send_data({"jsonrpc": "2.0", "id": msg_id, "error": {
            "code": UNAUTHORIZED, "message": "401 Unauthorized: the first message must be `initialize` with "
                                             "initializationOptions.ghostlsToken set to the server's token"}})
        raise Unauthorized()
    return json.dumps(data).encode()


# -- transports ---------------------------------------------------------------------------------------------
def serve_stdio(server) -> int:
    """pygls's start_io, with this module's read loop. Returns the exit code (LSP: 0 after `shutdown`, else 1)."""
    server._stop_event = stop = threading.Event()
    server.protocol.set_writer(StdoutWriter(sys.stdout.buffer))
    code = 0
    try:
        asyncio.run(read_messages(_BoundedStdin(sys.stdin.buffer, server.thread_pool), server.protocol, stop))
    except BrokenPipeError:
        log.error("the client closed the connection; shutting down")
    except KeyboardInterrupt:
        pass
    except SystemExit as exc:  # pygls's `exit` handler
        code = _exit_code(exc)
        _exit_within(code, EXIT_GRACE_S)
    finally:
        server.shutdown()
    return code


class _BoundedStdin(StdinAsyncReader):
    """pygls's stdin reader, except that a header line is read at most 64 KiB at a time: junk without a newline
    arrives as several junk lines instead of one unbounded allocation."""

    def readline(self):
        return self.loop.run_in_executor(self.executor, self.stdin.readline, 1 << 16)


def serve_tcp(server, host: str, port: int, token: str | None = None) -> int:
    """One LSP client over TCP. With a token, a connection that does not present it is answered 401 and
    closed without touching the session; the server keeps listening for the right client. Returns the exit code."""
    server._stop_event = stop = threading.Event()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        protocol = server.protocol
        if token is not None:
            # Answer a stranger on its own socket; the session's writer changes only once it is authorized.
            protocol = _Scratch(writer)
        try:
            if token is not None:
                first = await _first_body(reader)
                if first is None:
                    return
                body = _authorize(protocol, first, token)
                protocol = server.protocol
            server.protocol.set_writer(writer)
            log.info("client %s connected", peer)
            if token is not None:
                dispatch(protocol, body)
            await read_messages(reader, server.protocol, stop)
            server.shutdown()  # the one client left: as with stdio, the server ends with it
        except Unauthorized:
            log.warning("refused a TCP client without the token from %s", peer)
        finally:
            writer.close()

    async def listen() -> None:
        server._server = await asyncio.start_server(connection, host, port)
        log.info("serving on %s", ", ".join(str(s.getsockname()) for s in server._server.sockets))
        async with server._server:
            await server._server.serve_forever()

    try:
        asyncio.run(listen())
    except (asyncio.CancelledError, KeyboardInterrupt):
        pass
    except SystemExit as exc:  # pygls's `exit` handler
        code = _exit_code(exc)
        _exit_within(code, EXIT_GRACE_S)
        return code
    return 0


def _exit_code(exc: SystemExit) -> int:
    return exc.code if isinstance(exc.code, int) else 0


def _exit_within(code: int, seconds: float) -> None:
    """Ends the process with `code` `seconds` from now unless it has ended by then. After `exit` the server
    must leave (LSP); what runs after it (pygls's thread pool waiting for its tasks, a model load inside
    onnxruntime) may not hold it: under load a server has been seen still running 5 s after `exit`, in a wait
    that could not be reproduced to find which."""
    timer = threading.Timer(seconds, os._exit, args=(code,))
    timer.daemon = True
    timer.start()


async def _first_body(reader: asyncio.StreamReader, limit: int = 1 << 20) -> bytes | None:
    length = None
    while True:
        line = await reader.readline()
        if not line:
            return None
        if line.strip():
            if match := _CONTENT_LENGTH.search(line):
                length = int(match.group(1))
            continue
        if length is not None:
            if length > limit:
                return b"{}"  # an initialize is never this large: refuse without reading it
            try:
                return await reader.readexactly(length)
            except asyncio.IncompleteReadError:
                return None


class _Scratch:
    """Just enough of a protocol to answer an unauthorized peer on its own socket."""

    def __init__(self, writer: asyncio.StreamWriter):
        self._writer = writer

    def _send_data(self, data: dict) -> None:
        body = json.dumps(data).encode()
        self._writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
