"""ghostls's own attention ops over a float16 or int8 KV cache (csrc/kv_attention.cc): building them from their
source into the cache, and putting one into a converted CPU model in place of onnxruntime's GroupQueryAttention.

Never loads native code it did not build from that source itself: a model folder may carry the library only as a
byte-identical copy of the one built here (cache.validate_model_dir checks it with `is_own_library`).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
from pathlib import Path

from ghostls.inference.cache import ModelError, models_root, sha256_file

SOURCE = Path(__file__).parent / "csrc" / "kv_attention.cc"
LIBRARY_NAME = "libghostls_ops.so"  # the copy's name inside a model folder
DOMAIN = "ai.ghostls"
# The op for each cache type. An int8 row holds head_size values, then the row's float32 scale as 4 more int8
# elements (row_elements below).
OP_TYPES = {"float16": "HalfKvAttention", "int8": "Int8KvAttention"}
HEAD_SIZES = (16, 32, 64, 128)  # the kernel's compiled widths
_CPU_FLAGS = ("avx2", "fma", "f16c")
_CXXFLAGS = ("-O3", "-std=c++17", "-mavx2", "-mfma", "-mf16c", "-fPIC", "-shared", "-fvisibility=hidden")
# onnxruntime's C API headers, from Debian's package (no PyPI package ships them). The C API is versioned and
# kept compatible: a library built against 1.21's header registers in any onnxruntime from 1.21 on.
_HEADERS_DEB = "http://deb.debian.org/debian/pool/main/o/onnxruntime/libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb"
_HEADERS_SHA256 = "14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08"
_MIN_ONNXRUNTIME = (1, 21)


def native_root() -> Path:
    """Where built libraries and the downloaded headers live: beside the converted models."""
    return models_root().parent / "native"


def library_path() -> Path:
    """The library for this source and these flags; a changed source builds (and converts) anew."""
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(_CXXFLAGS).encode()).hexdigest()[:16]
    return native_root() / f"libghostls_ops-{key}.so"


def unavailable_reason() -> str | None:
    """Why this machine cannot run the op, or None when it can."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"the KV cache attention ops are built for Linux x86_64, not {platform.system()} {platform.machine()}"
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "cannot read the CPU's features from /proc/cpuinfo"
    missing = [f for f in _CPU_FLAGS if f not in flags.split()]
    if missing:
        return f"this CPU lacks {', '.join(missing)}"
    try:
        import onnxruntime  # any of its distributions: onnxruntime, onnxruntime-gpu
    except ImportError:
        return "onnxruntime is not installed"
    version = onnxruntime.__version__
    if tuple(int(p) for p in version.split(".")[:2]) < _MIN_ONNXRUNTIME:
        return f"onnxruntime {version} is older than the {'.'.join(map(str, _MIN_ONNXRUNTIME))} the op is built for"
    return None


def build() -> Path:
    """The library, compiled now if this source has not been built yet (a few seconds; the headers are fetched
    once). Raises ModelError saying why when it cannot be built."""
    target = library_path()
    if target.is_file():
        return target
    reason = unavailable_reason()
    if reason:
        raise ModelError(reason)
    import subprocess

    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise ModelError("no C++ compiler (g++) to build the KV cache attention ops")
    include = _headers()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    cmd = [compiler, *_CXXFLAGS, f"-I{include}", str(SOURCE), "-o", str(partial)]
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise ModelError(f"building the KV cache attention ops failed:\n{done.stderr[-2000:]}")
    partial.replace(target)  # whole or absent, even with two conversions racing
    return target


def _headers() -> Path:
    """onnxruntime's include folder: $GHOSTLS_ORT_INCLUDE, or Debian's headers unpacked into the cache."""
    import io
    import tarfile
    import tempfile
    import urllib.request

    if os.environ.get("GHOSTLS_ORT_INCLUDE"):
        return Path(os.environ["GHOSTLS_ORT_INCLUDE"])
    include = native_root() / "onnxruntime-1.21-include"
    if (include / "onnxruntime_cxx_api.h").is_file():
        return include
    try:
        with urllib.request.urlopen(_HEADERS_DEB, timeout=60) as response:
            deb = response.read()
    except OSError as e:
        raise ModelError(f"cannot fetch onnxruntime's C API headers ({e}); set GHOSTLS_ORT_INCLUDE to a folder "
                         "holding onnxruntime_cxx_api.h to build without the network") from None
    if hashlib.sha256(deb).hexdigest() != _HEADERS_SHA256:
        raise ModelError(f"{_HEADERS_DEB} does not have the expected sha256; not using it")
    native_root().mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".headers-", dir=native_root()))
    try:
        with tarfile.open(fileobj=io.BytesIO(_ar_member(deb, b"data.tar"))) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.startswith("./usr/include/onnxruntime/"):
                    target = staging / member.name.removeprefix("./usr/include/onnxruntime/")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tar.extractfile(member).read())
        try:
            staging.replace(include)
        except OSError:  # another conversion unpacked them first
            if not (include / "onnxruntime_cxx_api.h").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return include


def _ar_member(archive: bytes, prefix: bytes) -> bytes:
    """The first member of an ar archive (a .deb) whose name starts with `prefix`."""
    if not archive.startswith(b"!<arch>\n"):
        raise ModelError("the onnxruntime headers package is not a Debian archive")
    at = 8
    while at + 60 <= len(archive):
        name, size = archive[at:at + 16].strip(), int(archive[at + 48:at + 58])
        if name.startswith(prefix):
            return archive[at + 60:at + 60 + size]
        at += 60 + size + (size & 1)
    raise ModelError(f"the onnxruntime headers package has no {prefix.decode()} member")


def is_own_library(path: Path) -> bool:
    """Whether `path` holds exactly the library ghostls built from its own source."""
    try:
        own = library_path()
        return own.is_file() and path.is_file() and sha256_file(own) == sha256_file(path)
    except OSError:  # the source is not installed beside this module: nothing counts as its build
        return False


def row_elements(cache: str, head_size: int) -> int:
    """The KV cache tensor's last dimension for `cache` ("float16" or "int8")."""
    return head_size + 4 if cache == "int8" else head_size


def swap_attention(model, head_size: int, cache: str) -> int:
    """Replace each GroupQueryAttention node the `cache` ("float16" or "int8") op can stand in for, and turn the
    KV cache inputs and outputs to that type. Returns how many it replaced: all or none (one cache, one type).

    It stands in for the decoder layers onnxruntime-genai's builder writes for the CPU: packed q|k|v, rotary
    inside over the whole head, no softcap, no sliding window, float32 activations.
    """
    from onnx import TensorProto, helper

    if head_size not in HEAD_SIZES:
        return 0
    inits = {i.name: i for i in model.graph.initializer}
    kv_names = {v.name for v in model.graph.input if v.name.startswith("past_key_values.")}
    kv_names |= {v.name for v in model.graph.output if v.name.startswith("present.")}
    gqa = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    if not gqa or not all(_swappable(n, inits, head_size) for n in gqa):
        return 0
    if any(v.type.tensor_type.elem_type != TensorProto.FLOAT
           for v in [*model.graph.input, *model.graph.output] if v.name in kv_names):
        return 0
    for node in gqa:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        qkv, _, _, past_key, past_value, seqlens_k, total, cos, sin = node.input[:9]
        replacement = helper.make_node(
            OP_TYPES[cache], [qkv, past_key, past_value, seqlens_k, total, cos, sin], list(node.output), name=node.name,
            domain=DOMAIN, num_heads=attrs["num_heads"], kv_num_heads=attrs["kv_num_heads"],
            scale=float(attrs.get("scale") or head_size ** -0.5))
        node.CopyFrom(replacement)
    for value in [*model.graph.input, *model.graph.output]:
        if value.name in kv_names:
            tensor = value.type.tensor_type
            tensor.elem_type = TensorProto.INT8 if cache == "int8" else TensorProto.FLOAT16
            # A fixed last dimension: onnxruntime-genai sizes each layer's cache buffer from it.
            last = tensor.shape.dim[3]
            last.Clear()
            last.dim_value = row_elements(cache, head_size)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return len(gqa)


def _swappable(node, inits: dict, head_size: int) -> bool:
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    inputs = list(node.input) + [""] * (12 - len(node.input))
    cos = inits.get(inputs[7])
    return (attrs.get("do_rotary") == 1 and not attrs.get("rotary_interleaved") and not attrs.get("softcap")
            and attrs.get("local_window_size", -1) == -1 and attrs.get("qk_output", 0) == 0
            and inputs[0] and not inputs[1] and not inputs[2] and all(inputs[3:9]) and not any(inputs[9:])
            and len(node.output) == 3 and cos is not None and list(cos.dims)[1:] == [head_size // 2])


def install(model_dir: Path, library: Path) -> str:
    """Put the library's copy into the model folder; returns the name genai_config.json's custom_ops_library must
    give it (onnxruntime-genai loads custom ops only from inside the model folder)."""
    shutil.copy2(library, model_dir / LIBRARY_NAME)
    return LIBRARY_NAME


def main() -> int:
    """`python -m ghostls.inference.kv_attention`: build the ops now (conversions build them on demand otherwise)."""
    import sys

    reason = unavailable_reason()
    if reason:
        print(f"ghostls: the KV cache attention ops are not built here: {reason}", file=sys.stderr)
        return 0  # not an error: conversions keep a float32 cache on such machines
    try:
        print(build())
    except ModelError as e:
        print(f"ghostls: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
