"""A bounded load test on loopback: N simulated editors typing against one OpenAI-compatible engine.

Each editor is a real LSP client driving its own `ghostls serve --stdio` (configured with the remote backend),
so the figures include ghostls's prompt building, streaming, cancellation and post-processing. All the
ghostls servers share one llama.cpp server (llama-cpp-python, the embedded SmolLM2 GGUF) on 127.0.0.1.

An editor types like VS Code drives a server: each keystroke is a didChange, a `$/cancelRequest` for the
request still pending, and a new automatic inlineCompletion request. It types bursts of keystrokes
(`--interval` apart) with a pause after each burst, during which the last request can finish.

    .venv/bin/python bench/remote_load.py [--editors 8] [--bursts 3] [--burst 6] [--pause 3] [--prompt-tokens 384]

Counts: answered (shown or empty, for the version it was asked for), cancelled (the client cancelled it
before an answer), stale (an answer that came for an older version: ContentModified, or text after the
next keystroke), errors. Latency: keystroke to answer, for answered requests only.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.client import LanguageClient

from ghostls.cli.llama_server import running_llama_server

def pick_lines(count: int, seed: int) -> list[tuple[Path, int]]:
    """One line (with at least 24 chars after its indentation) per editor, from standard-library files."""
    lib = Path(argparse.__file__).parent
    files = sorted(p for p in lib.glob("*.py") if 4_000 < p.stat().st_size < 100_000)
    rng = random.Random(seed)
    chosen = []
    for path in rng.sample(files, count):
        lines = path.read_text(encoding="utf-8").split("\n")
        candidates = [i for i, line in enumerate(lines) if len(line.strip()) >= 24 and i > 10]
        chosen.append((path, rng.choice(candidates)))
    return chosen


async def editor(number: int, path: Path, line: int, url: str, args, rows: list[dict]) -> None:
    client = LanguageClient(f"editor-{number}", "0")

    @client.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
    def _create(params):
        return None

    for method in (types.PROGRESS, types.WINDOW_LOG_MESSAGE, types.WINDOW_SHOW_MESSAGE, "ghostls/status"):
        client.feature(method)(lambda params: None)

    await client.start_io(sys.executable, "-m", "ghostls.cli.main", "serve", "--stdio", "--log-level", "warning")
    await client.initialize_async(types.InitializeParams(capabilities=types.ClientCapabilities(),
                                                         initialization_options={
        "backend": {"kind": "remote", "url": url, "model": "smollm2-135m-instruct", "timeoutMs": 60_000},
        "maxNewTokens": args.max_tokens, "maxPromptTokens": args.prompt_tokens, "timeBudgetMs": 60_000,
        "debounceMs": args.debounce_ms}))
    client.initialized(types.InitializedParams())

    lines = path.read_text(encoding="utf-8").split("\n")
    target = lines[line]
    column = len(target) - len(target.lstrip())
    typed = target[column:]
    lines[line] = target[:column]
    uri = f"file:///load/{number}/{path.name}"
    version = 1
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        types.TextDocumentItem(uri=uri, language_id="python", version=version, text="\n".join(lines))))
    rng = random.Random(number)
    pending: dict[str, dict] = {}
    state = {"version": version}

    async def ask(at_version: int, character: int) -> None:
        msg_id = str(uuid.uuid4())
        row = {"editor": number, "version": at_version, "sent": time.perf_counter(), "outcome": "lost"}
        rows.append(row)
        pending[msg_id] = row
        try:
            answer = await client.protocol.send_request_async(
                types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionParams(
                    context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
                    text_document=types.TextDocumentIdentifier(uri), position=types.Position(line, character)),
                msg_id=msg_id)
            row["latency_s"] = time.perf_counter() - row["sent"]
            if row.get("cancelled"):
                row["outcome"] = "cancelled"
            elif state["version"] != at_version and answer and answer.items:
                row["outcome"] = "stale"
            else:
                row["outcome"] = "shown" if answer and answer.items else "empty"
        except JsonRpcException as exc:
            row["latency_s"] = time.perf_counter() - row["sent"]
            if row.get("cancelled"):
                row["outcome"] = "cancelled"
            elif "changed" in str(exc):
                row["outcome"] = "stale"
            else:
                row["outcome"], row["error"] = "error", str(exc)
        finally:
            pending.pop(msg_id, None)

    tasks = []
    position = 0
    for _ in range(args.bursts):
        for _ in range(args.burst):
            if position >= len(typed):
                break
            char = typed[position]
            version += 1
            state["version"] = version
            client.text_document_did_change(types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[types.TextDocumentContentChangePartial(
                    range=types.Range(types.Position(line, column + position),
                                      types.Position(line, column + position)), text=char)]))
            position += 1
            for msg_id, row in list(pending.items()):  # as VS Code does: cancel what the keystroke outdated
                row["cancelled"] = True
                client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=msg_id))
            tasks.append(asyncio.ensure_future(ask(version, column + position)))
            await asyncio.sleep(args.interval * rng.uniform(0.7, 1.3))
        await asyncio.sleep(args.pause)
    await asyncio.wait_for(asyncio.gather(*tasks), args.max_seconds)
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()


def summarize(rows: list[dict], wall_s: float) -> dict:
    latencies = sorted(r["latency_s"] for r in rows if r["outcome"] in ("shown", "empty"))

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2) if latencies else float("nan")

    count = {outcome: sum(1 for r in rows if r["outcome"] == outcome)
             for outcome in ("shown", "empty", "cancelled", "stale", "error", "lost")}
    return {"requests": len(rows), **count, "latency_p50_s": pct(0.5), "latency_p95_s": pct(0.95),
            "latency_mean_s": round(statistics.mean(latencies), 2) if latencies else float("nan"),
            "wall_s": round(wall_s, 1)}


async def run(args) -> dict:
    from ghostls.inference.embedded import embedded_gguf_path

    rows: list[dict] = []
    with running_llama_server(embedded_gguf_path(), n_threads=args.engine_threads, wait_s=180) as url:
        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(
            editor(i, path, line, url, args, rows) for i, (path, line) in enumerate(pick_lines(args.editors, args.seed)))),
            args.max_seconds)
        wall = time.perf_counter() - started
    for row in rows if args.verbose else ():
        print(row, file=sys.stderr)
    return summarize(rows, wall)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--editors", type=int, default=8)
    parser.add_argument("--bursts", type=int, default=3, help="bursts of typing per editor")
    parser.add_argument("--burst", type=int, default=6, help="keystrokes per burst")
    parser.add_argument("--interval", type=float, default=0.15, help="seconds between keystrokes (±30%%)")
    parser.add_argument("--pause", type=float, default=3.0, help="seconds of pause after each burst")
    parser.add_argument("--debounce-ms", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=384)
    parser.add_argument("--engine-threads", type=int, default=1,
                        help="llama.cpp threads; 1 ran faster than 2 on the shared 2-core machine")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=600, help="bound on the whole run")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    summary = asyncio.run(run(args))
    for key, value in summary.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
