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
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

BLOCK = 32
MS_DOMAIN = "com.microsoft"


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


def rewrite(model, accuracy_level: int = 4) -> Counter:
    """Rewrite `model` (an onnx.ModelProto with its weights loaded) in place. Returns how many MatMul weights
    became each kind ("q4_1 exact", "q8_0 exact", "int8 absmax"): the converter writes it into the manifest."""
    from onnx import helper, numpy_helper

    kinds: Counter = Counter()
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    consumers = Counter(name for node in graph.node for name in node.input)
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

    # Pass 1: which MatMuls have a block-quantizable weight, and which of those are Q4_1 blocks. Only the Q4_1
    # blocks are kept (4-bit values as bytes): holding every weight's float32 blocks would double the peak memory.
    plans: dict[int, tuple] = {}  # node index -> (weight initializer, (q, d, m) or None)
    for index, node in enumerate(graph.node):
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is None or len(weight.dims) != 2 or weight.dims[0] % BLOCK or weight.data_type != 1:
            continue
        plans[index] = (weight, recover_q4_1(blocks_of(numpy_helper.to_array(weight))))
    # Q4_1 MatMuls that read the same input (an MLP's gate and up projections) become one MatMulNBits with their
    # outputs side by side, then a Split: one kernel call, one offsets MatMul and one Add instead of one each
    # (fewer small nodes a decode step; docs/benchmarks.md, session 6).
    groups: dict[tuple[str, int], list[int]] = {}
    for index, (weight, q4) in plans.items():
        if q4 is not None:
            groups.setdefault((graph.node[index].input[0], weight.dims[0]), []).append(index)

    # Pass 2: the rewritten graph, in the original order (a group is written where its first member was).
    for index, node in enumerate(graph.node):
        if index not in plans:
            new_nodes.append(node)
            continue
        weight, q4 = plans[index]
        k, n = weight.dims
        x = node.input[0]
        attrs = dict(K=k, block_size=BLOCK, accuracy_level=accuracy_level)
        if q4 is not None:
            members = groups[(x, k)]
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


def rewrite_file(src: Path, dest: Path, data_name: str, accuracy_level: int = 4) -> Counter:
    """Rewrite the float32 model file `src` into `dest` (weights in `data_name` beside it); see `rewrite`."""
    import onnx

    model = onnx.load(str(src))
    kinds = rewrite(model, accuracy_level)
    onnx.save_model(model, str(dest), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    return kinds
