"""A real LSP client for the benchmark scripts and `ghostls eval`: starts `ghostls serve --stdio` and tells when its model is ready."""

from __future__ import annotations

import asyncio
import sys

from lsprotocol import types
from pygls.lsp.client import LanguageClient


async def start_server(name: str, model: str | None) -> tuple[LanguageClient, asyncio.Event]:
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
    command = [sys.executable, "-m", "ghostls.cli.main", "serve", "--stdio", "--log-level", "warning"]
    if model:
        command += ["--model", model]
    await client.start_io(*command)
    return client, ready
