"""The `ghostls` command: argument errors, refusals, model inspection, `complete` on the embedded model (exit
codes 0/1/2, --json, stdin, --max-lines) and the shell completion scripts run in real bash, zsh and fish."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import pytest

GHOSTLS = [sys.executable, "-m", "ghostls.cli.main"]


def _subcommands() -> str:
    """Every `ghostls` subcommand, in the parser's order: what the completion scripts must offer."""
    from ghostls.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return " ".join(sub.choices)


SUBCOMMANDS = _subcommands()


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*GHOSTLS, *args], capture_output=True, text=True, timeout=timeout)


def test_bench_is_part_of_the_cli_and_the_experiments_are_not_installed():
    """`ghostls bench` is ghostls.cli.bench; the scripts in bench/ run by path and are no module of the package."""
    import importlib.util

    assert importlib.util.find_spec("ghostls.bench") is None
    result = run("bench", "--help")
    assert result.returncode == 0 and "--engines" in result.stdout, result.stderr


def test_no_code_outside_the_tests_changes_sys_path():
    """The tests' helpers stay theirs: neither the package nor a bench script imports them through sys.path."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    changes = re.compile(r"sys\.path\s*(\.\s*(insert|append|extend)\b|\+=|\[|=[^=])")
    offenders = [f"{path.relative_to(root)}:{number}"
                 for folder in ("server", "parsers", "inference", "editors", "bench")
                 for path in sorted((root / folder).rglob("*.py")) if "node_modules" not in path.parts
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if changes.search(line)]
    assert offenders == []


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
    from ghostls.cli.main import ProgressBar

    bar = ProgressBar()
    bar.update({"kind": "report", "percentage": 50, "message": "building ONNX"})  # as $/progress delivers it
    bar.update({"kind": "end", "message": "ready"})  # no percentage: nothing to draw
    bar.close()
    err = capsys.readouterr().err
    assert "[##########..........]  50% building ONNX" in err
    assert "ready" not in err


# -- `complete` on the embedded model: the real server, as scripts use it ----------------------------
FIB = '''def fibonacci(n):
    """Return the n-th Fibonacci number."""
    if n < 2:
        
    return fibonacci(n - 1) + fibonacci(n - 2)
'''


def complete_run(model_dir, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*GHOSTLS, "complete", *args, "--model", str(model_dir)], input=stdin,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.embedded
def test_complete_file_json_and_stdin_give_the_same_completion(tmp_path, embedded_model_dir):
    source = tmp_path / "fib.py"
    source.write_text(FIB)
    from_file = complete_run(embedded_model_dir, f"{source}:4:9", "--json")
    assert from_file.returncode == 0, from_file.stderr
    answer = json.loads(from_file.stdout)
    assert answer["text"].strip(), answer
    # Inserted at the cursor: an empty range at the 1-based position asked for.
    assert answer["range"] == {"start": {"line": 4, "col": 9}, "end": {"line": 4, "col": 9}}
    assert answer["timings_ms"]["prefill"] > 0 and answer["timings_ms"]["decode"] > 0
    assert answer["prompt_tokens"] > 0
    # The command is an invoked request: its other candidates come along, distinct from the first.
    assert isinstance(answer["alternatives"], list) and answer["text"] not in answer["alternatives"]

    # The same text from stdin, with --line/--col, printed plain for a script to use.
    from_stdin = complete_run(embedded_model_dir, "-", "--line", "4", "--col", "9", "--language", "python",
                              stdin=FIB)
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert from_stdin.stdout == answer["text"] + "\n"


@pytest.mark.embedded
def test_complete_max_lines_caps_a_multi_line_completion(tmp_path, embedded_model_dir):
    source = tmp_path / "fib.py"
    source.write_text('def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    \n')
    run = complete_run(embedded_model_dir, f"{source}:3:5", "--max-lines", "3", "--json")
    assert run.returncode == 0, run.stderr
    lines = json.loads(run.stdout)["text"].split("\n")
    assert 1 < len(lines) <= 3, lines  # the model goes on for ~10 lines here without the cap


@pytest.mark.embedded
def test_complete_exits_1_when_there_is_no_completion(tmp_path, embedded_model_dir):
    # ghostls never completes in a secrets file (whatever the model would say): a "none" answer, with why.
    source = tmp_path / ".env"
    source.write_text("API_TOKEN=\n")
    run = complete_run(embedded_model_dir, f"{source}:1:11")
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert run.stdout == ""
    assert "no completion" in run.stderr and "secret" in run.stderr


def test_complete_from_stdin_needs_a_language():
    result = subprocess.run([*GHOSTLS, "complete", "-:1:1"], input="x = 1\n", capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "--language" in result.stderr


# -- shell completion scripts ----------------------------------------------------------------------
def completion_script(shell: str) -> str:
    result = run("completions", shell)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_bash_completion_loads_and_completes(tmp_path):
    script = tmp_path / "ghostls.bash"
    script.write_text(completion_script("bash"))
    # Real bash: load the script, check it is registered, and run it as readline would.
    probe = f'''
source {script}
complete -p ghostls
ask() {{ COMP_WORDS=("$@"); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); COMPREPLY=(); _ghostls; echo "${{COMPREPLY[*]}}"; }}
ask ghostls ""
ask ghostls mo
ask ghostls model ""
ask ghostls serve --log-level ""
ask ghostls complete --ma
ask ghostls completions z
'''
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", probe], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:7] == [
        "complete -o default -F _ghostls ghostls",
        SUBCOMMANDS,
        "model",
        "convert list info",
        "error warning info debug",
        "--max-lines",
        "zsh",
    ]


@pytest.mark.skipif(not shutil.which("fish"), reason="fish is not installed (make installs it where apt-get runs)")
def test_fish_completion_completes_subcommands_and_choices(tmp_path):
    script = tmp_path / "ghostls.fish"
    script.write_text(completion_script("fish"))
    probe = (f"source {script}; complete -C 'ghostls mo'; echo ==; complete -C 'ghostls model '; echo ==; "
             "complete -C 'ghostls model convert --precision '")
    result = subprocess.run(["fish", "--no-config", "-c", probe], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    blocks = [[line.split("\t")[0] for line in block.strip().split("\n")] for block in result.stdout.split("==\n")]
    assert blocks == [["model"], ["convert", "info", "list"], ["auto", "fp16", "fp32", "int4", "int8", "native", "w8a8"]]


@pytest.mark.skipif(not shutil.which("zsh"), reason="zsh is not installed (make installs it where apt-get runs)")
def test_zsh_completion_registers_and_completes(tmp_path):
    script = tmp_path / "_ghostls"
    script.write_text(completion_script("zsh"))
    # Real zsh and compinit register the script; then its function runs with the completion system's
    # output calls (_describe, compadd, only available inside a completion widget) replaced by prints.
    probe = f'''
autoload -U compinit && compinit -u -d {tmp_path}/zcompdump
source {script}
print -r -- ${{_comps[ghostls]}}
_describe() {{ local name=${{@[-1]}}; print -r -- "${{(j: :)${{(@)${{(P)name}}%%:*}}}}"; }}
compadd() {{ shift; print -r -- "$*"; }}
ask() {{ words=("$@"); CURRENT=${{#words}}; _ghostls; }}
ask ghostls ""
ask ghostls model ""
ask ghostls serve --log-level ""
ask ghostls complete --
'''
    result = subprocess.run(["zsh", "-f", "-c", probe], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[:4] == ["_ghostls", SUBCOMMANDS, "convert list info",
                         "error warning info debug"]
    assert "--max-lines" in lines[4].split()



async def test_serve_logs_no_source_code_at_the_default_level(tmp_path, embedded_model_dir):
    """A real `ghostls serve` at the default (info) level: neither the document's text nor the completion
    may reach its log (pygls would write every message it sends there)."""
    from lsprotocol import types
    from pygls.lsp.client import LanguageClient

    log = tmp_path / "server.log"
    client = LanguageClient("log-check", "0")
    for method in (types.PROGRESS, types.WINDOW_LOG_MESSAGE, types.WINDOW_SHOW_MESSAGE, "ghostls/status"):
        client.feature(method)(lambda params: None)
    client.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)(lambda params: None)
    await client.start_io("sh", "-c", f'exec "{sys.executable}" -m ghostls.cli.main serve --stdio 2>"{log}"')
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(),
        initialization_options={"model": str(embedded_model_dir), "loadWaitMs": 120_000, "debounceMs": 0}))
    client.initialized(types.InitializedParams())
    uri = (tmp_path / "sauce.py").as_uri()
    client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
        uri=uri, language_id="python", version=1, text="def canary_function_name_7f3a(items):\n    return \n")))
    result = await client.text_document_inline_completion_async(types.InlineCompletionParams(
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
        text_document=types.TextDocumentIdentifier(uri), position=types.Position(1, 11)))
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    logged = log.read_text()
    assert "completion sauce.py" in logged  # the server does log each completion, as counts and timings
    assert "canary_function_name_7f3a" not in logged
    for item in result.items:
        if len(item.insert_text.strip()) >= 4:
            assert item.insert_text not in logged
