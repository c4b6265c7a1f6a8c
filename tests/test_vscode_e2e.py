"""End to end in a real VS Code: the packaged extension (editors/vscode/ghostls.vsix) in code-server
4.100.3, in Debian's Chromium driven by playwright-core, starting the real `ghostls serve --stdio` on
the embedded model. Ghost text must appear and Tab must put it into the file.

`make test` builds the .vsix and installs code-server and Chromium first (target `vscode`) and sets
GHOSTLS_REQUIRE_VSCODE_E2E=1, so there a missing piece fails; a bare `pytest` without them skips.
The browser work lives in editors/vscode/e2e/run.mjs; this test checks what it reports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from ghostls.completion import settings as config
from ghostls.completion.settings import Settings, parse_settings

REPO = Path(__file__).resolve().parents[1]
VSCODE = REPO / "editors" / "vscode"
VSIX = VSCODE / "ghostls.vsix"
RUNNER = VSCODE / "e2e" / "run.mjs"
CODE_SERVER_READY = VSCODE / "e2e" / "node_modules" / ".ghostls-code-server-ready"
CHROMIUM = Path("/usr/bin/chromium")
FIXTURE = REPO / "tests" / "fixtures" / "initialize" / "vscode.json"
# Kept after the run (git-ignored): what the editor showed when the ghost text appeared.
SCREENSHOT = VSCODE / "e2e" / ".run" / "vscode-ghost-text.png"


def _missing() -> list[str]:
    missing = [str(p) for p in (VSIX, CODE_SERVER_READY, CHROMIUM, VSCODE / "node_modules" / "playwright-core")
               if not p.exists()]
    return missing + ([] if shutil.which("node") else ["node"])


@pytest.fixture
def vscode_tooling() -> None:
    missing = _missing()
    if missing:
        message = f"VS Code e2e tooling missing (run `make vscode`): {', '.join(missing)}"
        if os.environ.get("GHOSTLS_REQUIRE_VSCODE_E2E") == "1":
            pytest.fail(message)
        pytest.skip(message)


def _run_vscode(model_dir: Path, *args: str) -> dict:
    """Runs e2e/run.mjs and returns its report. The embedded model is already converted into the
    test cache (the fixture); the extension runs with default settings, as a new user's would."""
    server = Path(sys.executable).parent / "ghostls"
    env = {**os.environ, "GHOSTLS_CACHE_DIR": str(model_dir.parents[1])}
    proc = subprocess.run(["node", str(RUNNER), "--vsix", str(VSIX), "--server", str(server), "--timeout", "240",
                           *args], cwd=VSCODE, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"e2e runner failed:\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.embedded
def test_ghost_text_appears_and_tab_accepts_it(vscode_tooling, embedded_model_dir, tmp_path):
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    captured = tmp_path / "initialize.json"
    report = _run_vscode(embedded_model_dir, "--screenshot", str(SCREENSHOT), "--initialize", str(captured))

    before, after, at = report["before"], report["after"], report["cursor_offset"]
    # Tab inserted text at the cursor and left the rest of the file as it was.
    assert after != before
    assert after.startswith(before[:at]) and after.endswith(before[at:]), after
    inserted = after[at:len(after) - len(before[at:])]
    assert inserted.strip(), f"only whitespace was inserted: {inserted!r}"
    # ...and that text is the ghost text the editor showed.
    shown = "".join(report["ghost_text"].split())
    assert shown and shown in "".join(inserted.split()), (report["ghost_text"], inserted)
    # Ctrl+Right (VS Code's acceptNextWord) took the first word and left the rest as ghost text.
    word = report["word_accepted_chars"]
    assert 0 < word < len(report["ghost_text"]), report
    assert report["ghost_text"][word:] == report["ghost_after_word"], report
    # Explain the Last Completion showed the server's account of the newest request (VS Code asks
    # again by itself after the accept, so that is the one after the accepted text).
    explanation = report["explanation"]
    assert "Last completion" in explanation and "Prompt tokens:" in explanation, explanation
    assert f"Model: {embedded_model_dir.name}, state ready" in explanation, explanation
    # Clicking the status bar item turned ghost text off in the user's settings.
    assert report["toggled_enable"] is False
    assert SCREENSHOT.stat().st_size > 10_000

    initialize = json.loads(captured.read_text())
    params = initialize["params"]
    assert initialize["method"] == "initialize"
    assert params["clientInfo"]["name"] == "code-server"
    assert "inlineCompletion" in params["capabilities"]["textDocument"]
    # Every server setting, under the server's own name, each the server's default but the log level.
    assert set(params["initializationOptions"]) == {config._CAMEL[f.name] for f in fields(Settings)}
    assert parse_settings(params["initializationOptions"]) == (Settings(log_level="debug"), [])
    # The committed fixture is this same client: re-record it (copy `captured`) when VS Code or
    # vscode-languageclient changes what it sends.
    recorded = json.loads(FIXTURE.read_text())
    assert recorded["params"]["capabilities"] == params["capabilities"], \
        f"{FIXTURE} is stale: replace it with the capture of this run"


@pytest.mark.embedded
def test_restricted_mode_ignores_workspace_server_model_and_backend(vscode_tooling, embedded_model_dir):
    """An untrusted folder whose .vscode/settings.json names its own server script, a model, a provider and
    remote backends: the extension starts the user's ghostls with the user's model, provider and backend, never
    the folder's script, and still takes the folder's harmless settings (maxLines). The user's settings use the
    legacy spellings (`ghostls.backend: "cpu"`, `ghostls.languages`), which arrive under the current names."""
    report = _run_vscode(embedded_model_dir, "--restricted")
    assert report["restricted_mode_shown"] is True
    assert report["workspace_command_ran"] is False
    settings, warnings = parse_settings(report["initialization_options"])
    assert warnings == []
    assert settings == Settings(provider="cpu", disabled_languages=("markdown",), max_lines=3, log_level="debug")
