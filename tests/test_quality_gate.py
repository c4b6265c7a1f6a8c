"""The quality gate: the embedded default model, through the real server, on a fixed set of holes.

The holes (tests/fixtures/quality/holes.toml) are cut from four small files, one each in Python, TypeScript, Go
and Rust; the server answers greedily with a time budget no CI machine reaches, so the answers are the same on
every run. The floors sit just under what the shipped model scores: a kernel, fold, precision or
post-processing change that breaks completions fails here, not in a user's editor. A change that moves a hole
on purpose updates holes.toml (`expect` says which holes must come back exactly) and says so.

Mutations of the shipped ops that fail it (each built into a separate cache, the model folder's copy of the ops
swapped for the mutant): Int8MatMul's activations quantized with a scale of amax / 100 instead of amax / 127
(exact holes lost, answers rejected by the syntax guard); the activations truncated instead of rounded to the
nearest (two exact holes lost: `float` became `int`, `shift()` became `pop()`).
"""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

import pytest

from ghostls.cli.evaluate import FULL, Hole, body_hole_at, evaluate_holes, line_hole_at, summarize

pytestmark = pytest.mark.embedded

QUALITY = Path(__file__).parent / "fixtures" / "quality"
GATE = tomllib.loads((QUALITY / "holes.toml").read_text())


def gate_holes() -> list[Hole]:
    """The holes of holes.toml: `line` is 1-based; a body hole's `line` is its function's signature line."""
    holes = []
    for entry in GATE["hole"]:
        path = QUALITY / entry["file"]
        text = path.read_text()
        if entry["kind"] == "function_body":
            hole = body_hole_at(path, text, entry["line"] - 1)
        else:
            hole = line_hole_at(path, text, entry["line"] - 1, entry["column"])
        assert hole is not None and hole.kind == entry["kind"], entry
        holes.append(hole)
    return holes


def test_the_holes_are_what_the_gate_says():
    """The data itself: each hole is of its kind and cuts what holes.toml names (a fixture edit that shifts a
    line would otherwise gate on the wrong text)."""
    for entry, hole in zip(GATE["hole"], gate_holes()):
        assert hole.expected.startswith(entry["starts"]), (entry, hole.expected)


def test_the_default_model_completes_the_fixed_holes(embedded_model_dir):
    holes = gate_holes()
    rows = asyncio.run(evaluate_holes(QUALITY, holes, {FULL: {}}, str(embedded_model_dir), None,
                                      lambda *args: None, time_budget_ms=120_000, prompt_tokens=None))[FULL]
    summary = summarize(rows)
    seen = "\n".join(f"{row['file'].rsplit('/', 1)[-1]}:{row['line']} {row['kind']}: expected "
                     f"{row['expected']!r}, got {row['got']!r} ({row['reason']})" for row in rows)
    assert summary["errors"] == 0 and summary["empty"] == 0, seen
    assert summary["syntax_breaking"] == 0, seen
    missed = [row for entry, row in zip(GATE["hole"], rows) if entry.get("expect") == "exact" and not row["exact"]]
    assert len(missed) <= GATE["floors"]["exact_misses"], seen
    assert summary["exact_match"] >= GATE["floors"]["exact_match"], seen
    assert summary["edit_similarity"] >= GATE["floors"]["edit_similarity"], seen
