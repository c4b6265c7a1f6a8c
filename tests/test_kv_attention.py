"""ghostls's onnxruntime ops (inference/converter/ops/): attention over a float16 or int8 KV cache, the real library
in real onnxruntime sessions, against a NumPy reference of grouped-query attention with rotary embeddings; the
other ops against NumPy; the converter putting them into a model; and the rule that a model folder carries them
only as a copy of ghostls's own build."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ghostls.inference.converter.ops import (
    fuse_small_nodes,
    gated_silu,
    int8_matmul,
    kv_attention,
    library as ops_library,
    skip_rms_norm,
)
from ghostls.inference.converter.ops.graph import DOMAIN
from ghostls.inference.cache import ModelError, read_manifest, validate_model_dir

pytestmark = pytest.mark.skipif(ops_library.unavailable_reason() is not None,
                                reason=f"{ops_library.unavailable_reason()}")
CACHES = ("float16", "int8")


def _cpu_flags() -> set[str]:
    try:
        return set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                        if line.startswith("flags")).partition(":")[2].split())
    except (OSError, StopIteration):
        return set()


# What ghostls::UseVnni asks of the CPU, read here from /proc/cpuinfo rather than from the library under test.
MISSING_VNNI = [flag for flag in ("avx512f", "avx512bw", "avx512dq", "avx512_vnni") if flag not in _cpu_flags()]


def _ask_for(kernel: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions made next take `kernel`: "avx2" (GHOSTLS_KERNELS=avx2), "avx512vnni" (the default on a CPU that
    has it; skipped, saying so, on one that has not: a pass there would be AVX2 checked twice), or None for ops
    whose code is the same on every CPU."""
    monkeypatch.delenv("GHOSTLS_KERNELS", raising=False)
    if kernel == "avx2":
        monkeypatch.setenv("GHOSTLS_KERNELS", "avx2")
    elif kernel == "avx512vnni" and MISSING_VNNI:
        pytest.skip(f"this CPU lacks {', '.join(MISSING_VNNI)}: the AVX-512 VNNI kernels cannot run here, only AVX2's")


def _kernels_run(library: Path, op: str, before: dict[str, int]) -> dict[str, int]:
    """The kernels of `op` that ran since `before` (ops_library.kernel_runs), with how many calls each."""
    after = ops_library.kernel_runs(library)
    return {name.partition(".")[2]: after[name] - before[name] for name in after
            if name.startswith(f"{op}.") and after[name] > before[name]}


@pytest.fixture(scope="module")
def library() -> Path:
    # Built before the tests (Makefile: `python -m ghostls.inference.converter.ops.library`): the tests cannot
    # reach the network for the headers, and a conversion without the library would quietly keep a float32 cache.
    path = ops_library.library_path()
    assert path.is_file(), f"{path} is not built; run `python -m ghostls.inference.converter.ops.library` first"
    return path


def _attention_graph(cache: str, heads: int, kv_heads: int, head_size: int) -> bytes:
    from onnx import TensorProto as T
    from onnx import helper

    kind, row = (T.INT8 if cache == "int8" else T.FLOAT16), kv_attention.row_elements(cache, head_size)
    inputs = [
        helper.make_tensor_value_info("qkv", T.FLOAT, [None, None, (heads + 2 * kv_heads) * head_size]),
        helper.make_tensor_value_info("past_key", kind, [None, kv_heads, None, row]),
        helper.make_tensor_value_info("past_value", kind, [None, kv_heads, None, row]),
        helper.make_tensor_value_info("seqlens_k", T.INT32, [None]),
        helper.make_tensor_value_info("total", T.INT32, [1]),
        helper.make_tensor_value_info("cos", T.FLOAT, [None, head_size // 2]),
        helper.make_tensor_value_info("sin", T.FLOAT, [None, head_size // 2]),
    ]
    outputs = [helper.make_tensor_value_info("out", T.FLOAT, None),
               helper.make_tensor_value_info("present_key", kind, None),
               helper.make_tensor_value_info("present_value", kind, None)]
    node = helper.make_node(kv_attention.OP_TYPES[cache], [i.name for i in inputs], [o.name for o in outputs],
                            domain=DOMAIN, num_heads=heads, kv_num_heads=kv_heads, scale=0.3)
    graph = helper.make_graph([node], "attention", inputs, outputs)
    return helper.make_model(graph, ir_version=10, opset_imports=[
        helper.make_opsetid("", 21), helper.make_opsetid(DOMAIN, 1)]).SerializeToString()


def _session(library: Path, cache: str, heads: int, kv_heads: int, head_size: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2  # the key-chunked decode path runs on both threads
    options.register_custom_ops_library(str(library))
    return ort.InferenceSession(_attention_graph(cache, heads, kv_heads, head_size), options,
                                providers=["CPUExecutionProvider"])


def _rotary_tables(head_size: int, positions: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    angles = np.outer(np.arange(positions), 1.0 / 10000 ** (np.arange(0, head_size, 2) / head_size))
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    first, second = x[..., :half], x[..., half:]
    return np.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


def _quantize(rows: np.ndarray) -> np.ndarray:
    """int8 cache rows as the op writes them: the values / (largest magnitude / 127), rounded, then the scale's
    four bytes."""
    scale = np.abs(rows).max(-1, keepdims=True).astype(np.float32) / np.float32(127)
    scale[scale == 0] = 1
    values = np.rint(rows / scale).astype(np.int8)
    return np.concatenate([values, scale.astype(np.float32).view(np.int8)], axis=-1)


def _dequantize(cache: str, rows: np.ndarray) -> np.ndarray:
    if cache == "float16":
        return rows.astype(np.float64)
    scale = np.ascontiguousarray(rows[..., -4:]).view(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):  # rows past the total length were never written
        return rows[..., :-4].astype(np.float64) * scale


def _random_cache(cache: str, rng, shape) -> np.ndarray:
    rows = rng.standard_normal(shape).astype(np.float32)
    return rows.astype(np.float16) if cache == "float16" else _quantize(rows)


def _check(cache, session, qkv, past_key, past_value, pasts, heads, kv_heads, head_size, cos, sin, case) -> None:
    """Run the op and check it: the past rows kept byte for byte, the new rows the rotated keys and the values
    as the cache type stores them, and the output the attention of each query over the cache up to its own
    position (float64 over the rows the op wrote)."""
    batch, sequence, _ = qkv.shape
    out, keys, values = session.run(None, {
        "qkv": qkv, "past_key": past_key, "past_value": past_value, "cos": cos, "sin": sin,
        "seqlens_k": np.array([p + sequence - 1 for p in pasts], np.int32),
        "total": np.array([max(pasts) + sequence], np.int32)})
    assert keys.shape[2] == max(past_key.shape[2], max(pasts) + sequence), case
    q = qkv[..., :heads * head_size].reshape(batch, sequence, heads, head_size).astype(np.float64)
    k = qkv[..., heads * head_size:(heads + kv_heads) * head_size].reshape(batch, sequence, kv_heads, head_size)
    v = qkv[..., (heads + kv_heads) * head_size:].reshape(batch, sequence, kv_heads, head_size)
    stored_keys, stored_values = _dequantize(cache, keys), _dequantize(cache, values)
    for b, past in enumerate(pasts):
        np.testing.assert_array_equal(keys[b, :, :past], past_key[b, :, :past], err_msg=case)
        np.testing.assert_array_equal(values[b, :, :past], past_value[b, :, :past], err_msg=case)
        positions = past + np.arange(sequence)
        c, s = cos[positions][:, None, :], sin[positions][:, None, :]
        for new, written in ((_rotate(k[b].astype(np.float64), c, s), stored_keys), (v[b], stored_values)):
            got = written[b][:, positions].transpose(1, 0, 2)
            # One rounding step of the cache type (float32 against float64 rotation may land on either side).
            step = (np.abs(new) * 2 ** -10 if cache == "float16"
                    else np.abs(new).max(-1, keepdims=True) / 127 * 0.51) + 1e-6
            assert (np.abs(got - new) <= step).all(), case
        q_rotated = _rotate(q[b], c, s)
        for h in range(heads):
            g = h // (heads // kv_heads)
            for i, p in enumerate(positions):
                query = q_rotated[i, h] * 0.3
                if cache == "int8" and sequence == 1 and head_size % 32 == 0:
                    # A decode step's scores are integer dot products: the query quantized per head, as the op does.
                    step = np.abs(query).max() / 127
                    query = np.rint(query / step) * step
                scores = stored_keys[b, g, :p + 1] @ query
                weights = np.exp(scores - scores.max())
                expected = weights / weights.sum() @ stored_values[b, g, :p + 1]
                np.testing.assert_allclose(out[b, i, h * head_size:(h + 1) * head_size], expected, atol=1e-4,
                                           err_msg=case)


# (sequence, past, cache length, batch): one-token decodes short and long (the long ones split the keys into
# chunks across threads), a cache exactly full, one that must grow (not onnxruntime-genai's shared buffer),
# prompt chunks from empty and after a past, batch rows of different lengths (prompt chunks and decodes).
CASES = [(1, 0, 64, 1), (1, 5, 64, 1), (1, 300, 400, 1), (1, 1000, 1100, 1), (1, 1023, 1024, 1), (1, 9, 9, 1),
         (7, 0, 64, 1), (100, 0, 256, 1), (40, 300, 400, 1), (13, 700, 713, 1), (3, 10, 13, 2), (5, 59, 64, 2),
         (1, 40, 64, 2), (1, 513, 600, 2)]


# A decode step over an int8 cache scores with integer dot products, in AVX-512 VNNI (head sizes 64 and 128) or
# AVX2 (32 and up); every other step, and the float16 cache, scores in float32, the same code on every CPU.
@pytest.mark.parametrize("cache,kernel", [("float16", None), ("int8", "avx512vnni"), ("int8", "avx2")],
                         ids=["float16", "int8-avx512vnni", "int8-avx2"])
@pytest.mark.parametrize("heads,kv_heads,head_size", [(9, 3, 64), (4, 2, 16), (4, 2, 32), (8, 1, 128), (4, 4, 64)])
def test_attention_matches_the_reference(library: Path, cache: str, kernel: str | None, heads: int, kv_heads: int,
                                         head_size: int, monkeypatch: pytest.MonkeyPatch, record_property) -> None:
    _ask_for(kernel, monkeypatch)
    expected = None
    if cache == "int8" and head_size % 32 == 0:
        expected = "avx512vnni" if kernel == "avx512vnni" and head_size % 64 == 0 else "avx2"
    before = ops_library.kernel_runs(library)
    session = _session(library, cache, heads, kv_heads, head_size)
    cos, sin = _rotary_tables(head_size)
    rng = np.random.default_rng(head_size + heads)
    for sequence, past, cache_length, batch in CASES:
        pasts = [past, max(0, past - 2)][:batch]
        qkv = (rng.standard_normal((batch, sequence, (heads + 2 * kv_heads) * head_size)) * 2).astype(np.float32)
        past_key = _random_cache(cache, rng, (batch, kv_heads, cache_length, head_size))
        past_value = _random_cache(cache, rng, (batch, kv_heads, cache_length, head_size))
        _check(cache, session, qkv, past_key, past_value, pasts, heads, kv_heads, head_size, cos, sin,
               f"{cache}: sequence {sequence}, past {past}, cache {cache_length}, batch {batch}")
    ran = _kernels_run(library, "Int8KvAttention", before)
    record_property("kernel", expected or "float32 scores")
    print(f"{cache} cache, head size {head_size}: decode steps ran {ran or 'float32 scores'}")
    decode_steps = sum(sequence == 1 for sequence, *_ in CASES)
    assert ran == ({expected: decode_steps} if expected else {}), f"expected {expected}, ran {ran}"


def test_a_bad_request_is_an_error_and_the_session_goes_on(library: Path) -> None:
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    session = _session(library, "float16", 4, 2, 16)
    cos, sin = _rotary_tables(16, positions=8)
    feeds = {"qkv": np.zeros((1, 1, 128), np.float32), "cos": cos, "sin": sin,
             "past_key": np.zeros((1, 2, 16, 16), np.float16), "past_value": np.zeros((1, 2, 16, 16), np.float16),
             "seqlens_k": np.array([8], np.int32), "total": np.array([9], np.int32)}
    with pytest.raises(InvalidArgument, match="out of range"):  # position 8 is past the rotary table's 8
        session.run(None, feeds)
    with pytest.raises(InvalidArgument, match="one per batch row"):
        session.run(None, {**feeds, "seqlens_k": np.array([], np.int32)})
    feeds.update(seqlens_k=np.array([3], np.int32), total=np.array([4], np.int32))
    out, _, _ = session.run(None, feeds)
    assert out.shape == (1, 1, 64)

    odd = _session(library, "float16", 2, 1, 48)  # a head size the kernel has no width for
    cos, sin = _rotary_tables(48, positions=8)
    with pytest.raises(InvalidArgument, match="head size must be"):
        odd.run(None, {"qkv": np.zeros((1, 1, 192), np.float32), "cos": cos, "sin": sin,
                       "past_key": np.zeros((1, 1, 8, 48), np.float16),
                       "past_value": np.zeros((1, 1, 8, 48), np.float16),
                       "seqlens_k": np.array([0], np.int32), "total": np.array([1], np.int32)})


def _logits(model_dir: Path) -> np.ndarray:
    """Last-position logits after a 64-token prompt (the prefill path) and after four more tokens fed one at a
    time (the one-query path), the same tokens for every model."""
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=96, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(list(range(3, 67)))
    steps = [generator.get_logits()[0, -1].copy()]
    for token in (5, 9, 11, 40):
        generator.append_tokens([token])
        steps.append(generator.get_logits()[0, -1].copy())
    return np.array(steps)


def test_conversion_swaps_in_the_op_for_each_cache_type(library: Path, tiny_checkpoints,
                                                        tiny_model: Callable[[str], Path], tmp_path: Path) -> None:
    """A checkpoint's default is float16; int8 is asked for; float32 keeps onnxruntime's attention. Each swapped
    model carries the library and a cache of its type, sized so (int8 rows: head size 16 + the scale's 4 bytes)."""
    import onnx

    from ghostls.inference.converter.convert import convert
    from ghostls.inference.engine import Engine

    models = {"float16": tiny_model("starcoder")}
    for cache in ("int8", "float32"):
        models[cache] = convert(tiny_checkpoints["starcoder"], out_root=tmp_path / cache, kv_cache=cache)
    for cache, model_dir in models.items():
        assert read_manifest(model_dir).kv_cache == cache
        graph = onnx.load(str(model_dir / "model.onnx"), load_external_data=False).graph
        ops = [n.op_type for n in graph.node]
        past = next(v for v in graph.input if v.name == "past_key_values.0.key").type.tensor_type
        if cache == "float32":
            assert ops.count("GroupQueryAttention") == 2 and not (model_dir / ops_library.LIBRARY_NAME).exists()
            continue
        assert ops.count(kv_attention.OP_TYPES[cache]) == 2 and "GroupQueryAttention" not in ops
        assert past.shape.dim[3].dim_value == kv_attention.row_elements(cache, 16)
        assert ops_library.is_own_library(model_dir / ops_library.LIBRARY_NAME)
    per_token = {cache: Engine(model_dir).kv_bytes_per_token for cache, model_dir in models.items()}
    assert per_token == {"float32": 2 * 2 * 2 * 16 * 4, "float16": 2 * 2 * 2 * 16 * 2, "int8": 2 * 2 * 2 * 20}


@pytest.mark.parametrize("cache,tolerance", [("float16", 1e-3), ("int8", 5e-3)])
def test_a_cache_type_keeps_the_logits_of_float32s(library: Path, tiny_checkpoints, tmp_path: Path, cache: str,
                                                   tolerance: float) -> None:
    """At precision fp32 (int8's dynamic activation quantization would magnify any difference), the logits stay
    within the cache type's rounding of the float32 cache's. Measured: float16 8e-5 of the largest logit, int8
    1.9e-3."""
    from ghostls.inference.converter.convert import convert

    reference = _logits(convert(tiny_checkpoints["starcoder"], precision="fp32", out_root=tmp_path / "float32",
                                kv_cache="float32"))
    logits = _logits(convert(tiny_checkpoints["starcoder"], precision="fp32", out_root=tmp_path / cache,
                             kv_cache=cache))
    assert np.abs(logits - reference).max() < tolerance * np.abs(reference).max()


def test_a_model_folder_carries_only_ghostls_own_build(library: Path, tiny_model: Callable[[str], Path],
                                                       tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_model("starcoder"), tmp_path / "model")
    validate_model_dir(folder)  # the copy of the library ghostls built is accepted

    copy = folder / ops_library.LIBRARY_NAME
    tampered = bytearray(copy.read_bytes())
    tampered[-1] ^= 0xFF
    copy.write_bytes(bytes(tampered))
    with pytest.raises(ModelError, match=f"can run code.*{ops_library.LIBRARY_NAME}"):
        validate_model_dir(folder)

    copy.unlink()  # named in genai_config.json, absent: onnxruntime would search the system for that name
    with pytest.raises(ModelError, match="does not hold it"):
        validate_model_dir(folder)

    shutil.copy2(library, copy)
    config_path = folder / "genai_config.json"
    config = json.loads(config_path.read_text())
    config["model"]["decoder"]["session_options"]["custom_ops_library"] = str(library)  # even ghostls's own path
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelError, match="custom_ops_library"):
        validate_model_dir(folder)


def _single_op_session(library: Path, node, inputs: list, outputs: list):
    import onnxruntime as ort
    from onnx import helper

    model = helper.make_model(helper.make_graph([node], "op", inputs, outputs), ir_version=10, opset_imports=[
        helper.make_opsetid("", 21), helper.make_opsetid(DOMAIN, 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.register_custom_ops_library(str(library))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("offsets", [False, True])
def test_gated_silu_is_silu_of_the_gate_times_up_and_the_block_offsets(library: Path, offsets: bool) -> None:
    from onnx import TensorProto as T
    from onnx import helper

    n, m = 96, 40  # three blocks of 32; an output width that is not a multiple of eight
    inputs = [helper.make_tensor_value_info("gate_up", T.FLOAT, [None, None, 2 * n])]
    outputs = [helper.make_tensor_value_info("y", T.FLOAT, None)]
    if offsets:
        inputs.append(helper.make_tensor_value_info("weight", T.FLOAT, [n // 32, m]))
        outputs.append(helper.make_tensor_value_info("offsets", T.FLOAT, None))
    node = helper.make_node(gated_silu.OP_TYPE, [i.name for i in inputs], [o.name for o in outputs],
                            domain=DOMAIN)
    session = _single_op_session(library, node, inputs, outputs)
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((n // 32, m)).astype(np.float32)
    for shape in ((1, 1), (2, 57)):  # a decode step; a batch of prompt chunks across threads
        gate_up = (rng.standard_normal((*shape, 2 * n)) * 4).astype(np.float32)
        gate_up[..., 0] = [-200.0] if shape == (1, 1) else -200.0  # far past e^x's float range: silu is 0
        got = session.run(None, {"gate_up": gate_up, **({"weight": weight} if offsets else {})})
        g, u = gate_up[..., :n].astype(np.float64), gate_up[..., n:].astype(np.float64)
        y = g * u / (1 + np.exp(-g))
        np.testing.assert_allclose(got[0], y, rtol=2e-6, atol=1e-6)
        if offsets:
            expected = y.reshape(*shape, n // 32, 32).sum(-1) @ weight
            np.testing.assert_allclose(got[1], expected, rtol=1e-5, atol=1e-4)


def test_gated_silu_refuses_shapes_it_cannot_read_and_the_session_goes_on(library: Path) -> None:
    from onnx import TensorProto as T
    from onnx import helper
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    inputs = [helper.make_tensor_value_info(name, T.FLOAT, None) for name in ("gate_up", "w")]
    outputs = [helper.make_tensor_value_info("y", T.FLOAT, None), helper.make_tensor_value_info("o", T.FLOAT, None)]
    node = helper.make_node(gated_silu.OP_TYPE, ["gate_up", "w"], ["y", "o"], domain=DOMAIN)
    session = _single_op_session(library, node, inputs, outputs)
    with pytest.raises(InvalidArgument, match="even"):
        session.run(None, {"gate_up": np.zeros((1, 1, 63), np.float32), "w": np.zeros((1, 4), np.float32)})
    with pytest.raises(InvalidArgument, match=r"\[n / 32, m\]"):  # n = 48: not whole blocks
        session.run(None, {"gate_up": np.zeros((1, 1, 96), np.float32), "w": np.zeros((1, 4), np.float32)})
    y, o = session.run(None, {"gate_up": np.ones((1, 1, 64), np.float32), "w": np.ones((1, 4), np.float32)})
    np.testing.assert_allclose(o, np.full((1, 1, 4), 32 / (1 + np.exp(-1))), rtol=1e-6)


def test_folding_small_nodes_keeps_the_logits(library: Path, tiny_checkpoints, tmp_path: Path) -> None:
    """A W8A8 conversion with onnxruntime's attention, then the attention swapped: with and without the small
    nodes folded. With the weights left on disk, each layer loses the MLP's Split, Sigmoid and two Muls, and the
    logits stay those of the unfolded graph; a run whose middle value something else reads is left alone. With
    the weights loaded (as the converter folds), the W8A8 MatMuls become Int8MatMul too (o's with its five
    quantizing nodes and its Mul): q/k/v and gate|up then quantize each row symmetrically instead of the whole
    input asymmetrically, so the logits move by that quantization's noise."""
    import onnx

    from ghostls.inference.converter.convert import _set_session_options, convert

    source = convert(tiny_checkpoints["starcoder"], precision="w8a8", out_root=tmp_path / "source", kv_cache="float32")
    folders = {}
    for name in ("unfolded", "folded", "partly", "int8"):
        folder = folders[name] = shutil.copytree(source, tmp_path / name)
        model = onnx.load(str(folder / "model.onnx"), load_external_data=name == "int8")
        assert kv_attention.swap_attention(model, 16, "float16") == 2
        if name == "partly":  # layer 0's gate activation also read as a graph output: that MLP stays as it is
            sigmoid = next(n for n in model.graph.node if n.op_type == "Sigmoid")
            model.graph.output.append(onnx.helper.make_tensor_value_info(sigmoid.output[0], onnx.TensorProto.FLOAT,
                                                                         None))
        before = len(model.graph.node)
        counts = fuse_small_nodes(model) if name != "unfolded" else None
        ops = [n.op_type for n in model.graph.node]
        if name == "folded":
            # The down projection (int8 blocks, no offsets to add) feeds onnxruntime's norm as it did.
            assert counts == {int8_matmul.OP_TYPE: 0, gated_silu.OP_TYPE: 2, skip_rms_norm.OP_TYPE: 0}
            assert before - len(model.graph.node) == 2 * 3
            assert ops.count(gated_silu.OP_TYPE) == 2 and not {"Sigmoid", "Split"} & set(ops)
        elif name == "partly":
            assert counts == {int8_matmul.OP_TYPE: 0, gated_silu.OP_TYPE: 1, skip_rms_norm.OP_TYPE: 0}
            assert ops.count("Sigmoid") == 1
        elif name == "int8":
            # Per layer q/k/v, gate|up and o (with its five quantizing nodes and its Mul).
            assert counts == {int8_matmul.OP_TYPE: 6, gated_silu.OP_TYPE: 2, skip_rms_norm.OP_TYPE: 0}
            assert before - len(model.graph.node) == 2 * (6 + 3)
            assert ops.count("HalfKvAttention") == 2 and ops.count("SkipSimplifiedLayerNormalization") == 4
            assert not {"DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QuantizeLinear", "Mul"} & set(ops)
        onnx.save_model(model, str(folder / "model.onnx"))
        _set_session_options(folder / "genai_config.json", custom_ops_library=ops_library.install(folder, library))
    reference = _logits(folders["unfolded"])
    for name in ("folded", "partly"):
        # Measured: 4e-7 of the largest logit (Sigmoid's and the op's e^x round differently).
        assert np.abs(_logits(folders[name]) - reference).max() < 2e-5 * np.abs(reference).max(), name
    # Measured: 1.0e-2 of the largest logit, a quantization step's noise; a wrong scale or a lost zero-point
    # correction in Int8MatMul moves the logits by far more.
    assert np.abs(_logits(folders["int8"]) - reference).max() < 3e-2 * np.abs(reference).max()


@pytest.mark.parametrize("extra", [False, True])
def test_skip_rms_norm_is_the_rms_norm_of_the_residual_sum(library: Path, extra: bool) -> None:
    from onnx import TensorProto as T
    from onnx import helper

    h = 76  # not a multiple of eight: the scalar tail runs too
    names = ["residual", "skip", "gamma", "extra" if extra else ""]
    inputs = [helper.make_tensor_value_info(name, T.FLOAT, None) for name in names if name]
    outputs = [helper.make_tensor_value_info(name, T.FLOAT, None) for name in ("normalized", "sum")]
    node = helper.make_node(skip_rms_norm.OP_TYPE, names, ["normalized", "sum"], domain=DOMAIN,
                            epsilon=1e-5)
    session = _single_op_session(library, node, inputs, outputs)
    rng = np.random.default_rng(5)
    for shape in ((1, 1), (2, 33)):  # a decode step; prompt rows across threads
        feeds = {"residual": rng.standard_normal((*shape, h)).astype(np.float32),
                 "skip": rng.standard_normal((*shape, h)).astype(np.float32),
                 "gamma": rng.standard_normal(h).astype(np.float32)}
        if extra:
            feeds["extra"] = rng.standard_normal((*shape, h)).astype(np.float32)
        normalized, total = session.run(None, feeds)
        expected = feeds["residual"].astype(np.float64) + feeds["skip"] \
            + feeds.get("extra", 0.0)
        np.testing.assert_allclose(total, expected, rtol=1e-5, atol=1e-6)
        rms = np.sqrt((expected ** 2).mean(-1, keepdims=True) + 1e-5)
        np.testing.assert_allclose(normalized, expected / rms * feeds["gamma"], rtol=1e-5, atol=1e-5)


def test_skip_rms_norm_refuses_shapes_that_do_not_match_and_the_session_goes_on(library: Path) -> None:
    from onnx import TensorProto as T
    from onnx import helper
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    names = ["residual", "skip", "gamma", "extra"]
    inputs = [helper.make_tensor_value_info(name, T.FLOAT, None) for name in names]
    outputs = [helper.make_tensor_value_info("normalized", T.FLOAT, None)]
    node = helper.make_node(skip_rms_norm.OP_TYPE, names, ["normalized"], domain=DOMAIN,
                            epsilon=1e-5)
    session = _single_op_session(library, node, inputs, outputs)
    feeds = {"residual": np.ones((1, 2, 8), np.float32), "skip": np.ones((1, 2, 8), np.float32),
             "gamma": np.ones(8, np.float32)}
    with pytest.raises(InvalidArgument, match="extra must have the residual's shape"):
        session.run(None, {**feeds, "extra": np.ones((1, 2, 1), np.float32)})
    with pytest.raises(InvalidArgument, match="one shape"):
        session.run(None, {**feeds, "skip": np.ones((1, 1, 8), np.float32), "extra": np.ones((1, 2, 8), np.float32)})
    (normalized,) = session.run(None, {**feeds, "extra": np.full((1, 2, 8), 2, np.float32)})
    np.testing.assert_allclose(normalized, np.ones((1, 2, 8)), rtol=1e-5)  # the sum, 4, normalized: 1


def test_the_q4_1_down_projections_offsets_are_added_as_the_norm_sums(library: Path) -> None:
    """GatedSilu's offsets, a 4-bit MatMulNBits, their Add and onnxruntime's norm, as requantize.py and the
    GatedSilu fold leave a Q4_1 down projection: folded, the Add goes into a SkipRmsNorm and the outputs stay.
    A norm whose Add adds a constant (a bias, which broadcasts) is left alone."""
    import onnxruntime as ort
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    n, h, eps = 64, 24, 1e-5
    rng = np.random.default_rng(11)
    inits = [numpy_helper.from_array(rng.standard_normal((n // 32, h)).astype(np.float32), "offsets_weight"),
             numpy_helper.from_array(rng.integers(0, 256, (h, n // 32, 16), dtype=np.uint8), "q4"),
             numpy_helper.from_array(rng.uniform(0.01, 0.1, h * n // 32).astype(np.float32), "scales"),
             numpy_helper.from_array(rng.standard_normal(h).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.standard_normal(h).astype(np.float32), "bias")]
    nodes = [
        helper.make_node(gated_silu.OP_TYPE, ["gate_up", "offsets_weight"], ["y", "offsets"],
                         domain=DOMAIN),
        helper.make_node("MatMulNBits", ["y", "q4", "scales"], ["down_q4"], domain="com.microsoft", K=n, N=h, bits=4,
                         block_size=32, accuracy_level=4),
        helper.make_node("Add", ["down_q4", "offsets"], ["down"]),
        helper.make_node("SkipSimplifiedLayerNormalization", ["residual", "down", "gamma"], ["normed", "", "", "sum"],
                         domain="com.microsoft", epsilon=eps),
        helper.make_node("Add", ["normed", "bias"], ["biased"]),
        helper.make_node("SkipSimplifiedLayerNormalization", ["sum", "biased", "gamma"], ["normed2"],
                         domain="com.microsoft", epsilon=eps)]
    inputs = [helper.make_tensor_value_info("gate_up", T.FLOAT, [1, None, 2 * n]),
              helper.make_tensor_value_info("residual", T.FLOAT, [1, None, h])]
    outputs = [helper.make_tensor_value_info(name, T.FLOAT, None) for name in ("normed", "sum", "normed2")]
    model = helper.make_model(helper.make_graph(nodes, "down", inputs, outputs, inits), ir_version=10, opset_imports=[
        helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1),
        helper.make_opsetid(DOMAIN, 1)])

    def run(graph_model) -> list[np.ndarray]:
        options = ort.SessionOptions()
        options.register_custom_ops_library(str(library))
        session = ort.InferenceSession(graph_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run(None, feeds)

    feeds = {"gate_up": rng.standard_normal((1, 5, 2 * n)).astype(np.float32),
             "residual": rng.standard_normal((1, 5, h)).astype(np.float32)}
    expected = run(model)
    assert fuse_small_nodes(model)[skip_rms_norm.OP_TYPE] == 1
    ops = [node.op_type for node in model.graph.node]
    assert ops == [gated_silu.OP_TYPE, "MatMulNBits", skip_rms_norm.OP_TYPE, "Add",
                   "SkipSimplifiedLayerNormalization"]
    for got, want in zip(run(model), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _int8_matmul_session(library: Path):
    from onnx import TensorProto as T
    from onnx import helper

    names = ("x", "weight", "scales", "sums")
    inputs = [helper.make_tensor_value_info(name, kind, None)
              for name, kind in zip(names, (T.FLOAT, T.INT8, T.FLOAT, T.INT32))]
    node = helper.make_node(int8_matmul.OP_TYPE, list(names), ["y"], domain=DOMAIN)
    return _single_op_session(library, node, inputs, [helper.make_tensor_value_info("y", T.FLOAT, None)])


def _int8_matmul_feeds(x: np.ndarray, q: np.ndarray, scales: np.ndarray) -> dict[str, np.ndarray]:
    return {"x": x, "weight": int8_matmul.pack_weight(q), "scales": scales,
            "sums": q.astype(np.int32).sum(axis=0, dtype=np.int32)}


def _int8_matmul_reference(x: np.ndarray, q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Each row of x as int8, round(x * (127 / amax)) half to even (float32, as the op), times q, in float64."""
    amax = np.abs(x).max(-1, keepdims=True)
    inverse = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    xq = np.rint(x * inverse)
    return (xq.astype(np.float64) @ q.astype(np.float64)) * (amax / np.float32(127)) * scales


@pytest.mark.parametrize("kernel", ["avx512vnni", "avx2"])
def test_int8_matmul_is_the_int8_product_of_each_row_quantized(library: Path, kernel: str, record_property,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Against NumPy, with each kernel (the one that ran checked too): a decode row, prompt rows over several work
    items (16 rows an item, VNNI's row pairs with one left over), a group of tiles cut short (N = 80: four tiles
    and one), a row of zeros; the integer sums are exact in both kernels, so they give the same floats."""
    _ask_for(kernel, monkeypatch)
    before = ops_library.kernel_runs(library)
    session = _int8_matmul_session(library)
    rng = np.random.default_rng(13)
    results = []
    for rows, k, n in ((1, 576, 960), (37, 64, 80), (3, 1536, 16)):
        q = rng.integers(-127, 128, (k, n)).astype(np.int8)
        scales = rng.uniform(1e-3, 1e-2, n).astype(np.float32)
        x = (rng.standard_normal((1, rows, k)) * 4).astype(np.float32)
        x[0, rows // 2] = 0  # a zero row stays zero (no division by its amax)
        feeds = _int8_matmul_feeds(x, q, scales)
        (y,) = session.run(None, feeds)
        expected = _int8_matmul_reference(x, q, scales)
        assert y.shape == (1, rows, n) and not y[0, rows // 2].any()
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
        results.append((feeds, y))
    ran = _kernels_run(library, "Int8MatMul", before)
    record_property("kernel", kernel)
    print(f"Int8MatMul ran {ran}")
    assert ran == {kernel: len(results)}, f"expected {kernel}, ran {ran}"
    if kernel == "avx2" and not MISSING_VNNI:  # and the very floats of the VNNI kernel
        monkeypatch.delenv("GHOSTLS_KERNELS")
        vnni = _int8_matmul_session(library)
        for feeds, y in results:
            np.testing.assert_array_equal(vnni.run(None, feeds)[0], y)


def test_int8_matmul_refuses_shapes_it_cannot_read_and_the_session_goes_on(library: Path) -> None:
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    session = _int8_matmul_session(library)
    q = np.ones((64, 32), np.int8)
    feeds = _int8_matmul_feeds(np.ones((1, 2, 64), np.float32), q, np.ones(32, np.float32))
    with pytest.raises(InvalidArgument, match=r"last dimension must be the weight's K \(64\)"):
        session.run(None, {**feeds, "x": np.ones((1, 2, 60), np.float32)})
    with pytest.raises(InvalidArgument, match=r"packed as \[N / 16, K / 4, 16, 4\]"):
        session.run(None, {**feeds, "weight": q})
    with pytest.raises(InvalidArgument, match=r"scales and sums must be \[N\] \(32\)"):
        session.run(None, {**feeds, "scales": np.ones(31, np.float32)})
    (y,) = session.run(None, feeds)
    np.testing.assert_allclose(y, np.full((1, 2, 32), 64.0), rtol=1e-6)  # 64 products of 127 * 1, times 1 / 127


def test_w8a8_matmuls_fold_into_int8_matmul(library: Path) -> None:
    """requantize.py's two W8A8 forms, as it writes them: DynamicQuantizeMatMul (one scale for the input) and the
    per-token MatMulIntegerToFloat (five nodes quantizing x, the Mul by the rows' scales after it). Both fold into
    an Int8MatMul of x. The per-token one computes the same thing (to a rounding tie); the other scales each row
    symmetrically instead, which stays within a quantization step. A MatMul whose N is no multiple of 16 and a
    per-token one whose rows something else reads are left alone."""
    import onnxruntime as ort
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    from ghostls.inference.converter.requantize import _quantize_per_token, _write_w8a8

    k = 64
    rng = np.random.default_rng(17)
    nodes, inits = [], []
    weights = {name: numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), name)
               for name, n in (("w_tensor", 48), ("w_token", 32), ("w_odd", 40), ("w_read", 32))}
    _write_w8a8([(helper.make_node("MatMul", ["x", "w_tensor"], ["y_tensor"], name="tensor"), weights["w_tensor"])],
                None, None, nodes, inits)
    _write_w8a8([(helper.make_node("MatMul", ["x", "w_odd"], ["y_odd"], name="odd"), weights["w_odd"])],
                None, None, nodes, inits)
    for name, x in (("token", "a"), ("read", "b")):
        rows = _quantize_per_token(x, nodes, inits)
        _write_w8a8([(helper.make_node("MatMul", [x, f"w_{name}"], [f"y_{name}"], name=name), weights[f"w_{name}"])],
                    None, rows, nodes, inits)
    nodes.append(helper.make_node("Identity", [f"{rows[0]}"], ["rows_b"]))  # b's rows read elsewhere too
    inputs = [helper.make_tensor_value_info(name, T.FLOAT, [1, None, k]) for name in ("x", "a", "b")]
    outputs = [helper.make_tensor_value_info(name, T.FLOAT, None) for name in ("y_tensor", "y_token", "y_odd", "y_read")]
    outputs.append(helper.make_tensor_value_info("rows_b", T.UINT8, None))
    model = helper.make_model(helper.make_graph(nodes, "w8a8", inputs, outputs, inits), ir_version=10, opset_imports=[
        helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1),
        helper.make_opsetid(DOMAIN, 1)])
    feeds = {name: rng.standard_normal((1, 7, k)).astype(np.float32) for name in ("x", "a", "b")}

    def run(graph_model) -> list[np.ndarray]:
        options = ort.SessionOptions()
        options.register_custom_ops_library(str(library))
        session = ort.InferenceSession(graph_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run(None, feeds)

    before = run(model)
    assert fuse_small_nodes(model)[int8_matmul.OP_TYPE] == 2
    ops = [node.op_type for node in model.graph.node]
    assert ops.count(int8_matmul.OP_TYPE) == 2 and ops.count("DynamicQuantizeMatMul") == 1
    assert ops.count("MatMulIntegerToFloat") == 1 and ops.count("QuantizeLinear") == 1  # b's
    after = run(model)
    for i, name in enumerate(("tensor", "token", "odd", "read")):
        weight = numpy_helper.to_array(weights[f"w_{name}"]).astype(np.float64)
        exact = feeds[{"tensor": "x", "odd": "x", "token": "a", "read": "b"}[name]].astype(np.float64) @ weight
        step = np.abs(exact).max() / 127  # about one activation step's worth, summed over K
        assert np.abs(after[i] - exact).max() < 3 * step, name
        if name != "tensor":  # the same arithmetic as before the fold, or not folded at all
            np.testing.assert_allclose(after[i], before[i], rtol=0, atol=1e-2 * step)
    np.testing.assert_array_equal(after[4], before[4])
