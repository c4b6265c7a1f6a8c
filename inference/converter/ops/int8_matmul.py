"""Int8MatMul (int8_matmul.cc) in a converted graph: requantize.py's W8A8 MatMuls folded into it, their int8
weights packed for its kernels.

A DynamicQuantizeMatMul is taken as it is; a MatMulIntegerToFloat with the per-token quantization before it (Abs,
ReduceMax, Max, Div, QuantizeLinear) and the Mul by the rows' scales after it. The same int8 products, with the
activations scaled per row and symmetrically (DynamicQuantizeMatMul scales the whole input, asymmetrically: the
same for a decode step's one row, bar the zero point). Its kernels read the weights about twice as fast as
onnxruntime's u8s8 GEMM (docs/benchmarks.md). The model's weights must be loaded, not left on disk.
"""

from __future__ import annotations

import numpy as np

from .graph import MS_DOMAIN, GraphIndex, make_node

OP_TYPE = "Int8MatMul"
TILE = 16  # output columns in one tile of the packed weight


def pack_weight(q: np.ndarray) -> np.ndarray:
    """An int8 [K, N] weight in Int8MatMul's layout [N / 16, K / 4, 16, 4]: tile t, quad j, column c, row i holds
    q[4 * j + i, 16 * t + c]."""
    k, n = q.shape
    return np.ascontiguousarray(q.reshape(k // 4, 4, n // TILE, TILE).transpose(2, 0, 3, 1))


def fold_run(node, index: GraphIndex):
    """A W8A8 MatMul of requantize.py whose int8 weight Int8MatMul can take (K a multiple of 4, N of 16): a
    DynamicQuantizeMatMul(x, W, scales), or a MatMulIntegerToFloat reading x's per-token rows (Abs, ReduceMax,
    Max, Div, QuantizeLinear) whose output only a Mul by their amax reads. One Int8MatMul of x."""
    from onnx import numpy_helper

    if node.domain != MS_DOMAIN or node.op_type not in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat"):
        return None
    weight = index.constant(node.input[1]) if len(node.input) > 1 else None
    if weight is None or weight.dtype != np.int8 or weight.ndim != 2 or weight.shape[0] % 4 \
            or weight.shape[1] % TILE:
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
    packed = numpy_helper.from_array(pack_weight(weight), f"{base}/{OP_TYPE}")
    sums = numpy_helper.from_array(weight.astype(np.int32).sum(axis=0, dtype=np.int32), f"{base}/{OP_TYPE}_sums")
    stored_scales = numpy_helper.from_array(scales.astype(np.float32), f"{base}/{OP_TYPE}_scales")
    index.new_initializers += [packed, sums, stored_scales]
    fused = make_node(OP_TYPE, [x, packed.name, stored_scales.name, sums.name], [output], node.name or output)
    return fused, taken


def _per_token_rows(matmul, index: GraphIndex):
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


def _is_per_token_quantization(reduce_max, floor, quantize, index: GraphIndex) -> bool:
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
