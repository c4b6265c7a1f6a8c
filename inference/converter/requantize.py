"""Block-quantized weights kept exactly: a float32 ONNX model's MatMul weights rewritten as MatMulNBits.

A GGUF file is already quantized, in blocks of 32 along the input dimension: Q4_1 stores each weight as
`d * q + m` (q in 0..15, d and m float16 per block), Q8_0 as `d * q` (q in -127..127). Dequantizing it to float32
and letting a quantizer choose new blocks throws that away: onnxruntime-genai's symmetric int4 lands between the
GGUF's levels (2.2 of 32 greedy tokens kept on the embedded model) and its int8 rounds them (30.2 of 32).

This module finds the GGUF's blocks again in the float32 weights and writes them back without loss:
- Q4_1 blocks become 4-bit MatMulNBits with scale `d` and the integer zero point `z` nearest `-m / d`, plus what
  that leaves of the offset as a small float MatMul over the block sums of the input:
  `x @ W = MatMulNBits(x; q, d, z) + blocksum(x) @ R`, R[b, n] = m + z * d of block b of output n (1/32 of the
  multiply-adds, in float32); Q4_1 weights that read the same input (an MLP's gate and up) share one
  MatMulNBits, one offsets MatMul and one Add, then a Split;
- Q8_0 blocks become 8-bit MatMulNBits with zero point 128, the format's own layout;
- any other weight (a model that never was a GGUF) becomes 8-bit MatMulNBits by absmax per block, as the
  builder's int8 does.
Each found block is checked value by value (`d * q + m` must give back every float32 weight bit for bit), so a
weight is only called exact when it is.

Precision "w8a8" trades that exactness, where it is cheap, for speed: the MatMuls that read an RMS norm's output
(attention's q/k/v, the MLP's gate/up) or attention's output (o) become int8 weights per output column against
int8 activations: one scale for a norm's output (DynamicQuantizeMatMul: the norm bounds each token's row), one per
token for attention's (MatMulIntegerToFloat). onnxruntime's u8s8 GEMM prefills these about twice as fast as MatMulNBits
on a CPU without VNNI, and one node replaces the 4-bit kernel, its offsets MatMul and Add. int8 activations alone
lose small models (a few input channels are much larger than the rest), so the channels are first evened out,
SmoothQuant-style: x / s into the norm's weight, W * s into the MatMul's, with s from the activation
maxima of one calibration pass (`activation_maxima`, `smooth`). The MLP's down projection, whose input no norm
precedes and whose per-token error was the largest measured, keeps its blocks (docs/benchmarks.md).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ghostls.inference.cache import ModelError

from .ops.graph import MS_DOMAIN

BLOCK = 32
# The RMS norms whose output a W8A8 MatMul may read: op type -> index of the norm's weight (gamma) input.
RMS_NORMS = {"SimplifiedLayerNormalization": 1, "SkipSimplifiedLayerNormalization": 2}
# SmoothQuant's migration strength: s = amax(x)^alpha / amax(W)^(1 - alpha) per input channel. Chosen on the
# embedded model among 0.5-0.85: 0.6 gave the most leading greedy tokens and the smallest worst KL of
# 0.6 / 0.7 / 0.8 (the median KLs were within the measurement's noise).
SMOOTHING_ALPHA = 0.6
W8A8 = "w8a8"  # `rewrite`'s mark for a MatMul that becomes W8A8


@dataclass(frozen=True)
class W8A8Input:
    """A MatMul input whose readers W8A8 takes."""

    norm_weight: str | None  # the norm weight its smoothing folds into; None: not smoothed
    # An RMS norm's output: one int8 scale for all its tokens (DynamicQuantizeMatMul, one node instead of the
    # per-token path's seven). The norm bounds each token's row, so that costs little (bench/logits_kl.py: KL
    # 0.0103 / 0.0049 / 0.0064 against 0.0083 / 0.0042 / 0.0083 per token) and prefill took 8-12% less time in
    # two short A/B runs; attention's output has no such bound and is scaled per token.
    per_tensor: bool


def blocks_of(weight_kn: np.ndarray) -> np.ndarray:
    """A MatMul weight [K, N] as [N, K/32, 32] blocks along K, the layout of MatMulNBits and of GGUF."""
    k, n = weight_kn.shape
    return np.ascontiguousarray(weight_kn.T, dtype=np.float32).reshape(n, k // BLOCK, BLOCK)


def recover_q4_1(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(q uint8, d float32, m float32) with `d * q + m == blocks` exactly, or None if these are not Q4_1 blocks."""
    lo = blocks.min(axis=-1)
    hi = blocks.max(axis=-1)
    # Q4_1 puts the block minimum at q = 0 (m = min) and the maximum at q = 15; d was stored as float16.
    d = ((hi - lo) / 15).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.rint((blocks - lo[..., None]) / d[..., None])
    q = np.where(d[..., None] == 0, 0, q)
    if not np.isfinite(q).all() or q.min() < 0 or q.max() > 15:
        return None
    q = q.astype(np.uint8)
    back = d[..., None] * q.astype(np.float32) + lo[..., None]
    if not np.array_equal(back, blocks):
        return None
    return q, d, lo


def recover_q8_0(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(q int8, d float32) with `d * q == blocks` exactly, or None if these are not Q8_0 blocks."""
    amax = np.abs(blocks).max(axis=-1)
    d = (amax / 127).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.rint(blocks / d[..., None])
    q = np.where(d[..., None] == 0, 0, q)
    if not np.isfinite(q).all() or np.abs(q).max() > 127:
        return None
    q = q.astype(np.int8)
    if not np.array_equal(d[..., None] * q.astype(np.float32), blocks):
        return None
    return q, d


def absmax_int8(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 8-bit blocks for a weight that was never block-quantized (lossy, like the builder's int8)."""
    d = np.abs(blocks).max(axis=-1) / 127
    safe = np.where(d == 0, 1, d)
    q = np.clip(np.rint(blocks / safe[..., None]), -127, 127).astype(np.int8)
    return q, d.astype(np.float32)


def pack_4bit(values: np.ndarray) -> np.ndarray:
    """Two 4-bit values a byte along the last axis, the first in the low nibble (MatMulNBits' order)."""
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros(values.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


def rewrite(model, accuracy_level: int = 4, w8a8: dict[str, np.ndarray | None] | None = None,
            per_tensor: frozenset[str] = frozenset()) -> Counter:
    """Rewrite `model` (an onnx.ModelProto with its weights loaded) in place. Returns how many MatMul weights
    became each kind ("q4_1 exact", "q8_0 exact", "int8 absmax", "w8a8"): the converter writes it into the
    manifest. `w8a8` maps MatMul inputs to their smoothing factors (or None): the MatMuls reading them become
    W8A8 (module docstring), their weights' rows multiplied by the factors, which the caller has already folded
    into whatever produces the input (`smooth`); those in `per_tensor` get one activation scale for all their
    tokens, the others one per token."""
    from onnx import helper, numpy_helper

    kinds: Counter = Counter()
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    consumers = Counter(name for node in graph.node for name in node.input)
    outputs = {output.name for output in graph.output}
    new_nodes, new_inits = [], []
    block_sums: dict[str, str] = {}  # input name -> its block sums, shared by the MatMuls that read it
    replaced: set[str] = set()
    eight_bit: dict[str, tuple[str, str, int, int]] = {}  # weight -> its 8-bit blocks, scales, N, K

    def block_sum(x: str, k: int) -> str:
        if x not in block_sums:
            base = f"{x}/ghostls_blocksum"
            shape = numpy_helper.from_array(np.array([0, 0, k // BLOCK, BLOCK], np.int64), f"{base}/shape")
            axes = numpy_helper.from_array(np.array([-1], np.int64), f"{base}/axes")
            new_inits.extend([shape, axes])
            new_nodes.append(helper.make_node("Reshape", [x, shape.name], [f"{base}/blocks"], name=f"{base}/Reshape"))
            new_nodes.append(helper.make_node("ReduceSum", [f"{base}/blocks", axes.name], [f"{base}/output_0"],
                                              name=f"{base}/ReduceSum", keepdims=0))
            block_sums[x] = f"{base}/output_0"
        return block_sums[x]

    w8a8 = w8a8 or {}
    # Pass 1: which MatMuls have a block-quantizable weight, and which of those are Q4_1 blocks. Only the Q4_1
    # blocks are kept (4-bit values as bytes): holding every weight's float32 blocks would double the peak memory.
    plans: dict[int, tuple] = {}  # node index -> (weight initializer, (q, d, m), None, or W8A8)
    for index, node in enumerate(graph.node):
        weight = _block_quantizable_weight(node, inits)
        if weight is None:
            continue
        if node.input[0] in w8a8 and _w8a8_takes(node, weight, consumers, outputs):
            plans[index] = (weight, W8A8)
            continue
        plans[index] = (weight, recover_q4_1(blocks_of(numpy_helper.to_array(weight))))
    # Q4_1 MatMuls that read the same input (an MLP's gate and up projections) become one MatMulNBits with their
    # outputs side by side, then a Split: one kernel call, one offsets MatMul and one Add instead of one each
    # (fewer small nodes a decode step; docs/benchmarks.md).
    # W8A8 MatMuls that read the same input are grouped the same way, into one quantized MatMul.
    groups: dict[tuple[str, int, bool], list[int]] = {}
    for index, (weight, q4) in plans.items():
        if q4 is not None:
            groups.setdefault((graph.node[index].input[0], weight.dims[0], q4 is W8A8), []).append(index)
    per_token: dict[str, tuple[str, str, str]] = {}  # input -> its int8 rows, their scales, the zero point

    # Pass 2: the rewritten graph, in the original order (a group is written where its first member was).
    for index, node in enumerate(graph.node):
        if index not in plans:
            new_nodes.append(node)
            continue
        weight, q4 = plans[index]
        k, n = weight.dims
        x = node.input[0]
        attrs = dict(K=k, block_size=BLOCK, accuracy_level=accuracy_level)
        if q4 is W8A8:
            members = groups[(x, k, True)]
            if index == members[0]:
                group = [(graph.node[i], plans[i][0]) for i in members]
                if x not in per_tensor and x not in per_token:
                    per_token[x] = _quantize_per_token(x, new_nodes, new_inits)
                _write_w8a8(group, w8a8[x], per_token.get(x), new_nodes, new_inits)
            kinds[W8A8] += 1
        elif q4 is not None:
            members = groups[(x, k, False)]
            if index == members[0]:
                group = [(graph.node[i], *plans[i]) for i in members]
                _write_q4_1(group, block_sum(x, k), attrs, new_nodes, new_inits)
            kinds["q4_1 exact"] += 1
        else:
            name, y = node.name or node.output[0], node.output[0]
            blocks = blocks_of(numpy_helper.to_array(weight))
            q8 = recover_q8_0(blocks)
            kind = "q8_0 exact" if q8 is not None else "int8 absmax"
            q, d = q8 if q8 is not None else absmax_int8(blocks)
            stored = numpy_helper.from_array((q.astype(np.int16) + 128).astype(np.uint8), f"{weight.name}_Q8")
            scales = numpy_helper.from_array(d, f"{weight.name}_scales")
            new_inits.extend([stored, scales])
            # No zero point input: 8-bit MatMulNBits then subtracts 128, which makes the stored bytes signed again.
            new_nodes.append(helper.make_node("MatMulNBits", [x, stored.name, scales.name], [y], name=f"{name}_Q8",
                                              domain=MS_DOMAIN, bits=8, N=n, **attrs))
            kinds[kind] += 1
            eight_bit[weight.name] = (stored.name, scales.name, n, k)
        consumers[weight.name] -= 1
        replaced.add(weight.name)

    new_nodes = _embeddings_from_blocks(new_nodes, new_inits, eight_bit, consumers)

    kept = [init for init in graph.initializer if init.name not in replaced or consumers[init.name] > 0]
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    if not any(op.domain == MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return kinds


def _block_quantizable_weight(node, inits: dict):
    """The float32 [K, N] initializer weight of a MatMul, K a multiple of the block, or None."""
    weight = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
    if weight is None or len(weight.dims) != 2 or weight.dims[0] % BLOCK or weight.data_type != 1:
        return None
    return weight


def _w8a8_takes(node, weight, consumers: Counter, outputs: set[str]) -> bool:
    """Whether W8A8 takes this MatMul (its weight block-quantizable): not the LM head, whose output is the
    logits (and a tied one's weight also feeds the embedding)."""
    return weight is not None and consumers[weight.name] == 1 and node.output[0] not in outputs


def _quantize_per_token(x: str, nodes: list, inits: list) -> tuple[str, str, str]:
    """Nodes that quantize `x` [..., K] to uint8 per row (token): q = round(127 * x / amax(|x|)) + 128.
    Returns the uint8 rows, their amax (the rows' scale times 127) and the zero point 128."""
    from onnx import helper, numpy_helper

    base = f"{x}/ghostls_per_token"
    tiny = numpy_helper.from_array(np.array(1e-12, np.float32), f"{base}/tiny")  # an all-zero row stays zero
    step = numpy_helper.from_array(np.array(1 / 127, np.float32), f"{base}/step")
    zero = numpy_helper.from_array(np.array(128, np.uint8), f"{base}/zero_point")
    axes = numpy_helper.from_array(np.array([-1], np.int64), f"{base}/axes")
    inits.extend([tiny, step, zero, axes])
    nodes.append(helper.make_node("Abs", [x], [f"{base}/abs"], name=f"{base}/Abs"))
    nodes.append(helper.make_node("ReduceMax", [f"{base}/abs", axes.name], [f"{base}/amax0"],
                                  name=f"{base}/ReduceMax", keepdims=1))
    nodes.append(helper.make_node("Max", [f"{base}/amax0", tiny.name], [f"{base}/amax"], name=f"{base}/Max"))
    nodes.append(helper.make_node("Div", [x, f"{base}/amax"], [f"{base}/unit"], name=f"{base}/Div"))
    nodes.append(helper.make_node("QuantizeLinear", [f"{base}/unit", step.name, zero.name], [f"{base}/rows"],
                                  name=f"{base}/QuantizeLinear"))
    return f"{base}/rows", f"{base}/amax", zero.name


def _write_w8a8(group: list, smoothing: np.ndarray | None, rows: tuple[str, str, str] | None, nodes: list,
                inits: list) -> None:
    """One quantized MatMul for the weights in `group` (MatMul node, weight), all reading the same input, as
    int8 per output column of W * smoothing: with `rows` (the input quantized per token) a MatMulIntegerToFloat
    and a Mul by the rows' scales; without, a DynamicQuantizeMatMul (one scale for the whole input)."""
    from onnx import helper, numpy_helper

    weight = np.concatenate([numpy_helper.to_array(w) for _, w in group], axis=1).astype(np.float32)
    if smoothing is not None:
        weight *= smoothing[:, None]
    column_max = np.abs(weight).max(axis=0)
    column_max = np.where(column_max == 0, 1, column_max)
    q = np.clip(np.rint(weight * (127 / column_max)), -127, 127).astype(np.int8)
    first, first_weight = group[0]
    name = first.name or first.output[0]
    base = first_weight.name if len(group) == 1 else f"{first_weight.name}_and_{len(group) - 1}_more"
    if len(group) > 1:
        name = f"{name}_and_{len(group) - 1}_more"
    stored = numpy_helper.from_array(q, f"{base}_W8")
    y = first.output[0] if len(group) == 1 else f"{name}/output_0"
    if rows is None:
        scales = numpy_helper.from_array((column_max / 127).astype(np.float32), f"{base}_W8_scales")
        inits.extend([stored, scales])
        nodes.append(helper.make_node("DynamicQuantizeMatMul", [first.input[0], stored.name, scales.name], [y],
                                      name=f"{name}_W8A8", domain=MS_DOMAIN))
    else:
        _write_per_token_matmul(name, y, stored, column_max, rows, nodes, inits)
    if len(group) > 1:
        widths = [w.dims[1] for _, w in group]
        split = numpy_helper.from_array(np.array(widths, np.int64), f"{base}_split")
        inits.append(split)
        nodes.append(helper.make_node("Split", [y, split.name], [member.output[0] for member, _ in group],
                                      name=f"{name}_split", axis=-1))


def _write_per_token_matmul(name: str, y: str, stored, column_max: np.ndarray, rows: tuple[str, str, str],
                            nodes: list, inits: list) -> None:
    from onnx import helper, numpy_helper

    # y = sum((xq - 128) * q) * (column_max / 127) * (amax_row / 127): MatMulIntegerToFloat applies the stored
    # column factor (its A scale is 1: it takes no per-row one), a Mul the row's; two nodes where MatMulInteger
    # needs four (a Cast and two Muls after it).
    scales = numpy_helper.from_array((column_max / 127**2).astype(np.float32), f"{stored.name}_scales")
    one = numpy_helper.from_array(np.array(1.0, np.float32), f"{stored.name}_one")
    inits.extend([stored, scales, one])
    x_rows, row_max, zero = rows
    nodes.append(helper.make_node("MatMulIntegerToFloat", [x_rows, stored.name, one.name, scales.name, zero],
                                  [f"{y}/ghostls_columns"], name=f"{name}_W8A8", domain=MS_DOMAIN))
    nodes.append(helper.make_node("Mul", [f"{y}/ghostls_columns", row_max], [y], name=f"{name}_row_scales"))


def w8a8_inputs(model) -> dict[str, W8A8Input]:
    """The MatMul inputs whose weights W8A8 takes: an RMS norm's output (smoothed into the norm's gamma where
    that gamma is the norm's alone and the output is read by W8A8's MatMuls alone) or attention's output."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    readers = Counter(name for node in graph.node for name in node.input)
    sources: dict[str, W8A8Input] = {}
    for node in graph.node:
        gamma = RMS_NORMS.get(node.op_type)
        if gamma is not None and len(node.input) > gamma and node.input[gamma] in inits:
            own = node.input[gamma] if readers[node.input[gamma]] == 1 else None
            sources[node.output[0]] = W8A8Input(own, per_tensor=True)
        elif node.op_type == "GroupQueryAttention":
            sources[node.output[0]] = W8A8Input(None, per_tensor=False)
    outputs = {output.name for output in graph.output}
    taken: dict[str, W8A8Input] = {}
    others: set[str] = set()  # inputs also read by something W8A8 does not take: not smoothed
    for node in graph.node:
        for x in node.input:
            if x not in sources:
                continue
            if x == node.input[0] and _w8a8_takes(node, _block_quantizable_weight(node, inits), readers, outputs):
                taken[x] = sources[x]
            else:
                others.add(x)
    # Smoothing divides the input itself: every reader must be a MatMul whose weight takes the factors back.
    return {x: (W8A8Input(None, source.per_tensor) if x in others else source) for x, source in taken.items()}


def activation_maxima(model_file: Path, inputs: list[str], token_batches: list[list[int]],
                      head_size: int) -> dict[str, np.ndarray]:
    """Each input's largest magnitude per channel over the prompts `token_batches`, by running the float
    model (its file, weights beside it) with those inputs as extra outputs, each prompt from an empty cache
    (whose last dimension, `head_size`, the builder leaves symbolic)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    probe = onnx.load(str(model_file), load_external_data=False)  # the weights stay in their file, unread
    for name in inputs:
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    probe_file = model_file.with_name(f"{model_file.stem}.calibration.onnx")  # beside it: same weight path
    onnx.save_model(probe, str(probe_file))
    try:  # (plain onnxruntime uses every core by default; onnxruntime-genai is the one that needs telling)
        session = ort.InferenceSession(str(probe_file), providers=["CPUExecutionProvider"])
        maxima: dict[str, np.ndarray] = {}
        for ids in token_batches:
            outputs = session.run(inputs, _prompt_feeds(session, ids, head_size))
            for name, value in zip(inputs, outputs):
                channel_max = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
                maxima[name] = np.maximum(maxima.get(name, 0), channel_max)
        return maxima
    finally:
        probe_file.unlink(missing_ok=True)


def _prompt_feeds(session, ids: list[int], head_size: int) -> dict[str, np.ndarray]:
    """Inputs of an onnxruntime-genai decoder for one prompt and an empty KV cache."""
    feeds = {}
    for arg in session.get_inputs():
        if arg.name == "input_ids":
            feeds[arg.name] = np.array([ids], np.int64)
        elif arg.name == "attention_mask":
            feeds[arg.name] = np.ones((1, len(ids)), np.int64)
        elif arg.name == "position_ids":
            feeds[arg.name] = np.arange(len(ids), dtype=np.int64)[None]
        elif arg.name.startswith("past_key_values"):  # [batch, kv heads, past length, head size]
            feeds[arg.name] = np.zeros((1, arg.shape[1], 0, head_size), np.float32)
        else:
            raise ModelError(f"cannot convert to w8a8: the calibration pass cannot feed the model's input "
                             f"{arg.name!r}; use precision native")
    return feeds


def smooth(model, sources: dict[str, W8A8Input], maxima: dict[str, np.ndarray],
           alpha: float = SMOOTHING_ALPHA) -> dict[str, np.ndarray | None]:
    """SmoothQuant's factors for each W8A8 input that has a norm weight to fold into: s per channel, the norm
    weight divided by s (in place), so the input arrives divided by s; `rewrite` multiplies the weights by s.
    Inputs without one get None (not smoothed)."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    factors: dict[str, np.ndarray | None] = {}
    for x, source in sources.items():
        gamma = source.norm_weight
        if gamma is None or x not in maxima:
            factors[x] = None
            continue
        weights = [numpy_helper.to_array(inits[node.input[1]]) for node in graph.node
                   if node.op_type == "MatMul" and node.input[0] == x and node.input[1] in inits]
        weight_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        act_max = maxima[x]
        s = np.power(np.maximum(act_max, 1e-5), alpha) / np.power(np.maximum(weight_max, 1e-5), 1 - alpha)
        s = np.where((act_max > 0) & (weight_max > 0), s, 1).astype(np.float32)
        norm = inits[gamma]
        norm.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(norm) / s).astype(np.float32), gamma))
        factors[x] = s
    return factors


def _write_q4_1(group: list, block_sums: str, attrs: dict, nodes: list, inits: list) -> None:
    """One MatMulNBits for the Q4_1 weights in `group` (MatMul node, weight, (q, d, m)), all reading the
    same input, plus the offsets MatMul and Add that make it exact; a Split gives each MatMul its own output."""
    from onnx import helper, numpy_helper

    packed, scales, zeros, offsets = [], [], [], []
    for _, _, (q, d, m) in group:
        # The zero point nearest the block's real zero keeps the 4-bit part centred (d * (q - z) is the
        # weight within d/2), so the int8 activations of accuracy level 4 err on the weights, not on a bias.
        z = np.clip(np.rint(-m / np.where(d == 0, 1, d)), 0, 15).astype(np.uint8)
        packed.append(pack_4bit(q))
        scales.append(d)
        zeros.append(pack_4bit(z))
        offsets.append((m + z.astype(np.float32) * d).T)  # what d * (q - z) leaves of d * q + m: within d / 2
    first, weight = group[0][0], group[0][1]
    name = first.name or first.output[0]
    if len(group) > 1:
        name = f"{name}_and_{len(group) - 1}_more"
    base = weight.name if len(group) == 1 else f"{weight.name}_and_{len(group) - 1}_more"
    y = first.output[0] if len(group) == 1 else f"{name}/output_0"
    widths = [w.dims[1] for _, w, _ in group]
    tensors = [numpy_helper.from_array(np.concatenate(packed), f"{base}_Q4"),
               numpy_helper.from_array(np.concatenate(scales), f"{base}_scales"),
               numpy_helper.from_array(np.concatenate(zeros).reshape(-1), f"{base}_zp"),
               numpy_helper.from_array(np.ascontiguousarray(np.concatenate(offsets, axis=1)), f"{base}_offsets")]
    inits.extend(tensors)
    x = first.input[0]
    nodes.append(helper.make_node("MatMulNBits", [x] + [t.name for t in tensors[:3]], [f"{y}/ghostls_q4"],
                                  name=f"{name}_Q4", domain=MS_DOMAIN, bits=4, N=sum(widths), **attrs))
    nodes.append(helper.make_node("MatMul", [block_sums, tensors[3].name], [f"{y}/ghostls_offsets"],
                                  name=f"{name}_offsets"))
    nodes.append(helper.make_node("Add", [f"{y}/ghostls_q4", f"{y}/ghostls_offsets"], [y],
                                  name=f"{name}_add_offsets"))
    if len(group) > 1:  # (sizes as an input, like ReduceSum's axes above: opset 13 or later, as the builder writes)
        split = numpy_helper.from_array(np.array(widths, np.int64), f"{base}_split")
        inits.append(split)
        nodes.append(helper.make_node("Split", [y, split.name], [member.output[0] for member, *_ in group],
                                      name=f"{name}_split", axis=-1))


def _embeddings_from_blocks(nodes: list, new_inits: list, eight_bit: dict, consumers: Counter) -> list:
    """Tied embeddings: a Gather from Transpose(LM head weight) becomes a GatherBlockQuantized from the LM head's
    8-bit blocks, so the float32 table (113 MiB for SmolLM2; 4x its blocks) is neither stored nor folded at load."""
    from onnx import helper, numpy_helper

    readers = Counter(name for node in nodes for name in node.input)
    folded = {}  # Transpose output -> the weight it transposed
    for node in nodes:
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        if node.op_type == "Transpose" and node.input[0] in eight_bit and perm == [1, 0]:
            gathers = [g for g in nodes if g.op_type == "Gather" and g.input[0] == node.output[0]
                       and all(a.i == 0 for a in g.attribute if a.name == "axis")]
            if gathers and len(gathers) == readers[node.output[0]]:
                folded[node.output[0]] = node.input[0]
    out, tables = [], set()
    for node in nodes:
        if node.op_type == "Transpose" and node.output[0] in folded:
            consumers[node.input[0]] -= 1
            continue
        if node.op_type == "Gather" and node.input[0] in folded:
            stored, scales, n, k = eight_bit[folded[node.input[0]]]
            table = f"{stored}/table"  # the [N, K/32, 32] blocks seen as the [N, K] rows the Gather reads
            if table not in tables:
                tables.add(table)
                shape = numpy_helper.from_array(np.array([n, k], np.int64), f"{stored}/table_shape")
                new_inits.append(shape)
                out.append(helper.make_node("Reshape", [stored, shape.name], [table], name=f"{node.name}_table"))
            out.append(helper.make_node("GatherBlockQuantized", [table, node.input[1], scales], list(node.output),
                                        name=f"{node.name}_Q8", domain=MS_DOMAIN, gather_axis=0, quantize_axis=1,
                                        block_size=BLOCK, bits=8))
            continue
        out.append(node)
    return out


def rewrite_file(src: Path, dest: Path, data_name: str, accuracy_level: int = 4,
                 calibration: list[list[int]] | None = None, head_size: int = 0) -> Counter:
    """Rewrite the float32 model file `src` into `dest` (weights in `data_name` beside it); see `rewrite`.
    With `calibration` (prompts as token ids; `head_size`, the model's) the projections W8A8 takes become
    W8A8, smoothed."""
    import onnx

    model = onnx.load(str(src))
    factors, per_tensor = None, frozenset()
    if calibration is not None:
        sources = w8a8_inputs(model)
        factors = smooth(model, sources, activation_maxima(src, sorted(sources), calibration, head_size))
        per_tensor = frozenset(x for x, source in sources.items() if source.per_tensor)
    kinds = rewrite(model, accuracy_level, w8a8=factors, per_tensor=per_tensor)
    onnx.save_model(model, str(dest), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    return kinds
