"""Chooses the execution provider once, at start-up: CUDA when it really runs, otherwise the CPU.

"Installed" is not "working": onnxruntime-gpu lists CUDAExecutionProvider on machines with no GPU
or no CUDA libraries, so the choice rests on a real session's providers, never on the list alone.
"""

from __future__ import annotations

import base64
import glob
import logging
import os
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)

# A 67-byte ONNX graph (y = x + x) used only to ask ONNX Runtime which provider a session really gets.
_PROBE_MODEL = base64.b64decode(
    "CAg6OQoOCgF4CgF4EgF5IgNBZGQSBXByb2JlWg8KAXgSCgoICAESBAoCCAFiDwoBeRIKCggIARIECgIIAUIECgAQDQ=="
)

VALID_PROVIDERS = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ProviderChoice:
    name: str  # "cpu" or "cuda": what onnxruntime-genai is told to use
    reason: str  # one line for the log and the client


def choose_provider(requested: str = "auto") -> ProviderChoice:
    """Returns the provider to run on. `requested` is "auto", "cpu" or "cuda"."""
    if requested not in VALID_PROVIDERS:
        raise ValueError(f"provider must be one of {', '.join(VALID_PROVIDERS)}, not {requested!r}")
    if requested == "cpu":
        return ProviderChoice("cpu", "CPU requested in settings")
    working, detail = cuda_works()
    if working:
        return ProviderChoice("cuda", detail)
    if requested == "cuda":
        return ProviderChoice("cpu", f"CUDA requested but not usable ({detail}); running on the CPU")
    return ProviderChoice("cpu", f"no working CUDA ({detail}); running on the CPU")


def cuda_works() -> tuple[bool, str]:
    """Opens a real session on CUDA and reports whether CUDA is what it got."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - onnxruntime is a hard dependency
        return False, f"onnxruntime not importable: {exc}"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, "this onnxruntime build has no CUDA provider"
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return False, "CUDA_VISIBLE_DEVICES is empty"
    if sys.platform.startswith("linux") and not glob.glob("/dev/nvidia[0-9]*"):
        # No device node: skip loading the (large) CUDA provider library just to watch it fail.
        return False, "no NVIDIA device on this machine"
    try:
        # The nvidia-* pip packages hold the CUDA/cuDNN libraries; ORT finds them only after this.
        preload = getattr(ort, "preload_dlls", None)
        if preload is not None:
            preload()
        options = ort.SessionOptions()
        options.log_severity_level = 4  # the failed CUDA load is expected on CPU machines: keep it quiet
        session = ort.InferenceSession(
            _PROBE_MODEL, sess_options=options, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
        )
    except Exception as exc:  # noqa: BLE001 - any failure here means "no CUDA", never a crash
        return False, f"CUDA session failed: {exc}".splitlines()[0]
    providers = session.get_providers()
    if providers and providers[0] == "CUDAExecutionProvider":
        return True, "CUDA session created and verified"
    return False, f"session fell back to {providers[0] if providers else 'nothing'}"
