"""GatedSilu (gated_silu.cc) in a converted graph: an MLP's Split of gate|up, Sigmoid, Mul, Mul and, when the down
projection is Q4_1, its offsets' Reshape, ReduceSum and MatMul (requantize.py) folded into one node.
"""

from __future__ import annotations

from .graph import GraphIndex, make_node

OP_TYPE = "GatedSilu"


def fold_run(split, index: GraphIndex):
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
    return make_node(OP_TYPE, inputs, outputs, f"{split.name or split.output[0]}/{OP_TYPE}"), taken
