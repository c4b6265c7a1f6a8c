"""Start-up of `ghostls serve --stdio` with an already converted model: from process start to the
model being ready, and to the first completion answered.

    .venv/bin/python bench/startup.py [--model DIR] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from lsprotocol import types

from ghostls.cli.lsp_client import start_server

SOURCE = "import os\n\n\ndef list_python_files(folder):\n    "


async def one_run(model: str | None) -> tuple[float, float, float]:
    started = time.perf_counter()
    client, ready = await start_server("ghostls-startup", model)
    await client.initialize_async(types.InitializeParams(capabilities=types.ClientCapabilities(),
                                                         initialization_options={"loadWaitMs": 60_000}))
    initialized = time.perf_counter() - started
    client.initialized(types.InitializedParams())
    await ready.wait()
    ready_s = time.perf_counter() - started
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        types.TextDocumentItem(uri="file:///s.py", language_id="python", version=1, text=SOURCE)))
    await client.text_document_inline_completion_async(types.InlineCompletionParams(
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
        text_document=types.TextDocumentIdentifier("file:///s.py"), position=types.Position(4, 4)))
    first_s = time.perf_counter() - started
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return initialized, ready_s, first_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    runs = [asyncio.run(one_run(args.model)) for _ in range(args.runs)]
    for name, index in (("initialize answered", 0), ("model ready", 1), ("first completion", 2)):
        values = [r[index] for r in runs]
        print(f"{name}: median {statistics.median(values):.2f}s (min {min(values):.2f}, max {max(values):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
