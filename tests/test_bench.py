"""`ghostls bench`: the smoke run CI affords, with every engine real (ONNX, llama.cpp, transformers)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tokenizers import Tokenizer

from ghostls.cli.bench import agreement, load_prompts

pytestmark = pytest.mark.embedded


def test_agreement_counts_leading_equal_tokens():
    assert agreement([1, 2, 3, 4], [1, 2, 9, 4]) == 2
    assert agreement([], [1]) == 0
    assert agreement([5, 6], [5, 6, 7]) == 2


def test_prompts_are_real_files_cut_at_the_requested_size(embedded_model_dir):
    tokenizer = Tokenizer.from_file(str(embedded_model_dir / "tokenizer.json"))
    prompts = load_prompts(tokenizer, [300, 1000], per_size=2)
    for size, chosen in prompts.items():
        assert len(chosen) == 2
        for prompt in chosen:
            count = len(tokenizer.encode(prompt["text"]).ids)
            assert abs(count - size) <= 2, (prompt["file"], count)
            assert prompt["next"]  # the file goes on: the keystroke scenario types it


def test_smoke_run_measures_every_engine_on_the_same_prompts(embedded_model_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "ghostls.cli.main", "bench", "--smoke", "--json", "--model", str(embedded_model_dir)],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["unavailable"] == {}
    assert set(report["engines"]) == {"ghostls", "llamacpp", "transformers"}
    for name, engine in report["engines"].items():
        assert engine["load_s"] > 0 and engine["model_bytes"] > 10 * 2**20, name
        assert engine["peak_rss_bytes"] > engine["model_bytes"] / 4, name
        for size, row in engine["by_size"].items():
            assert row["ttft_s_p50"] > 0 and row["total_s_p50"] >= row["ttft_s_p50"], (name, size)
            assert 0 <= row["agree_mean"] <= row["new_tokens_mean"], (name, size)
        keystroke = engine["keystroke"]
        assert keystroke["cold_ttft_s"] > 0 and keystroke["char_ttft_s"] > 0 and keystroke["line_ttft_s"] > 0
        assert engine["typing"]["completed"] >= 1
        assert engine["typing"]["last_keystroke_to_completion_s"] > 0
    # The float32 reference agrees with itself on every token: the comparison is real.
    reference = report["engines"]["transformers"]["by_size"]
    assert all(row["agree_mean"] == row["new_tokens_mean"] for row in reference.values())
    # ghostls reuses its cache on a keystroke: a warm first token is faster than a cold one.
    ghostls = report["engines"]["ghostls"]["keystroke"]
    assert ghostls["char_ttft_s"] < ghostls["cold_ttft_s"]
    assert set(report["ratios"]) >= {"total_p50_vs_llamacpp", "total_p50_vs_transformers",
                                     "keystroke_char_ttft_vs_cold"}


def test_gpu_check_dry_runs_on_the_cpu(tmp_path):
    """bench/gpu_check.sh must be known to work before GPU minutes are spent: here it runs on the CPU."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.run(["bash", str(root / "bench" / "gpu_check.sh"), "--provider", "cpu", "--precisions", "int4",
                           "--runs", "1", "--prompt-tokens", "200", "--work", str(tmp_path / "work"),
                           "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600, env={**__import__("os").environ,
                                                                             "PY": sys.executable})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    row = report["results"]["int4"]
    assert report["provider"] == "cpu" and row["session_providers"] == ["CPUExecutionProvider"]
    assert row["ttft_ms_p50"] > 0 and row["decode_tps_p50"] > 0
    assert 0 < row["roofline_fraction"] < 1.5  # a measured copy bounds what decoding can read


def test_node_profile_shares_add_up_on_a_tiny_model(tiny_model):
    """bench/node_profile.py (where a decode step's time goes, by operator) on a tiny converted model."""
    import pathlib

    script = pathlib.Path(__file__).resolve().parents[1] / "bench" / "node_profile.py"
    proc = subprocess.run([sys.executable, str(script), str(tiny_model("qwen")), "--past", "16", "--steps", "3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.strip("|").split("|") for line in proc.stdout.splitlines() if line.startswith("| ")][1:]
    shares = {op.strip(): float(share.strip().rstrip("%")) for op, share, _ in rows}
    assert "MatMulNBits" in shares and "HalfKvAttention" in shares  # the tiny model has ghostls's attention op
    assert abs(sum(shares.values()) - 100) < 1


def test_zero_points_benchmark_shows_float_zero_points_exact_and_integer_ones_not():
    """bench/zero_points.py, the measurement behind the remainder MatMul of precision native."""
    import pathlib

    script = pathlib.Path(__file__).resolve().parents[1] / "bench" / "zero_points.py"
    proc = subprocess.run([sys.executable, str(script), "--repeats", "2"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.strip("|").split("|") for line in proc.stdout.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 8
    errors = {(kind.strip(), level.strip(), tokens.strip()): float(error) for kind, level, tokens, _, error in rows}
    assert all(e < 1e-4 for (kind, *_), e in errors.items() if kind.startswith("float"))
    assert all(e > 1e-3 for (kind, *_), e in errors.items() if kind.startswith("uint8"))


def test_node_profile_profiles_a_prefill_chunk(tiny_model):
    """--tokens: the same profile for a chunk of new tokens after the past ones (where a prefill's time goes)."""
    import pathlib

    script = pathlib.Path(__file__).resolve().parents[1] / "bench" / "node_profile.py"
    proc = subprocess.run([sys.executable, str(script), str(tiny_model("qwen")), "--past", "16", "--tokens", "8",
                           "--steps", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8 token(s) after 16" in proc.stdout


def test_ab_models_pairs_the_runs_of_two_models(tiny_model):
    """bench/ab_models.py, the ABBA timing behind the converter's graph edits: a model against itself decodes the
    same greedy tokens, and every run is counted once."""
    import pathlib

    script = pathlib.Path(__file__).resolve().parents[1] / "bench" / "ab_models.py"
    model = str(tiny_model("qwen"))
    proc = subprocess.run([sys.executable, str(script), model, model, "--rounds", "2", "--prompt-tokens", "24",
                           "--steps", "4"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert sum("(medians of 4 runs)" in line for line in lines) == 2
    assert lines[-1].startswith("B / A, paired by round") and lines[-1].endswith("greedy tokens equal: True")


def test_logits_kl_finds_a_model_identical_to_its_reference_and_another_one_not(tiny_model, tiny_checkpoints,
                                                                                 tmp_path):
    """bench/logits_kl.py, the measurement behind precision w8a8: zero divergence from itself, some from int4."""
    import pathlib

    from ghostls.inference.converter.convert import convert

    script = pathlib.Path(__file__).resolve().parents[1] / "bench" / "logits_kl.py"
    reference = tiny_model("qwen")
    other = convert(tiny_checkpoints["qwen"], precision="int4", out_root=tmp_path)
    proc = subprocess.run([sys.executable, str(script), str(reference), str(reference), str(other),
                           "--contexts", "16,24", "--tokens", "4", "--decode-steps", "3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    prefill, decode = proc.stdout.split("teacher-forced decode")
    # Both tables: model | KL median | KL max (prefill) or mean (decode) | ... | same top token.
    for table, positions in ((prefill, 12), (decode, 12 * 3)):
        rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in table.splitlines()
                if line.startswith("| ") and "KL" not in line and "---" not in line}
        assert float(rows[reference.name][0]) == 0 and float(rows[reference.name][1]) == 0
        assert rows[reference.name][3].strip() == f"{positions}/{positions}"
        assert float(rows[other.name][1]) > 0
