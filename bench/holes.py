"""Cuts holes in real source files and asks a real `ghostls serve --stdio` for inline completions.

Reports answered / empty / error rates, exact match, edit similarity and latency, the way an external
LSP client judges a completion server. A first step toward `ghostls eval` (issue 4).

    .venv/bin/python bench/holes.py [--files 20] [--seed 1] [--model DIR] [FILE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import random
import statistics
import sys
import time
from pathlib import Path

from lsprotocol import types

from ghostls.bench.lsp import start_server
from ghostls.parsers.languages import rules_for


def default_files(count: int, seed: int) -> list[Path]:
    """Python files of the standard library, a fixed sample."""
    lib = Path(argparse.__file__).parent
    files = sorted(p for p in lib.glob("*.py") if 2_000 < p.stat().st_size < 200_000)
    return random.Random(seed).sample(files, min(count, len(files)))


def cut_hole(text: str, rng: random.Random) -> tuple[str, int, int, str]:
    """Removes the rest of a line (from a random column) or a whole line; returns the new text,
    the cursor (line, column) and the removed text."""
    lines = text.split("\n")
    candidates = [i for i, line in enumerate(lines) if len(line.strip()) > 8 and i > 5]
    index = rng.choice(candidates)
    line = lines[index]
    indent = len(line) - len(line.lstrip())
    if rng.random() < 0.5:
        column = indent  # a whole line, after its indentation
    else:
        column = rng.randint(indent + 1, len(line) - 1)
    removed = line[column:]
    lines[index] = line[:column]
    return "\n".join(lines), index, column, removed


async def run(files: list[Path], seed: int, model: str | None, verbose: bool = False) -> dict:
    client, _ = await start_server("ghostls-holes", model)
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(), initialization_options={"loadWaitMs": 600_000}))
    client.initialized(types.InitializedParams())
    rng = random.Random(seed)
    rows = []
    for number, path in enumerate(files):
        text, line, column, expected = cut_hole(path.read_text(encoding="utf-8"), rng)
        uri = f"file:///holes/{number}/{path.name}"
        rules = rules_for(None, uri)
        client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
            uri=uri, language_id=rules.language_ids[0] if rules.language_ids else "plaintext", version=1,
            text=text)))
        started = time.perf_counter()
        error = None
        got = ""
        try:
            answer = await client.text_document_inline_completion_async(types.InlineCompletionParams(
                context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
                text_document=types.TextDocumentIdentifier(uri), position=types.Position(line, column)))
            got = answer.items[0].insert_text if answer and answer.items else ""
        except Exception as exc:  # noqa: BLE001 - an error is a result here
            error = str(exc)
        elapsed = time.perf_counter() - started
        explained = await client.protocol.send_request_async("ghostls/explain", None)
        reason = getattr(explained.last, "reason", "") if explained and explained.last else ""
        if verbose:
            print(f"{path.name}:{line + 1}:{column + 1} {elapsed:.2f}s [{reason}] want {expected.strip()[:40]!r} "
                  f"got {got.split(chr(10), 1)[0][:40]!r}", file=sys.stderr)
        first = got.split("\n", 1)[0]
        rows.append({"file": path.name, "latency_s": elapsed, "empty": not got and not error, "error": error,
                     "exact_line": first.strip() == expected.strip(),
                     "similarity": difflib.SequenceMatcher(None, first.strip(), expected.strip()).ratio()})
        client.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri)))
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return summarize(rows)


def summarize(rows: list[dict]) -> dict:
    latencies = sorted(r["latency_s"] for r in rows)
    return {
        "requests": len(rows),
        "errors": sum(1 for r in rows if r["error"]),
        "empty": sum(1 for r in rows if r["empty"]),
        "exact_first_line": sum(1 for r in rows if r["exact_line"]),
        "edit_similarity": round(statistics.mean(r["similarity"] for r in rows), 3),
        "latency_p50_s": round(statistics.median(latencies), 2),
        "latency_p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--files", dest="count", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per request on stderr")
    args = parser.parse_args()
    files = args.files or default_files(args.count, args.seed)
    summary = asyncio.run(run(files, args.seed, args.model, args.verbose))
    for key, value in summary.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
