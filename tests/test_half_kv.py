"""ghostls's attention op over a float16 KV cache (inference/csrc/half_kv_attention.cc): the real library in real
onnxruntime sessions, against a NumPy reference of grouped-query attention with rotary embeddings; the converter
putting it into a model; and the rule that a model folder carries it only as a copy of ghostls's own build."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ghostls.inference import half_kv
from ghostls.inference.cache import ModelError, read_manifest, validate_model_dir

pytestmark = pytest.mark.skipif(half_kv.unavailable_reason() is not None,
                                reason=f"{half_kv.unavailable_reason()}")


@pytest.fixture(scope="module")
def library() -> Path:
    # Built before the tests (Makefile: `python -m ghostls.inference.half_kv`): the tests cannot reach the network
    # for the headers, and a conversion without the library would quietly keep a float32 cache.
    path = half_kv.library_path()
    assert path.is_file(), f"{path} is not built; run `python -m ghostls.inference.half_kv` first"
    return path


def _attention_graph(heads: int, kv_heads: int, head_size: int) -> bytes:
    from onnx import TensorProto as T
    from onnx import helper

    inputs = [
        helper.make_tensor_value_info("qkv", T.FLOAT, [None, None, (heads + 2 * kv_heads) * head_size]),
        helper.make_tensor_value_info("past_key", T.FLOAT16, [None, kv_heads, None, head_size]),
        helper.make_tensor_value_info("past_value", T.FLOAT16, [None, kv_heads, None, head_size]),
        helper.make_tensor_value_info("seqlens_k", T.INT32, [None]),
        helper.make_tensor_value_info("total", T.INT32, [1]),
        helper.make_tensor_value_info("cos", T.FLOAT, [None, head_size // 2]),
        helper.make_tensor_value_info("sin", T.FLOAT, [None, head_size // 2]),
    ]
    outputs = [helper.make_tensor_value_info("out", T.FLOAT, None),
               helper.make_tensor_value_info("present_key", T.FLOAT16, None),
               helper.make_tensor_value_info("present_value", T.FLOAT16, None)]
    node = helper.make_node(half_kv.OP_TYPE, [i.name for i in inputs], [o.name for o in outputs],
                            domain=half_kv.DOMAIN, num_heads=heads, kv_num_heads=kv_heads, scale=0.3)
    graph = helper.make_graph([node], "attention", inputs, outputs)
    return helper.make_model(graph, ir_version=10, opset_imports=[
        helper.make_opsetid("", 21), helper.make_opsetid(half_kv.DOMAIN, 1)]).SerializeToString()


def _session(library: Path, heads: int, kv_heads: int, head_size: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2  # the key-chunked decode path runs on both threads
    options.register_custom_ops_library(str(library))
    return ort.InferenceSession(_attention_graph(heads, kv_heads, head_size), options,
                                providers=["CPUExecutionProvider"])


def _rotary_tables(head_size: int, positions: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    angles = np.outer(np.arange(positions), 1.0 / 10000 ** (np.arange(0, head_size, 2) / head_size))
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    first, second = x[..., :half], x[..., half:]
    return np.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


def _reference(qkv, past_key, past_value, pasts, heads, kv_heads, head_size, cos, sin):
    """Grouped-query attention, float64: new keys rotated and rounded to float16 into the cache, each query
    attending causally over the cache up to its own position."""
    batch, sequence, _ = qkv.shape
    q = qkv[..., :heads * head_size].reshape(batch, sequence, heads, head_size).astype(np.float64)
    k = qkv[..., heads * head_size:(heads + kv_heads) * head_size].reshape(batch, sequence, kv_heads, head_size)
    v = qkv[..., (heads + kv_heads) * head_size:].reshape(batch, sequence, kv_heads, head_size)
    length = max(past_key.shape[2], max(pasts) + sequence)
    keys = np.zeros((batch, kv_heads, length, head_size))
    values = np.zeros_like(keys)
    keys[:, :, :past_key.shape[2]], values[:, :, :past_key.shape[2]] = past_key, past_value
    out = np.zeros((batch, sequence, heads * head_size))
    for b, past in enumerate(pasts):
        positions = past + np.arange(sequence)
        c, s = cos[positions][:, None, :], sin[positions][:, None, :]
        q_rotated = _rotate(q[b], c, s)
        k_rotated = _rotate(k[b].astype(np.float64), c, s)
        for i, p in enumerate(positions):
            keys[b, :, p] = k_rotated[i].astype(np.float16)
            values[b, :, p] = v[b, i].astype(np.float16)
        for h in range(heads):
            g = h // (heads // kv_heads)
            for i, p in enumerate(positions):
                scores = keys[b, g, :p + 1] @ q_rotated[i, h] * 0.3
                weights = np.exp(scores - scores.max())
                out[b, i, h * head_size:(h + 1) * head_size] = weights / weights.sum() @ values[b, g, :p + 1]
    return out, keys, values


# (sequence, past, cache length, batch): one-token decodes short and long (the long ones split the keys into
# chunks across threads), a cache exactly full, one that must grow (not onnxruntime-genai's shared buffer),
# prompt chunks from empty and after a past, batch rows of different lengths.
CASES = [(1, 0, 64, 1), (1, 5, 64, 1), (1, 300, 400, 1), (1, 1000, 1100, 1), (1, 1023, 1024, 1), (1, 9, 9, 1),
         (7, 0, 64, 1), (100, 0, 256, 1), (40, 300, 400, 1), (13, 700, 713, 1), (3, 10, 13, 2), (5, 59, 64, 2)]


@pytest.mark.parametrize("heads,kv_heads,head_size", [(9, 3, 64), (4, 2, 16), (4, 2, 32), (8, 1, 128), (4, 4, 64)])
def test_attention_matches_the_reference(library: Path, heads: int, kv_heads: int, head_size: int) -> None:
    session = _session(library, heads, kv_heads, head_size)
    cos, sin = _rotary_tables(head_size)
    rng = np.random.default_rng(head_size + heads)
    for sequence, past, cache_length, batch in CASES:
        pasts = [past, max(0, past - 2)][:batch]
        qkv = (rng.standard_normal((batch, sequence, (heads + 2 * kv_heads) * head_size)) * 2).astype(np.float32)
        past_key = rng.standard_normal((batch, kv_heads, cache_length, head_size)).astype(np.float16)
        past_value = rng.standard_normal((batch, kv_heads, cache_length, head_size)).astype(np.float16)
        out, keys, values = session.run(None, {
            "qkv": qkv, "past_key": past_key, "past_value": past_value, "cos": cos, "sin": sin,
            "seqlens_k": np.array([p + sequence - 1 for p in pasts], np.int32),
            "total": np.array([max(pasts) + sequence], np.int32)})
        expected, expected_keys, expected_values = _reference(qkv, past_key, past_value, pasts, heads, kv_heads,
                                                              head_size, cos, sin)
        case = f"sequence {sequence}, past {past}, cache {cache_length}, batch {batch}"
        assert keys.shape[2] == max(cache_length, max(pasts) + sequence), case
        np.testing.assert_allclose(out, expected, atol=2e-3, err_msg=case)
        for b, p in enumerate(pasts):
            # The rows before and at the new positions; float32 against float64 rotation may round a key to the
            # neighbouring float16.
            np.testing.assert_allclose(keys[b, :, :p + sequence], expected_keys[b, :, :p + sequence],
                                       rtol=2 ** -10, atol=1e-6, err_msg=case)
            np.testing.assert_array_equal(values[b, :, :p + sequence], expected_values[b, :, :p + sequence],
                                          err_msg=case)


def test_a_bad_request_is_an_error_and_the_session_goes_on(library: Path) -> None:
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    session = _session(library, 4, 2, 16)
    cos, sin = _rotary_tables(16, positions=8)
    feeds = {"qkv": np.zeros((1, 1, 128), np.float32), "cos": cos, "sin": sin,
             "past_key": np.zeros((1, 2, 16, 16), np.float16), "past_value": np.zeros((1, 2, 16, 16), np.float16),
             "seqlens_k": np.array([8], np.int32), "total": np.array([9], np.int32)}
    with pytest.raises(InvalidArgument, match="out of range"):  # position 8 is past the rotary table's 8
        session.run(None, feeds)
    feeds.update(seqlens_k=np.array([3], np.int32), total=np.array([4], np.int32))
    out, _, _ = session.run(None, feeds)
    assert out.shape == (1, 1, 64)


def test_converted_model_uses_the_op_and_matches_a_float32_cache(library: Path, tiny_checkpoints,
                                                                  tiny_model: Callable[[str], Path],
                                                                  tmp_path: Path) -> None:
    """The default conversion swaps every attention node and carries the library. At precision fp32 (int8's
    dynamic activation quantization would magnify any difference), the logits over a prompt and the steps after
    it stay within float16's rounding of the float32-cache conversion's (measured: 8e-5 of the largest)."""
    import onnx
    import onnxruntime_genai as og

    from ghostls.inference.convert import convert
    from ghostls.inference.engine import Engine

    half = tiny_model("starcoder")
    full = convert(tiny_checkpoints["starcoder"], out_root=tmp_path / "float32", kv_cache="float32")
    assert read_manifest(half).kv_cache == "float16" and read_manifest(full).kv_cache == "float32"
    graph = onnx.load(str(half / "model.onnx"), load_external_data=False)
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count(half_kv.OP_TYPE) == 2 and "GroupQueryAttention" not in ops
    assert half_kv.is_own_library(half / half_kv.LIBRARY_NAME)
    assert not (full / half_kv.LIBRARY_NAME).exists()
    assert Engine(half).kv_bytes_per_token * 2 == Engine(full).kv_bytes_per_token

    logits = []
    for model_dir in (convert(tiny_checkpoints["starcoder"], precision="fp32", out_root=tmp_path / "float16"),
                      convert(tiny_checkpoints["starcoder"], precision="fp32", out_root=tmp_path / "float32",
                              kv_cache="float32")):
        model = og.Model(str(model_dir))
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=96, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(list(range(3, 67)))  # 64 tokens: a prompt chunk through the prefill path
        steps = [generator.get_logits()[0, -1].copy()]
        for token in (5, 9, 11, 40):  # the same tokens into both: decode steps through the one-query path
            generator.append_tokens([token])
            steps.append(generator.get_logits()[0, -1].copy())
        logits.append(np.array(steps))
    scale = np.abs(logits[1]).max()
    assert np.abs(logits[0] - logits[1]).max() < 1e-3 * scale


def test_a_model_folder_carries_only_ghostls_own_build(library: Path, tiny_model: Callable[[str], Path],
                                                       tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_model("starcoder"), tmp_path / "model")
    validate_model_dir(folder)  # the copy of the library ghostls built is accepted

    copy = folder / half_kv.LIBRARY_NAME
    tampered = bytearray(copy.read_bytes())
    tampered[-1] ^= 0xFF
    copy.write_bytes(bytes(tampered))
    with pytest.raises(ModelError, match=f"can run code.*{half_kv.LIBRARY_NAME}"):
        validate_model_dir(folder)

    copy.unlink()  # named in genai_config.json, absent: onnxruntime would search the system for that name
    with pytest.raises(ModelError, match=f"does not hold it"):
        validate_model_dir(folder)

    shutil.copy2(library, copy)
    config_path = folder / "genai_config.json"
    config = json.loads(config_path.read_text())
    config["model"]["decoder"]["session_options"]["custom_ops_library"] = str(library)  # even ghostls's own path
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelError, match="custom_ops_library"):
        validate_model_dir(folder)
