"""A real LSP client for `ghostls eval` and the scripts in bench/: starts `ghostls serve --stdio` and tells when
its model is ready. It drives the server only over the wire, as an editor does."""

from __future__ import annotations

import asyncio
import sys

from lsprotocol import types
from pygls.lsp.client import LanguageClient


async def start_server(name: str, model: str | None, log_level: str = "warning") -> tuple[LanguageClient, asyncio.Event]:
    """A client talking to a fresh server process, and an event set once `ghostls/status` says ready (or error).
    The caller sends `initialize` itself, so that it can time it."""
    client = LanguageClient(name, "0")
    ready = asyncio.Event()
    loop = asyncio.get_running_loop()

    @client.feature("ghostls/status")
    def _status(params):
        if params.state in ("ready", "error"):
            loop.call_soon_threadsafe(ready.set)

    @client.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
    def _create(params):
        return None

    for method in (types.PROGRESS, types.WINDOW_LOG_MESSAGE, types.WINDOW_SHOW_MESSAGE):
        client.feature(method)(lambda params: None)
    command = [sys.executable, "-m", "ghostls.cli.main", "serve", "--stdio", "--log-level", log_level]
    if model:
        command += ["--model", model]
    await client.start_io(*command)
    # pygls pipes the server's stderr and never reads it: a chatty server would block once the pipe fills.
    # Pass it through instead (the server's log, at `log_level`).
    client._stderr_drain = asyncio.ensure_future(_pass_through(client._server.stderr))
    return client, ready


async def _pass_through(stream: asyncio.StreamReader) -> None:
    while line := await stream.readline():
        sys.stderr.write(line.decode("utf-8", "replace"))
