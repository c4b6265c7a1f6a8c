"""Precision "native": a GGUF's own Q4_1 / Q8_0 blocks found again in float32 weights and written as
MatMulNBits without loss, run through a real ONNX Runtime session."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ghostls.inference.converter import requantize as rq

K, N, T = 96, 40, 5


def _q4_1_weight(rng) -> np.ndarray:
    """A [K, N] float32 weight made the way llama.cpp dequantizes Q4_1 blocks: d * q + m, d and m float16."""
    blocks = K // rq.BLOCK
    d = rng.uniform(0.001, 0.05, (N, blocks)).astype(np.float16).astype(np.float32)
    m = rng.uniform(-0.4, 0.0, (N, blocks)).astype(np.float16).astype(np.float32)
    q = rng.integers(0, 16, (N, blocks, rq.BLOCK)).astype(np.float32)
    q[..., 0], q[..., 1] = 0, 15  # llama.cpp's quantizer puts the block's min at 0 and its max at 15
    return (d[..., None] * q + m[..., None]).reshape(N, K).T.copy()


def _q8_0_weight(rng) -> np.ndarray:
    blocks = K // rq.BLOCK
    d = rng.uniform(0.001, 0.02, (N, blocks)).astype(np.float16).astype(np.float32)
    q = rng.integers(-127, 128, (N, blocks, rq.BLOCK)).astype(np.float32)
    q[..., 0] = 127  # the block's absmax is stored as 127
    return (d[..., None] * q).reshape(N, K).T.copy()


def test_q4_1_blocks_are_recovered_exactly_and_nothing_else_is_taken_for_them():
    rng = np.random.default_rng(0)
    w = _q4_1_weight(rng)
    q, d, m = rq.recover_q4_1(rq.blocks_of(w))
    assert q.max() == 15 and q.min() == 0
    assert np.array_equal((d[..., None] * q + m[..., None]).reshape(N, K).T, w)
    assert rq.recover_q8_0(rq.blocks_of(w)) is None
    assert rq.recover_q4_1(rq.blocks_of(_q8_0_weight(rng))) is None
    assert rq.recover_q4_1(rq.blocks_of(rng.normal(size=(K, N)).astype(np.float32))) is None
    # One weight off by one float32 step is no longer exact.
    w[3, 7] = np.nextafter(w[3, 7], np.float32(1))
    assert rq.recover_q4_1(rq.blocks_of(w)) is None


def test_q8_0_blocks_are_recovered_exactly():
    rng = np.random.default_rng(1)
    w = _q8_0_weight(rng)
    q, d = rq.recover_q8_0(rq.blocks_of(w))
    assert np.array_equal((d[..., None] * q).reshape(N, K).T, w)
    assert rq.recover_q8_0(rq.blocks_of(rng.normal(size=(K, N)).astype(np.float32))) is None


def test_pack_4bit_puts_the_first_value_in_the_low_nibble():
    assert rq.pack_4bit(np.array([[1, 2, 15, 0]], np.uint8)).tolist() == [[0x21, 0x0F]]
    assert rq.pack_4bit(np.array([[3, 4, 5]], np.uint8)).tolist() == [[0x43, 0x05]]


def _three_matmuls(weights: list[np.ndarray]):
    """x [1, T, K] through three MatMuls with initializer weights, plus Gathers that share the first two."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, K])
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [1, None])
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(3)]
    outputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("rows", "rows4")]
    inits = [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)]
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=f"mm{i}") for i in range(3)]
    # Tied embeddings: the LM head's weight is also the embedding table (through a Transpose). The 8-bit one
    # becomes a GatherBlockQuantized on the same blocks; the 4-bit one keeps its float table.
    nodes += [helper.make_node("Transpose", ["w1"], ["w1t"], perm=[1, 0]),
              helper.make_node("Gather", ["w1t", "ids"], ["rows"]),
              helper.make_node("Transpose", ["w0"], ["w0t"], perm=[1, 0]),
              helper.make_node("Gather", ["w0t", "ids"], ["rows4"])]
    graph = helper.make_graph(nodes, "g", [x, ids], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _run(model, x, ids):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x, "ids": ids})


@pytest.mark.parametrize("accuracy_level", [0, 4])
def test_rewritten_model_computes_what_the_float_model_does(accuracy_level):
    rng = np.random.default_rng(2)
    weights = [_q4_1_weight(rng), _q8_0_weight(rng), rng.normal(0, 0.05, (K, N)).astype(np.float32)]
    model = _three_matmuls(weights)
    x = rng.normal(size=(1, T, K)).astype(np.float32)
    ids = np.array([[0, 5, 39]], np.int64)  # rows of the [N, K] table
    want = _run(model, x, ids)

    kinds = rq.rewrite(model, accuracy_level=accuracy_level)
    assert dict(kinds) == {"q4_1 exact": 1, "q8_0 exact": 1, "int8 absmax": 1}
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("MatMulNBits") == 3 and "MatMul" in ops  # the Q4_1 offsets' small MatMul
    assert ops.count("GatherBlockQuantized") == 1 and ops.count("Transpose") == 1
    names = {init.name for init in model.graph.initializer}
    assert "w0" in names and "w1" not in names and "w2" not in names  # w0 still feeds its Gather
    got = _run(model, x, ids)

    np.testing.assert_array_equal(got[3], want[3])  # the embedding rows, from the 8-bit blocks, exactly
    np.testing.assert_array_equal(got[4], want[4])
    scale = np.abs(want[0]).max()
    if accuracy_level == 0:  # float32 arithmetic on exact weights: rounding only
        np.testing.assert_allclose(got[0], want[0], atol=1e-5 * scale)
        np.testing.assert_allclose(got[1], want[1], atol=1e-5 * np.abs(want[1]).max())
    else:  # activations quantized to int8 per block: close, not equal
        np.testing.assert_allclose(got[0], want[0], atol=2e-2 * scale)
        np.testing.assert_allclose(got[1], want[1], atol=2e-2 * np.abs(want[1]).max())
    # The weight that never was block-quantized loses a little (absmax int8), and no more.
    error = np.abs(got[2] - want[2]).max()
    assert 0 < error < 2e-2 * np.abs(want[2]).max()


def test_q4_1_weights_that_read_the_same_input_share_one_matmulnbits():
    """An MLP's gate and up projections: one 4-bit MatMulNBits, one offsets MatMul, one Add, then a Split that
    gives each its own output, still exact; a Q4_1 weight reading another input keeps its own."""
    rng = np.random.default_rng(3)
    weights = [_q4_1_weight(rng), _q4_1_weight(rng)[:, :24].copy(), _q4_1_weight(rng)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, K])
    other = helper.make_tensor_value_info("other", TensorProto.FLOAT, [1, None, K])
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(3)]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["y0"], name="gate"),
             helper.make_node("MatMul", ["x", "w1"], ["y1"], name="up"),
             helper.make_node("MatMul", ["other", "w2"], ["y2"], name="elsewhere")]
    inits = [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)]
    model = helper.make_model(helper.make_graph(nodes, "g", [x, other], outputs, inits),
                              opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    feeds = {"x": rng.normal(size=(1, T, K)).astype(np.float32),
             "other": rng.normal(size=(1, T, K)).astype(np.float32)}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)

    assert dict(rq.rewrite(model, accuracy_level=0)) == {"q4_1 exact": 3}
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("MatMulNBits") == 2 and ops.count("MatMul") == 2 and ops.count("Add") == 2
    assert ops.count("Split") == 1
    fused = next(n for n in model.graph.node if n.op_type == "MatMulNBits" and n.input[0] == "x")
    assert {a.name: a.i for a in fused.attribute}["N"] == N + 24
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for have, expected in zip(got, want):
        assert have.shape == expected.shape
        np.testing.assert_allclose(have, expected, atol=1e-5 * np.abs(expected).max())


def _norm_then_matmuls(weights: list[np.ndarray], gamma: np.ndarray, lm_head_reads: str = "final"):
    """x -> an RMS norm (weight gamma) read by two projections (outputs y0, y1, through an Identity each, as in
    a decoder); x -> a final norm read by an LM head whose output is the graph's `logits` (or the LM head reads
    the first norm, `lm_head_reads="normed"`); `other`, an input no norm produced, read by a fourth MatMul."""
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, None, K]) for name in ("x", "other")]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("y0", "y1", "logits", "y3")]
    inits = [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)]
    inits += [numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(np.ones(K, np.float32), "gamma2")]
    nodes = [helper.make_node("SimplifiedLayerNormalization", ["x", "gamma"], ["normed"], axis=-1, epsilon=1e-5),
             helper.make_node("SimplifiedLayerNormalization", ["x", "gamma2"], ["final"], axis=-1, epsilon=1e-5),
             helper.make_node("MatMul", ["normed", "w0"], ["p0"], name="q"),
             helper.make_node("MatMul", ["normed", "w1"], ["p1"], name="k"),
             helper.make_node("Identity", ["p0"], ["y0"]),
             helper.make_node("Identity", ["p1"], ["y1"]),
             helper.make_node("MatMul", [lm_head_reads, "w2"], ["logits"], name="lm_head"),
             helper.make_node("MatMul", ["other", "w3"], ["y3"], name="elsewhere")]
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                             opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _w8a8_error(smoothed: bool, per_tensor: bool = True) -> tuple[float, list, dict]:
    """The W8A8 rewrite of `_norm_then_matmuls`, with or without smoothing, the norm's output quantized per
    tensor or per token: its largest error on the two projections (relative to their largest output), its node
    types and the kinds it reports."""
    rng = np.random.default_rng(4)
    weights = [_q4_1_weight(rng), rng.normal(0, 0.05, (K, N)).astype(np.float32), _q4_1_weight(rng),
               _q4_1_weight(rng)]
    gamma = np.ones(K, np.float32)
    gamma[[3, 50]] = 100.0  # two outlier channels, as small LLMs have: they set every token's int8 scale
    model = _norm_then_matmuls(weights, gamma)
    feeds = {"x": rng.normal(size=(1, T, K)).astype(np.float32), "other": rng.normal(size=(1, T, K)).astype(np.float32)}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)

    sources = rq.w8a8_inputs(model)
    assert sources == {"normed": rq.W8A8Input("gamma", per_tensor=True)}  # not `other`: no norm produced it
    normed = _run_with_output(model, "normed", feeds)
    maxima = {"normed": np.abs(normed).reshape(-1, K).max(axis=0)}
    factors = rq.smooth(model, sources, maxima) if smoothed else {"normed": None}
    kinds = rq.rewrite(model, accuracy_level=4, w8a8=factors, per_tensor=frozenset({"normed"} if per_tensor else ()))
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    # What W8A8 does not take stays as it was: the LM head and the other input's MatMul (Q4_1, exact at
    # accuracy level 4 but for the int8 activations)
    for index in (2, 3):
        np.testing.assert_allclose(got[index], want[index], atol=2e-2 * np.abs(want[index]).max())
    error = max(np.abs(got[i] - want[i]).max() / np.abs(want[i]).max() for i in (0, 1))
    return error, [node.op_type for node in model.graph.node], dict(kinds)


def _run_with_output(model, name: str, feeds: dict) -> np.ndarray:
    probe = helper.make_model(model.graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run([name], feeds)[0]


@pytest.mark.parametrize("per_tensor", [True, False])
def test_w8a8_projections_after_a_norm_share_one_quantized_matmul_and_stay_close_to_float(per_tensor):
    error, ops, kinds = _w8a8_error(smoothed=True, per_tensor=per_tensor)
    assert kinds == {"w8a8": 2, "q4_1 exact": 2}
    if per_tensor:  # one node quantizes the input and multiplies
        assert ops.count("DynamicQuantizeMatMul") == 1 and "MatMulIntegerToFloat" not in ops
    else:  # the input quantized per token by its own nodes, then one integer MatMul for both weights
        assert ops.count("MatMulIntegerToFloat") == 1 and ops.count("QuantizeLinear") == 1
    assert ops.count("Split") == 1
    assert ops.count("MatMulNBits") == 2  # the LM head and the other input's MatMul
    assert error < 0.02, error


@pytest.mark.parametrize("per_tensor", [True, False])
def test_smoothing_folded_into_the_norm_is_what_keeps_w8a8_close_with_outlier_channels(per_tensor):
    smoothed, _, _ = _w8a8_error(smoothed=True, per_tensor=per_tensor)
    plain, _, _ = _w8a8_error(smoothed=False, per_tensor=per_tensor)
    # Without smoothing the two outlier channels set every token's scale and the others lose their bits.
    assert smoothed * 2 < plain, (smoothed, plain)


def test_smoothing_divides_the_norm_weight_and_nothing_where_there_is_no_norm_weight():
    rng = np.random.default_rng(5)
    model = _norm_then_matmuls([_q4_1_weight(rng) for _ in range(4)], np.full(K, 2.0, np.float32))
    maxima = {"normed": np.linspace(0.5, 8.0, K).astype(np.float32)}
    factors = rq.smooth(model, {"normed": rq.W8A8Input("gamma", True), "attention": rq.W8A8Input(None, False)},
                        maxima)
    assert factors["attention"] is None
    gamma = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "gamma"))
    np.testing.assert_allclose(gamma * factors["normed"], 2.0, rtol=1e-6)
    assert factors["normed"][-1] > factors["normed"][0]  # larger activations, larger factor


def test_a_norm_output_also_read_by_a_matmul_w8a8_does_not_take_is_not_smoothed():
    # The LM head reads the projections' norm here: dividing that norm's output would change the logits.
    rng = np.random.default_rng(6)
    model = _norm_then_matmuls([_q4_1_weight(rng) for _ in range(4)], np.ones(K, np.float32), lm_head_reads="normed")
    assert rq.w8a8_inputs(model) == {"normed": rq.W8A8Input(None, per_tensor=True)}
