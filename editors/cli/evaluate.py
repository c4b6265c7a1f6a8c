"""`ghostls eval`: cut holes in repositories, ask the real server over LSP, and score what comes back.

Hole kinds: the rest of a line (from a random column), a whole line (after its indentation) and a function body
(found with tree-sitter). Scores: exact match, edit similarity, first-line match, syntax-breaking rate (the merged
file gains ERROR/MISSING nodes over the holed file), empty rate, latency; side by side with a naive peer on the
same weights (the prefix only, no context, first line only, no post-processing), and an ablation that turns off
each post-processing rule and the cross-file context in turn. Reads the repository; never writes to it.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Configurations of the real server, sent with workspace/didChangeConfiguration before each request.
FULL = "ghostls"
CONFIGS: dict[str, dict] = {
    FULL: {},
    "no cross-file context": {"workspaceContext": False},
    "no token healing": {"skipRules": ["heal"]},
    "no next-line rule": {"skipRules": ["next_line"]},
    "no block rule": {"skipRules": ["block"]},
    "no suffix rules": {"skipRules": ["suffix"]},
    "no indentation fix": {"skipRules": ["indent"]},
    "no loop cut": {"skipRules": ["repetition"]},
    "no syntax guard": {"skipRules": ["syntax"]},
}
NAIVE = "naive peer"
KINDS = ("rest_of_line", "whole_line", "function_body")
MAX_FILE_BYTES = 200_000
MAX_BODY_LINES = 10


@dataclass(frozen=True)
class Hole:
    path: Path
    kind: str
    text: str  # the file with the hole cut out
    line: int  # 0-based cursor line
    column: int  # cursor column, in characters
    expected: str


# -- holes --------------------------------------------------------------------------------------------------


def source_files(root: Path) -> list[Path]:
    """Files the server would index: a known language, not ignored, not secret, not huge."""
    from ghostls.parsers.ignore import IgnoreRules
    from ghostls.parsers.languages import PLAINTEXT, rules_for

    ignore = IgnoreRules((root,))
    found = []
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not ignore.is_ignored(os.path.join(directory, d) + os.sep))
        for name in sorted(filenames):
            path = os.path.join(directory, name)
            if rules_for(None, path) is PLAINTEXT or ignore.is_ignored(path):
                continue
            if 400 < os.path.getsize(path) <= MAX_FILE_BYTES:
                found.append(Path(path))
    return found


def cut_line_hole(path: Path, text: str, rng: random.Random, whole: bool) -> Hole | None:
    """A random line's rest from a random column (`whole`: from its indentation)."""
    lines = text.split("\n")
    candidates = [i for i, line in enumerate(lines) if len(line.strip()) > 8 and i > 3]
    if not candidates:
        return None
    index = rng.choice(candidates)
    line = lines[index]
    indent = len(line) - len(line.lstrip())
    return line_hole_at(path, text, index, indent if whole else rng.randint(indent + 1, len(line.rstrip()) - 1))


def line_hole_at(path: Path, text: str, line: int, column: int) -> Hole:
    """Line `line` (0-based) cut from `column` to its end; a whole-line hole when `column` is its indentation."""
    lines = text.split("\n")
    content = lines[line]
    indent = len(content) - len(content.lstrip())
    lines[line] = content[:column]
    kind = "whole_line" if column == indent else "rest_of_line"
    return Hole(path, kind, "\n".join(lines), line, column, content[column:].rstrip())


def cut_body_hole(path: Path, text: str, rng: random.Random) -> Hole | None:
    """A random small function's body, cut out whole (see body_hole_at)."""
    from ghostls.parsers.document import Document

    found = _small_functions(Document(path.as_uri(), None, 1, text))
    return _body_hole(path, text, rng.choice(sorted(found)), found) if found else None


def body_hole_at(path: Path, text: str, signature_line: int) -> Hole | None:
    """The body of the small function whose signature ends on `signature_line` (0-based), cut out whole; the
    cursor sits on an indented empty line under the signature. None where no such function starts there."""
    from ghostls.parsers.document import Document

    found = _small_functions(Document(path.as_uri(), None, 1, text))
    return _body_hole(path, text, signature_line, found) if signature_line in found else None


def _body_hole(path: Path, text: str, signature_line: int, found: dict[int, int]) -> Hole:
    lines = text.split("\n")
    first, size = signature_line, found[signature_line]
    body = lines[first + 1 : first + 1 + size]
    indent = body[0][: len(body[0]) - len(body[0].lstrip())]
    expected = "\n".join(line.rstrip() for line in body)[len(indent) :]
    holed = lines[: first + 1] + [indent] + lines[first + 1 + size :]
    return Hole(path, "function_body", "\n".join(holed), first + 1, len(indent), expected.rstrip())


def _small_functions(document) -> dict[int, int]:
    """Signature line -> body line count, for each function of 2 to MAX_BODY_LINES lines whose signature line
    opens its block; the body excludes a closing line ("}", "end") in languages that have one."""
    from ghostls.parsers.postprocess import ends_with_opener

    if document.tree is None:
        return {}
    rules = document.language
    lines = document.text.split("\n")
    found: dict[int, int] = {}
    stack = [document.tree.root_node]
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.type not in rules.scope_nodes or node.child_by_field_name("body") is None:
            continue
        first, last = node.start_point[0], node.end_point[0]
        if not 2 <= last - first <= MAX_BODY_LINES or not ends_with_opener(lines[first], rules.block_openers):
            continue
        body = lines[first + 1 : last + 1]
        if not rules.indent_blocks:
            body = body[:-1]  # the closing line ("}", "end") stays
        if body and body[0].strip():
            found[first] = len(body)
    return found


def make_holes(root: Path, limit: int, seed: int) -> list[Hole]:
    rng = random.Random(seed)
    files = source_files(root)
    if not files:
        raise SystemExit(f"ghostls eval: no source files of a known language under {root}")
    holes: list[Hole] = []
    attempts = 0
    while len(holes) < limit and attempts < limit * 20:
        attempts += 1
        kind = KINDS[len(holes) % len(KINDS)]
        path = rng.choice(files)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if kind == "function_body":
            hole = cut_body_hole(path, text, rng)
        else:
            hole = cut_line_hole(path, text, rng, whole=kind == "whole_line")
        if hole is not None and hole.expected.strip() and (hole.path, hole.line) not in {(h.path, h.line) for h in holes}:
            holes.append(hole)
    return holes


# -- scoring ------------------------------------------------------------------------------------------------


def _normalize(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n")).strip()


def syntax_breaks(hole: Hole, completion: str) -> bool:
    """True when the file with the completion merged in has more ERROR/MISSING nodes than the holed file."""
    from ghostls.parsers.document import Document
    from ghostls.parsers.postprocess import error_count

    if not completion:
        return False
    before = Document(hole.path.as_uri(), None, 1, hole.text)
    if before.tree is None:
        return False
    offset = before.snapshot().offset_at(hole.line, hole.column)
    merged = Document(hole.path.as_uri(), None, 1, hole.text[:offset] + completion + hole.text[offset:])
    return error_count(merged.tree.root_node, 10_000) > error_count(before.tree.root_node, 10_000)


def score(hole: Hole, completion: str, latency_s: float, error: str | None = None, reason: str = "") -> dict:
    from ghostls.parsers.languages import rules_for

    got, want = _normalize(completion), _normalize(hole.expected)
    return {
        "kind": hole.kind, "language": rules_for(None, hole.path.as_uri()).name, "file": str(hole.path),
        "line": hole.line + 1, "latency_s": latency_s, "error": error,
        "reason": reason,  # the server's own account of the answer (ghostls/explain), for reading the report
        "empty": not got, "exact": got == want,
        "first_line": got.split("\n", 1)[0].strip() == want.split("\n", 1)[0].strip(),
        "similarity": difflib.SequenceMatcher(None, got, want).ratio(),
        "breaks_syntax": syntax_breaks(hole, completion),
        # The texts, for reading the JSON report (it stays on the user's machine).
        "expected": hole.expected, "got": completion,
    }


def summarize(rows: list[dict]) -> dict:
    if not rows:
        return {}
    latencies = sorted(r["latency_s"] for r in rows)
    body = [r for r in rows if r["kind"] == "function_body"]
    return {
        "holes": len(rows),
        "exact_match": round(sum(r["exact"] for r in rows) / len(rows), 3),
        "edit_similarity": round(statistics.mean(r["similarity"] for r in rows), 3),
        "first_line_match": round(sum(r["first_line"] for r in rows) / len(rows), 3),
        "syntax_breaking": round(sum(r["breaks_syntax"] for r in rows) / len(rows), 3),
        "syntax_breaking_blocks": round(sum(r["breaks_syntax"] for r in body) / len(body), 3) if body else None,
        "empty": round(sum(r["empty"] for r in rows) / len(rows), 3),
        "errors": sum(1 for r in rows if r["error"]),
        "latency_p50_s": round(statistics.median(latencies), 2),
        "latency_p90_s": _percentile(latencies, 0.90),
        "latency_p95_s": _percentile(latencies, 0.95),
    }


def _percentile(ordered: list[float], q: float) -> float:
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def group(rows: dict[str, list[dict]], key: str) -> dict[str, dict[str, dict]]:
    """Summaries per value of `key` ("language" or "kind"), each with every configuration's summary."""
    values = sorted({row[key] for per in rows.values() for row in per})
    return {value: {name: summarize([r for r in per if r[key] == value]) for name, per in rows.items()}
            for value in values}


# -- the naive peer ------------------------------------------------------------------------------------------


class NaivePeer:
    """The same weights, used the simple way: the prefix's last tokens, greedy, the first line of what comes."""

    def __init__(self, model_dir: Path, budget: int = 1024, time_budget_s: float = 8.0) -> None:
        from ghostls.inference.engine import Engine

        self.engine, self.budget, self.time_budget_s = Engine(model_dir, "cpu"), budget, time_budget_s

    def complete(self, hole: Hole) -> str:
        from ghostls.inference.engine import GenerationRequest

        lines = hole.text.split("\n")
        prefix = "\n".join(lines[: hole.line] + [lines[hole.line][: hole.column]])
        ids = self.engine.encode(prefix)[-self.budget :]
        generation = self.engine.generate(GenerationRequest(tuple(ids), max_new_tokens=48,
                                                            time_budget_s=self.time_budget_s),
                                          is_complete=lambda text: "\n" in text.lstrip("\n"))
        return generation.text.lstrip("\n").split("\n", 1)[0].rstrip()


# -- the run -------------------------------------------------------------------------------------------------


async def evaluate_holes(root: Path, holes: list[Hole], configs: dict[str, dict], model: str | None,
                         naive: NaivePeer | None, progress, time_budget_ms: int,
                         prompt_tokens: int | None, settings: dict | None = None) -> dict[str, list[dict]]:
    """Scored rows per configuration (and the naive peer's), from a real `ghostls serve` whose workspace is
    `root`; `progress(done, total, rows)` after each request."""
    from lsprotocol import types

    from ghostls.cli.lsp_client import start_server
    from ghostls.parsers.languages import rules_for

    client, _ = await start_server("ghostls-eval", model)
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(), root_uri=root.as_uri(),
        workspace_folders=[types.WorkspaceFolder(uri=root.as_uri(), name=root.name)],
        initialization_options={"loadWaitMs": 3_600_000, "debounceMs": 0, "timeBudgetMs": time_budget_ms,
                                **({"maxPromptTokens": prompt_tokens} if prompt_tokens else {})}))
    client.initialized(types.InitializedParams())
    # Let the index finish, so every hole sees the same workspace.
    for _ in range(600):
        status = (await client.protocol.send_request_async("ghostls/explain", None)).workspace
        if status.state == "ready":
            break
        await asyncio.sleep(0.1)

    rows: dict[str, list[dict]] = {name: [] for name in (*configs, *([NAIVE] if naive else []))}
    total = len(holes) * len(configs)
    # One pass over the holes per configuration, each hole in a document opened for its request and closed after
    # it: every configuration meets the same server state (the index, recent edits, no typed-through or
    # speculated answer, no KV cache from the configuration before), so the rows differ by their setting only.
    for number, (name, options) in enumerate(configs.items()):
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"ghostls": {"skipRules": [], **(settings or {}), **options}}))
        for index, hole in enumerate(holes):
            uri = hole.path.as_uri()
            rules = rules_for(None, uri)
            client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
                uri=uri, language_id=rules.language_ids[0] if rules.language_ids else "plaintext", version=1,
                text=hole.text)))
            started = time.perf_counter()
            error, got = None, ""
            try:
                answer = await client.text_document_inline_completion_async(types.InlineCompletionParams(
                    context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
                    text_document=types.TextDocumentIdentifier(uri), position=types.Position(hole.line, hole.column)))
                got = answer.items[0].insert_text if answer and answer.items else ""
            except Exception as exc:  # noqa: BLE001 - an error is a result here
                error = str(exc)
            latency = time.perf_counter() - started
            explained = await client.protocol.send_request_async("ghostls/explain", None)
            # A backend that failed (a remote engine's timeout, say) answers the editor with no items: an error
            # here, not a silent empty answer.
            error = error or getattr(explained.last, "error", "") or None
            rows[name].append(score(hole, got, latency, error, getattr(explained.last, "reason", "")))
            client.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri)))
            progress(number * len(holes) + index + 1, total, rows)
    # The peer runs in the same process as this client: in a pass of its own, so that it never slows (and so
    # changes the timing of) the server's passes.
    if naive is not None:
        for hole in holes:
            started = time.perf_counter()
            got = naive.complete(hole)
            rows[NAIVE].append(score(hole, got, time.perf_counter() - started))
            progress(total, total, rows)
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return rows


def report(summaries: dict[str, dict], by_language: dict[str, dict[str, dict]],
           by_kind: dict[str, dict[str, dict]], by_language_kind: dict[str, dict[str, dict]]) -> str:
    """The figures as Markdown tables: overall (with the naive peer and the ablation), then ghostls against the
    peer per language and per hole kind, then latency per language and kind."""
    keys = ("holes", "exact_match", "edit_similarity", "first_line_match", "syntax_breaking",
            "syntax_breaking_blocks", "empty", "errors", "latency_p50_s", "latency_p90_s")
    out = ["| configuration | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, summary in summaries.items():
        out.append(f"| {name} | " + " | ".join(str(summary.get(k, "")) for k in keys) + " |")
    for title, groups in (("language", by_language), ("hole kind", by_kind)):
        out += ["", f"| {title} | configuration | holes | exact_match | edit_similarity | ratio to the peer | "
                "empty | syntax_breaking | syntax_breaking_blocks |", "|---" * 9 + "|"]
        for value, per in groups.items():
            peer = per.get(NAIVE, {}).get("edit_similarity")
            for name, summary in per.items():
                ratio = (f"{summary['edit_similarity'] / peer:.2f}x" if peer and name != NAIVE and summary
                         else "")
                out.append(f"| {value} | {name} | {summary.get('holes')} | {summary.get('exact_match')} | "
                           f"{summary.get('edit_similarity')} | {ratio} | {summary.get('empty')} | "
                           f"{summary.get('syntax_breaking')} | {summary.get('syntax_breaking_blocks')} |")
    out += ["", "| language / kind | configuration | holes | latency_p50_s | latency_p90_s |", "|---|---|---|---|---|"]
    for value, per in by_language_kind.items():
        for name, summary in per.items():
            out.append(f"| {value} | {name} | {summary.get('holes')} | {summary.get('latency_p50_s')} | "
                       f"{summary.get('latency_p90_s')} |")
    return "\n".join(out)


def run(args) -> int:
    roots = [Path(repository).resolve() for repository in args.repository]
    for root in roots:
        if not root.is_dir():
            print(f"ghostls eval: {root} is not a folder", file=sys.stderr)
            return 2
    # Each repository keeps its own random stream, so adding one to a run leaves the others' holes as they were.
    holes = {root: make_holes(root, args.limit, args.seed) for root in roots}
    configs = dict(CONFIGS) if args.ablation else {FULL: CONFIGS[FULL]}
    naive = None
    if not args.no_naive:
        naive = NaivePeer(_model_dir(args.model), budget=args.max_prompt_tokens or 1024,
                          time_budget_s=args.time_budget_ms / 1000)
    rows: dict[str, list[dict]] = {name: [] for name in (*configs, *([NAIVE] if naive else []))}
    done_before = 0
    total = sum(len(h) for h in holes.values()) * len(configs)

    def progress(done: int, _total: int, current: dict) -> None:
        print(f"\r{done_before + done}/{total} requests", end="", file=sys.stderr, flush=True)
        if args.json:  # as it goes, so a long run that is stopped still leaves its figures
            partial = {name: rows[name] + current.get(name, []) for name in rows}
            Path(args.json).write_text(json.dumps({"rows": partial}, indent=1))

    # One server per repository (its workspace is that repository), each followed by the peer's pass.
    for root, repo_holes in holes.items():
        found = asyncio.run(evaluate_holes(root, repo_holes, configs, args.model, naive, progress,
                                           args.time_budget_ms, args.max_prompt_tokens, args.settings))
        for name, per in found.items():
            rows[name] += [{"repository": root.name, **row} for row in per]
        done_before += len(repo_holes) * len(configs)
    print(file=sys.stderr)
    summaries = {name: summarize(r) for name, r in rows.items()}
    by_language, by_kind = group(rows, "language"), group(rows, "kind")
    by_language_kind = group({name: [{**r, "pair": f"{r['language']} / {r['kind']}"} for r in per]
                              for name, per in rows.items()}, "pair")
    if args.json:
        Path(args.json).write_text(json.dumps({"summaries": summaries, "by_language": by_language,
                                               "by_kind": by_kind, "by_language_kind": by_language_kind,
                                               "rows": rows}, indent=1))
    print(report(summaries, by_language, by_kind, by_language_kind))
    if naive is not None and summaries[NAIVE]["edit_similarity"]:
        ratio = summaries[FULL]["edit_similarity"] / summaries[NAIVE]["edit_similarity"]
        print(f"\nedit similarity vs the naive peer: {ratio:.2f}x")
    return 0


def _model_dir(model: str | None) -> Path:
    """The converted model folder the server will use, for the naive peer's own engine."""
    if model is None:
        from ghostls.inference.embedded import ensure_embedded_model

        return ensure_embedded_model()
    path = Path(model)
    if not (path / "genai_config.json").is_file():
        raise SystemExit("ghostls eval: the naive peer needs a converted model folder (or --no-naive)")
    return path

