"""`ghostls eval`: holes cut from real files, scored with real tree-sitter parses; and one real run over LSP."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from ghostls.cli.evaluate import NAIVE, Hole, cut_body_hole, cut_line_hole, group, make_holes, report, score, summarize

FIXTURE = Path(__file__).parent / "fixtures" / "workspace"
GEOMETRY = FIXTURE / "shapes" / "geometry.py"
QUALITY = Path(__file__).parent / "fixtures" / "quality"  # one small file each in Python, TypeScript, Go, Rust


def test_line_holes_remove_the_rest_of_a_line():
    text = GEOMETRY.read_text()
    for seed in range(20):
        hole = cut_line_hole(GEOMETRY, text, random.Random(seed), whole=seed % 2 == 0)
        lines = hole.text.split("\n")
        assert lines[hole.line][: hole.column] + hole.expected == text.split("\n")[hole.line].rstrip()
        assert len(lines[hole.line]) == hole.column
        if hole.kind == "whole_line":
            assert not lines[hole.line].strip()


def test_body_holes_remove_a_whole_small_body():
    text = GEOMETRY.read_text()
    hole = cut_body_hole(GEOMETRY, text, random.Random(3))
    assert hole.kind == "function_body"
    lines = hole.text.split("\n")
    indent = lines[hole.line]
    assert not indent.strip() and len(indent) == hole.column
    assert lines[hole.line - 1].rstrip().endswith(":")
    # Putting the expected body back at the cursor gives the original file.
    restored = lines[: hole.line] + [indent + hole.expected] + lines[hole.line + 1 :]
    assert "\n".join(restored) == text
    assert hole.expected.count("\n") >= 1


def test_make_holes_cycles_kinds_and_skips_ignored_files():
    holes = make_holes(FIXTURE, 6, seed=2)
    assert [h.kind for h in holes] == ["rest_of_line", "whole_line", "function_body"] * 2
    assert len({(h.path, h.line) for h in holes}) == len(holes)  # no hole twice
    assert all("generated" not in h.path.parts and "private" not in h.path.parts for h in holes)


def test_scores():
    hole = Hole(Path("/t/a.py"), "whole_line", "def f(x):\n    \n", 1, 4, "return x + 1")
    right = score(hole, "return x + 1", 0.5)
    assert right["exact"] and right["first_line"] and right["similarity"] == 1.0 and not right["breaks_syntax"]
    broken = score(hole, "return (x + 1", 0.5)
    assert broken["breaks_syntax"] and not broken["exact"] and 0.8 < broken["similarity"] < 1
    empty = score(hole, "", 1.0)
    assert empty["empty"] and not empty["breaks_syntax"]
    summary = summarize([right, broken, empty])
    assert summary["exact_match"] == round(1 / 3, 3)
    assert summary["syntax_breaking"] == round(1 / 3, 3)
    assert summary["empty"] == round(1 / 3, 3)
    assert summary["latency_p50_s"] == 0.5 and summary["latency_p90_s"] == 1.0
    assert right["language"] == "python"


def test_rows_are_grouped_per_language_with_the_ratio_to_the_peer():
    python = Hole(Path("/t/a.py"), "whole_line", "def f(x):\n    \n", 1, 4, "return x + 1")
    go = Hole(Path("/t/a.go"), "whole_line", "package a\n\nfunc f(x int) int {\n\t\n}\n", 3, 1, "return x + 1")
    rows = {"ghostls": [score(python, "return x + 1", 1.0), score(go, "return x", 2.0)],
            NAIVE: [score(python, "return x", 0.5), score(go, "return x", 0.5)]}
    by_language = group(rows, "language")
    assert list(by_language) == ["go", "python"]
    assert by_language["python"]["ghostls"]["edit_similarity"] == 1.0
    assert by_language["go"]["ghostls"]["holes"] == 1 and by_language["go"][NAIVE]["latency_p50_s"] == 0.5
    table = report({name: summarize(per) for name, per in rows.items()}, by_language, group(rows, "kind"),
                   group(rows, "kind"))
    peer = by_language["python"][NAIVE]["edit_similarity"]
    assert f"| python | ghostls | 1 | 1.0 | 1.0 | {1.0 / peer:.2f}x |" in table, table
    assert "| go | ghostls | 1 | 0.0 | " in table and "| 1.00x |" in table, table


def test_eval_command_runs_the_real_server_and_the_naive_peer(tiny_model, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "ghostls.cli.main", "eval", str(FIXTURE), str(QUALITY),
         "--limit", "3", "--ablation",
         "--model", str(tiny_model("prefix_only")), "--json", str(tmp_path / "rows.json")],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    table = out.stdout
    for name in ("ghostls", "no cross-file context", "no token healing", "no next-line rule", "no block rule", "no suffix rules",
                 "no indentation fix", "no loop cut", "no syntax guard", "naive peer"):
        assert f"| {name} | 6 |" in table, table
    assert "edit similarity vs the naive peer" in table
    # Every configuration's answer was computed for it: none was the previous configuration's answer served
    # again as "typed through" (that made every ablation row a copy of the first, once).
    written = json.loads((tmp_path / "rows.json").read_text())
    assert all(summary["errors"] == 0 for summary in written["summaries"].values()), written["summaries"]
    rows = written["rows"]
    reasons = [row["reason"] for name, per in rows.items() if name != "naive peer" for row in per]
    assert len(reasons) == 9 * 6 and all(reasons), reasons
    # Both repositories, each row tagged with its own, and the per-language tables.
    assert [row["repository"] for row in rows["ghostls"]] == ["workspace"] * 3 + ["quality"] * 3
    languages = {row["language"] for row in rows["ghostls"]}
    assert "python" in languages and set(written["by_language"]) == languages
    for language in languages:
        count = sum(row["language"] == language for row in rows["ghostls"])
        assert f"| {language} | ghostls | {count} |" in table and f"| {language} | naive peer | {count} |" in table
    assert not any("typed through" in reason for reason in reasons), reasons
