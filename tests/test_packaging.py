"""What a plain `pip install ghostls` (not editable) gets: every module folder of the listed packages, and the
dependencies of a first completion (conversion included). An editable install (make) finds folders that a wheel
would leave out, so only this checks them.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_module_folder_of_a_listed_package_is_listed():
    setuptools = PYPROJECT["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    roots = setuptools["package-dir"]
    missing = []
    for package in sorted(listed):
        # A package's folder: its own package-dir entry, else its parent's folder and its last name.
        parent, below = package, []
        while parent not in roots:
            parent, _, last = parent.rpartition(".")
            below.insert(0, last)
        folder = REPO / roots[parent] / Path(*below)
        for sub in sorted({p.parent for p in folder.glob("*/*.py")}):
            if f"{package}.{sub.name}" not in listed:
                missing.append(f"{package}.{sub.name}")
    assert missing == [], f"not in [tool.setuptools] packages, so missing from a wheel: {missing}"


def test_every_top_level_package_folder_is_in_the_namespace():
    """A folder of the repository root with an __init__.py is one of `ghostls`'s packages (package-dir)."""
    mapped = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    folders = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert folders <= mapped, f"not in [tool.setuptools.package-dir]: {sorted(folders - mapped)}"


def test_a_plain_install_brings_what_the_first_completion_converts_with():
    plain = {requirement.split(">")[0].split("=")[0].split(";")[0].strip()
             for requirement in PYPROJECT["project"]["dependencies"]}
    assert {"torch", "transformers", "gguf", "onnx", "onnxscript"} <= plain
