"""The `ghostls` command's own checks: argument errors, refusals and model inspection (exit codes 0/1/2)."""

from __future__ import annotations

import json
import subprocess
import sys

GHOSTLS = [sys.executable, "-m", "ghostls.cli.main"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*GHOSTLS, *args], capture_output=True, text=True, timeout=timeout)


def test_complete_rejects_a_malformed_target():
    result = run("complete", "just-a-file.py")
    assert result.returncode == 2
    assert "FILE:LINE:COL" in result.stderr


def test_complete_reports_a_missing_file(tmp_path):
    result = run("complete", f"{tmp_path / 'nope.py'}:1:1")
    assert result.returncode == 2
    assert "no such file" in result.stderr


def test_complete_reports_a_position_outside_the_file(tmp_path):
    small = tmp_path / "small.py"
    small.write_text("x = 1\n")
    beyond_lines = run("complete", f"{small}:9:1")
    assert beyond_lines.returncode == 2
    assert "line 9" in beyond_lines.stderr
    beyond_columns = run("complete", str(small), "--line", "1", "--col", "40")
    assert beyond_columns.returncode == 2
    assert "column 40" in beyond_columns.stderr


def test_complete_refuses_binary_files(tmp_path):
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\x00\x01\x02" * 100)
    result = run("complete", f"{blob}:1:1")
    assert result.returncode == 2
    assert "binary" in result.stderr


def test_tcp_mode_refuses_non_loopback_addresses():
    result = run("serve", "--tcp", "0", "--host", "0.0.0.0")
    assert result.returncode == 2
    assert "loopback" in result.stderr


def test_model_info_prints_the_manifest(tiny_model):
    folder = tiny_model("starcoder")
    result = run("model", "info", str(folder))
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert manifest["fim_family"] == "starcoder"
    assert manifest["precision"] == "int8"


def test_model_info_on_a_folder_without_a_model(tmp_path):
    result = run("model", "info", str(tmp_path))
    assert result.returncode == 2
    assert "ghostls:" in result.stderr


def test_progress_bar_draws_lsp_progress_values(capsys):
    from ghostls.cli.main import _ProgressBar

    bar = _ProgressBar()
    bar.update({"kind": "report", "percentage": 50, "message": "building ONNX"})  # as $/progress delivers it
    bar.update({"kind": "end", "message": "ready"})  # no percentage: nothing to draw
    bar.close()
    err = capsys.readouterr().err
    assert "[##########..........]  50% building ONNX" in err
    assert "ready" not in err
