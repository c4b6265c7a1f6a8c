"""Shared fixtures: tiny random checkpoints per FIM family, their real conversions, and the embedded model."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tiny_models import FAMILIES, build_tiny_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_cache_root() -> Path:
    """Where the embedded model is converted for tests: kept across runs so CI converts it once."""
    return Path(os.environ.get("GHOSTLS_CACHE_DIR") or REPO_ROOT / ".cache" / "ghostls")


test_cache_root.__test__ = False  # a helper, not a test


def pytest_configure(config):
    # Servers started by the tests convert into the test cache, never into the user's own cache.
    os.environ.setdefault("GHOSTLS_CACHE_DIR", str(test_cache_root()))
    _guard_the_network()


def _guard_the_network() -> None:
    """No test reaches beyond loopback: the guard runs here and, via sitecustomize on PYTHONPATH, in every
    Python process the tests start (tests/netguard/ghostls_netguard.py; proven by tests/test_netguard.py)."""
    import sys

    guard_dir = str(Path(__file__).parent / "netguard")
    sys.path.insert(0, guard_dir)
    import ghostls_netguard

    ghostls_netguard.install()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [guard_dir, os.environ.get("PYTHONPATH")]))


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {family: build_tiny_checkpoint(root / family, family) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoints: dict[str, Path], tiny_models_root: Path) -> Callable[[str], Path]:
    """`tiny_model(family)`: that family's tiny checkpoint converted with the real converter (int8, cpu), once
    per session and only when a test asks for it (about 10 s each, mostly the builder's imports)."""
    from ghostls.inference.converter.convert import convert

    converted: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in converted:
            converted[family] = convert(tiny_checkpoints[family], out_root=tiny_models_root)
        return converted[family]

    return get


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The embedded SmolLM2 model converted to ONNX (about a minute the first time, then cached)."""
    from ghostls.inference.cache import ModelError
    from ghostls.inference.embedded import ensure_embedded_model

    try:
        return ensure_embedded_model(out_root=test_cache_root() / "models")
    except ModelError as e:
        if "not installed" in str(e):
            pytest.skip(str(e))
        raise
