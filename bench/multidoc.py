"""Typing into several documents at once, against one real `ghostls serve --stdio`.

Each simulated editor types bursts of keystrokes into its own file (a real standard-library file, opened
cut in its middle): a didChange and an automatic inlineCompletion request per keystroke, 80 ms apart,
then it waits for the answer to the burst's last request, as a person pauses to read the ghost text.
Earlier requests of a burst are superseded by the server. Reported: the latency from a burst's last
keystroke to its answer, p50 and p95, with one editor and with four at once; answers that never came
(starved); and the server's peak RSS.

    .venv/bin/python bench/multidoc.py [--editors 4] [--bursts 6] [--model DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import statistics
import sys
import time
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from ghostls.cli.lsp_client import start_server

MODULES = ("inspect", "argparse", "typing", "pathlib", "subprocess", "tarfile", "tokenize", "textwrap")


def _documents(count: int, chars: int) -> list[tuple[str, str, str]]:
    """(uri, text up to the cursor, what follows) for `count` files, cut about `chars` in."""
    docs = []
    for name in MODULES[:count]:
        source = Path(importlib.import_module(name).__file__).read_text(encoding="utf-8")
        cut = source.find("\n", chars) + 1
        cut += len(source[cut:]) - len(source[cut:].lstrip(" "))  # at the indentation of the next line
        docs.append((f"file:///bench/{name}.py", source[:cut], source[cut:]))
    return docs


def _position(text: str) -> types.Position:
    lines = text.split("\n")
    return types.Position(line=len(lines) - 1, character=len(lines[-1]))  # ASCII files: utf-16 = chars


async def _editor(client: LanguageClient, uri: str, text: str, following: str, bursts: int, burst_keys: int,
                  interval_s: float, timeout_s: float) -> list[float | None]:
    version = 1
    latencies: list[float | None] = []
    typed = 0
    for _ in range(bursts):
        pending = []
        for _ in range(burst_keys):
            ch = following[typed] if typed < len(following) else " "
            position = _position(text)
            typed += 1
            text += ch
            version += 1
            client.text_document_did_change(types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[types.TextDocumentContentChangePartial(
                    range=types.Range(position, position), text=ch)]))
            pending.append(asyncio.ensure_future(client.text_document_inline_completion_async(
                types.InlineCompletionParams(
                    context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
                    text_document=types.TextDocumentIdentifier(uri), position=_position(text)))))
            last_key = time.perf_counter()
            await asyncio.sleep(interval_s)
        try:
            await asyncio.wait_for(pending[-1], timeout_s)
            latencies.append(time.perf_counter() - last_key)
        except Exception:  # no answer in time (starved), or an error answer
            latencies.append(None)
        await asyncio.gather(*pending, return_exceptions=True)
    return latencies


async def run(editors: int, bursts: int, model: str | None, chars: int, timeout_s: float,
              settings: dict | None = None, log_level: str = "warning") -> dict:
    client, ready = await start_server("ghostls-multidoc", model, log_level)
    await client.initialize_async(types.InitializeParams(capabilities=types.ClientCapabilities(),
                                                         initialization_options={"loadWaitMs": 120_000, **(settings or {})}))
    client.initialized(types.InitializedParams())
    await asyncio.wait_for(ready.wait(), 600)
    pid = client._server.pid  # pygls keeps the server process here; only its /proc entry is read
    docs = _documents(editors, chars)
    for uri, text, _ in docs:
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)))
    started = time.perf_counter()
    per_editor = await asyncio.gather(*(
        _editor(client, uri, text, following, bursts, 5, 0.08, timeout_s)
        for i, (uri, text, following) in enumerate(docs)))
    wall = time.perf_counter() - started
    rss = _peak_rss(pid)
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    answered = [x for xs in per_editor for x in xs if x is not None]
    return {
        "editors": editors, "bursts_per_editor": bursts, "wall_s": round(wall, 2),
        "answered": len(answered), "starved": sum(x is None for xs in per_editor for x in xs),
        "p50_s": round(statistics.median(answered), 3) if answered else None,
        "p95_s": round(_pct(answered, 0.95), 3) if answered else None,
        "per_editor_max_s": [round(max((x for x in xs if x is not None), default=0), 3) for xs in per_editor],
        "latencies_s": [[None if x is None else round(x, 2) for x in xs] for xs in per_editor],
        "server_peak_rss_mib": round(rss / 2**20, 1),
    }


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--editors", type=int, default=4)
    parser.add_argument("--bursts", type=int, default=6, help="bursts of 5 keystrokes per editor")
    parser.add_argument("--chars", type=int, default=6000, help="where each file is cut (characters)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before an answer counts as starved")
    parser.add_argument("--model")
    parser.add_argument("--settings", type=json.loads, default={}, help='server settings, e.g. \'{"kvCacheMb": 128}\'')
    parser.add_argument("--log-level", default="warning", help="the server's, on stderr (info: one line per answer)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    single = asyncio.run(run(1, args.bursts, args.model, args.chars, args.timeout, args.settings, args.log_level))
    multi = asyncio.run(run(args.editors, args.bursts, args.model, args.chars, args.timeout, args.settings,
                            args.log_level))
    ratio = round(multi["p95_s"] / single["p95_s"], 2) if multi["p95_s"] and single["p95_s"] else None
    report = {"settings": args.settings, "single": single, "multi": multi, "p95_ratio": ratio}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for label, r in (("1 editor", single), (f"{args.editors} editors", multi)):
            print(f"{label}: p50 {r['p50_s']} s, p95 {r['p95_s']} s, answered {r['answered']}, "
                  f"starved {r['starved']}, server peak RSS {r['server_peak_rss_mib']} MiB, wall {r['wall_s']} s")
        print(f"p95 with {args.editors} editors / p95 with one: {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
