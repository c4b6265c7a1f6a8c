"""ghostls's own onnxruntime ops (csrc/): building them from their source into the cache, and putting them into a
converted CPU model: an attention op over a float16 or int8 KV cache in place of onnxruntime's GroupQueryAttention
(kv_attention.cc), and, around it, ops that each stand in for a run of small nodes (`fuse_small_nodes`).

Never loads native code it did not build from that source itself: a model folder may carry the library only as a
byte-identical copy of the one built here (cache.validate_model_dir checks it with `is_own_library`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
from pathlib import Path

import numpy as np

from ghostls.inference.cache import ModelError, models_root, sha256_file

SOURCE_DIR = Path(__file__).parent / "csrc"
# Compiled together into one library (their headers: ops.h, simd.h).
SOURCES = ("register.cc", "kv_attention.cc", "gated_silu.cc", "skip_rms_norm.cc", "int8_matmul.cc")
LIBRARY_NAME = "libghostls_ops.so"  # the copy's name inside a model folder
DOMAIN = "ai.ghostls"
MS_DOMAIN = "com.microsoft"  # onnxruntime's contrib ops
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
    digest = hashlib.sha256(" ".join(_CXXFLAGS).encode())
    for source in sorted(SOURCE_DIR.iterdir()):
        if source.suffix in (".cc", ".h"):
            digest.update(source.name.encode() + b"\0" + source.read_bytes())
    key = digest.hexdigest()[:16]
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
    cmd = [compiler, *_CXXFLAGS, f"-I{include}", *(str(SOURCE_DIR / name) for name in SOURCES), "-o", str(partial)]
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


def kernel_runs(library: Path) -> dict[str, int]:
    """How many op calls in this process ran each kernel that the CPU's features choose between:
    "Int8MatMul.avx512vnni", "Int8MatMul.avx2", "Int8KvAttention.avx512vnni" and "Int8KvAttention.avx2" (a decode
    step's integer scores over the int8 cache). The counts are the library's own, shared by every session that
    registered the library at this path; the tests read them to check which kernel they ran."""
    runs = _counted(str(library))
    counts = {}
    index = 0
    while (name := runs.GhostlsKernelName(index)) is not None:
        counts[name.decode()] = runs.GhostlsKernelRuns(index)
        index += 1
    return counts


@functools.cache
def _counted(library: str):
    """The library, loaded once and kept: its counters live as long as it stays loaded."""
    import ctypes

    lib = ctypes.CDLL(library)
    lib.GhostlsKernelName.restype, lib.GhostlsKernelName.argtypes = ctypes.c_char_p, [ctypes.c_int]
    lib.GhostlsKernelRuns.restype, lib.GhostlsKernelRuns.argtypes = ctypes.c_uint64, [ctypes.c_int]
    return lib


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


GATED_SILU = "GatedSilu"
SKIP_RMS_NORM = "SkipRmsNorm"
INT8_MATMUL = "Int8MatMul"
INT8_TILE = 16  # output columns in one tile of Int8MatMul's packed weight


def fuse_small_nodes(model) -> dict[str, int]:
    """Fold runs of small nodes into ghostls's ops, in place; returns how many runs of each kind it folded.

    A decode step runs each node of the graph once, on a few thousand floats at most, and each node has a fixed
    cost (a kernel call, an output allocation, often a hand-off to the other thread): four such nodes fewer per
    layer made a decode step 7% quicker in a paired A/B (docs/benchmarks.md, session 9). Folded, in this order:
    - requantize.py's W8A8 MatMuls: into Int8MatMul (their weights packed for its kernels; the model's weights
      must be loaded, not left on disk), a DynamicQuantizeMatMul as it is, a MatMulIntegerToFloat with the
      per-token quantization before it (Abs, ReduceMax, Max, Div, QuantizeLinear) and the Mul by the rows' scales
      after it. The same int8 products, with the activations scaled per row and symmetrically
      (DynamicQuantizeMatMul scales the whole input, asymmetrically: the same for a decode step's one row, bar
      the zero point). Its kernels read the weights about twice as fast (docs/benchmarks.md, session 10);
    - an MLP's Split of gate|up, Sigmoid, Mul, Mul and, when the down projection is Q4_1, its offsets' Reshape,
      ReduceSum and MatMul: into one GatedSilu;
    - the Q4_1 down projection's Add of its offsets before the residual sum and RMS norm: into a SkipRmsNorm in
      place of onnxruntime's SkipSimplifiedLayerNormalization.
    Only runs whose intermediate values nothing else reads are folded: the graph computes the same values.
    """
    return {kind: _fold(model.graph, find) for kind, find in (
        (INT8_MATMUL, _int8_matmul), (GATED_SILU, _gated_silu), (SKIP_RMS_NORM, _skip_rms_norm))}


def pack_int8_weight(q: np.ndarray) -> np.ndarray:
    """An int8 [K, N] weight in Int8MatMul's layout [N / 16, K / 4, 16, 4]: tile t, quad j, column c, row i holds
    q[4 * j + i, 16 * t + c]."""
    k, n = q.shape
    return np.ascontiguousarray(q.reshape(k // 4, 4, n // INT8_TILE, INT8_TILE).transpose(2, 0, 3, 1))


class _Index:
    """What a fold looks up in a graph: each value's producer and readers, small constants."""

    def __init__(self, graph) -> None:
        self.inits = {i.name: i for i in graph.initializer}
        self.outputs = {o.name for o in graph.output}
        self.producer = {out: node for node in graph.node for out in node.output if out}
        self.readers: dict[str, list] = {}
        self.new_initializers: list = []  # what the replacements read that the graph does not hold yet
        for node in graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)

    def read_once(self, name: str) -> bool:
        """Whether exactly one node, and no graph output, reads `name`."""
        return len(self.readers.get(name, [])) == 1 and name not in self.outputs

    def only_reader(self, name: str, op_type: str):
        """The one node reading `name` if it is an `op_type` and nothing else reads it, else None."""
        if self.read_once(name) and self.readers[name][0].op_type == op_type:
            return self.readers[name][0]
        return None

    def constant(self, name: str):
        """An initializer's value; None for a non-initializer or one whose data lies outside the graph (a model
        loaded without its external data: the W8A8 weights then stay as they are)."""
        from onnx import TensorProto, numpy_helper

        init = self.inits.get(name)
        if init is None or init.data_location == TensorProto.EXTERNAL:
            return None
        return numpy_helper.to_array(init)


def _fold(graph, find) -> int:
    """Apply `find` (node, index -> (the node's replacement, the nodes it takes in) or None) to every node."""
    index = _Index(graph)
    removed: list = []
    for node in graph.node:
        found = find(node, index)
        if found:
            replacement, taken = found
            node.CopyFrom(replacement)
            removed.append(taken)
    if not removed:
        return 0
    graph.initializer.extend(index.new_initializers)
    # A node's op type and first output name it: each value has one producer (a replacement takes over some).
    gone = {(n.op_type, n.output[0]) for run in removed for n in run}
    kept = [n for n in graph.node if (n.op_type, n.output[0]) not in gone]
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for n in graph.node for name in n.input} | index.outputs
    still = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(still)
    produced = {out for n in graph.node for out in n.output} | {i.name for i in graph.input} | used
    info = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(info)
    return len(removed)


def _int8_matmul(node, index: _Index):
    """A W8A8 MatMul of requantize.py whose int8 weight Int8MatMul can take (K a multiple of 4, N of 16): a
    DynamicQuantizeMatMul(x, W, scales), or a MatMulIntegerToFloat reading x's per-token rows (Abs, ReduceMax,
    Max, Div, QuantizeLinear) whose output only a Mul by their amax reads. One Int8MatMul of x."""
    from onnx import numpy_helper

    if node.domain != MS_DOMAIN or node.op_type not in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat"):
        return None
    weight = index.constant(node.input[1]) if len(node.input) > 1 else None
    if weight is None or weight.dtype != np.int8 or weight.ndim != 2 or weight.shape[0] % 4 \
            or weight.shape[1] % INT8_TILE:
        return None
    n = weight.shape[1]
    if node.op_type == "DynamicQuantizeMatMul":
        scales = index.constant(node.input[2]) if len(node.input) == 3 else None
        x, output, taken = node.input[0], node.output[0], []
    else:
        found = _per_token_rows(node, index)
        if found is None:
            return None
        x, chain, column_scales, amax = found
        scaled = index.only_reader(node.output[0], "Mul")
        if scaled is None or sorted(scaled.input) != sorted([node.output[0], amax]) \
                or len(index.readers.get(amax, [])) != 2:
            return None
        # MatMulIntegerToFloat's factor is W's column scale / 127 (the rows' amax / 127 is the Mul's amax).
        scales = column_scales * np.float32(127) if column_scales is not None else None
        output, taken = scaled.output[0], [*chain, scaled]
    if scales is None or scales.dtype != np.float32 or scales.shape != (n,):
        return None
    base = node.input[1]
    packed = numpy_helper.from_array(pack_int8_weight(weight), f"{base}/{INT8_MATMUL}")
    sums = numpy_helper.from_array(weight.astype(np.int32).sum(axis=0, dtype=np.int32), f"{base}/{INT8_MATMUL}_sums")
    stored_scales = numpy_helper.from_array(scales.astype(np.float32), f"{base}/{INT8_MATMUL}_scales")
    index.new_initializers += [packed, sums, stored_scales]
    fused = _make_node(INT8_MATMUL, [x, packed.name, stored_scales.name, sums.name], [output],
                       node.name or output)
    return fused, taken


def _per_token_rows(matmul, index: _Index):
    """For a MatMulIntegerToFloat(rows, W, 1, scales, 128) whose rows come from requantize._quantize_per_token's
    nodes on x, read by nothing else: (x, those nodes, the MatMul's scales, the amax value), else None."""
    if len(matmul.input) != 5:
        return None
    quantize = index.producer.get(matmul.input[0])
    divide = index.producer.get(quantize.input[0]) if quantize is not None and quantize.op_type == "QuantizeLinear" \
        else None
    if divide is None or divide.op_type != "Div" or not index.read_once(matmul.input[0]) \
            or not index.read_once(divide.output[0]):
        return None
    x, amax = divide.input
    floor = index.producer.get(amax)
    reduce_max = index.producer.get(floor.input[0]) if floor is not None and floor.op_type == "Max" else None
    absolute = index.producer.get(reduce_max.input[0]) if reduce_max is not None \
        and reduce_max.op_type == "ReduceMax" else None
    if absolute is None or absolute.op_type != "Abs" or list(absolute.input) != [x] \
            or not index.read_once(absolute.output[0]) or not index.read_once(reduce_max.output[0]):
        return None
    if not _is_per_token_quantization(reduce_max, floor, quantize, index):
        return None
    one, zero = index.constant(matmul.input[2]), index.constant(matmul.input[4])
    if one is None or one.size != 1 or float(one) != 1.0 or zero is None or zero.dtype != np.uint8 \
            or zero.size != 1 or int(zero) != 128:
        return None
    return x, [absolute, reduce_max, floor, divide, quantize], index.constant(matmul.input[3]), amax


def _is_per_token_quantization(reduce_max, floor, quantize, index: _Index) -> bool:
    """Whether these are requantize._quantize_per_token's ReduceMax (axis -1, kept), Max (a floor of at most
    1e-12) and QuantizeLinear (scale 1/127, zero point 128 as uint8)."""
    keepdims = next((a.i for a in reduce_max.attribute if a.name == "keepdims"), 1)
    axes = index.constant(reduce_max.input[1]) if len(reduce_max.input) > 1 else None
    tiny = index.constant(floor.input[1]) if len(floor.input) == 2 else None
    step = index.constant(quantize.input[1])
    zero = index.constant(quantize.input[2]) if len(quantize.input) > 2 else None
    return (keepdims == 1 and axes is not None and axes.tolist() == [-1] and tiny is not None and tiny.size == 1
            and 0 < float(tiny) <= 1e-12 and step is not None and step.size == 1
            and float(step) == np.float32(1 / 127) and zero is not None and zero.dtype == np.uint8
            and zero.size == 1 and int(zero) == 128)


def _gated_silu(split, index: _Index):
    """A Split of gate|up into equal halves followed by silu(gate) * up (Sigmoid, Mul, Mul) and, where what
    reads that is a Q4_1 MatMul, its offsets' Reshape, ReduceSum and MatMul: one GatedSilu."""
    from onnx import TensorProto

    if split.op_type != "Split" or split.domain not in ("", "ai.onnx") or len(split.output) != 2 \
            or len(split.input) != 2 or not all(split.output):
        return None
    axis = next((a.i for a in split.attribute if a.name == "axis"), 0)
    sizes = index.constant(split.input[1])
    if axis != -1 or sizes is None or sizes.shape != (2,) or sizes[0] != sizes[1]:
        return None
    gate, up = split.output
    gate_readers = index.readers.get(gate, [])
    sigmoid = next((n for n in gate_readers if n.op_type == "Sigmoid"), None)
    if len(gate_readers) != 2 or sigmoid is None or gate in index.outputs:
        return None
    activation = index.only_reader(sigmoid.output[0], "Mul")
    if activation is None or sorted(activation.input) != sorted([gate, sigmoid.output[0]]):
        return None
    product = index.only_reader(activation.output[0], "Mul")
    up_reader = index.only_reader(up, "Mul")
    if product is None or sorted(product.input) != sorted([activation.output[0], up]) \
            or up_reader is None or up_reader.output[0] != product.output[0]:
        return None
    taken = [sigmoid, activation, product]
    inputs, outputs = [split.input[0]], [product.output[0]]
    n = int(sizes[0])
    reshape = next((r for r in index.readers.get(product.output[0], []) if r.op_type == "Reshape"), None)
    reduce_sum = index.only_reader(reshape.output[0], "ReduceSum") if reshape is not None else None
    matmul = index.only_reader(reduce_sum.output[0], "MatMul") if reduce_sum is not None else None
    if matmul is not None and matmul.input[0] == reduce_sum.output[0]:
        shape, axes = index.constant(reshape.input[1]), index.constant(reduce_sum.input[1])
        weight = index.inits.get(matmul.input[1])
        keepdims = next((a.i for a in reduce_sum.attribute if a.name == "keepdims"), 1)
        if (shape is not None and shape.tolist() == [0, 0, n // 32, 32] and n % 32 == 0 and axes is not None
                and axes.tolist() == [-1] and keepdims == 0 and weight is not None
                and weight.data_type == TensorProto.FLOAT and len(weight.dims) == 2 and weight.dims[0] == n // 32):
            taken += [reshape, reduce_sum, matmul]
            inputs.append(matmul.input[1])
            outputs.append(matmul.output[0])
    return _make_node(GATED_SILU, inputs, outputs, f"{split.name or split.output[0]}/{GATED_SILU}"), taken


def _skip_rms_norm(norm, index: _Index):
    """A SkipSimplifiedLayerNormalization (no bias) whose residual or skip is the Add of a Q4_1 MatMulNBits and
    GatedSilu's offsets, read by nothing else: one SkipRmsNorm that adds the offsets as it sums."""
    if norm.op_type != "SkipSimplifiedLayerNormalization" or norm.domain != MS_DOMAIN:
        return None
    inputs = list(norm.input)
    outputs = list(norm.output) + [""] * (4 - len(norm.output))
    epsilon = next((a.f for a in norm.attribute if a.name == "epsilon"), None)
    if len(inputs) != 3 or not all(inputs) or epsilon is None or any(index.readers.get(o) for o in outputs[1:3] if o):
        return None
    for position in (1, 0):
        value, residual = inputs[position], inputs[1 - position]
        last = index.producer.get(value)
        if last is None or not index.read_once(value) or len(last.input) != 2:
            continue
        makers = [index.producer.get(name) for name in last.input]
        kinds = [m.op_type if m is not None else None for m in makers]
        if last.op_type != "Add" or sorted(kinds, key=str) != sorted(["MatMulNBits", GATED_SILU], key=str):
            continue
        offsets = last.input[kinds.index(GATED_SILU)]
        if makers[kinds.index(GATED_SILU)].output[1:2] != [offsets]:
            continue
        fused_inputs = [residual, last.input[kinds.index("MatMulNBits")], inputs[2], offsets]
        fused = _make_node(SKIP_RMS_NORM, fused_inputs, [outputs[0], outputs[3]] if outputs[3] else [outputs[0]],
                           norm.name or outputs[0])
        fused.attribute.extend([a for a in norm.attribute if a.name == "epsilon"])
        return fused, [last]
    return None


def _make_node(op_type: str, inputs: list[str], outputs: list[str], name: str):
    from onnx import helper

    return helper.make_node(op_type, inputs, outputs, name=name, domain=DOMAIN)


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
