"""HalfKvAttention and Int8KvAttention (kv_attention.cc) in a converted graph: ghostls's attention over a float16 or
int8 KV cache in place of onnxruntime's GroupQueryAttention (a float32 cache on the CPU), the cache's inputs and
outputs turned to that type.
"""

from __future__ import annotations

from .graph import DOMAIN

# The op for each cache type. An int8 row holds head_size values, then the row's float32 scale as 4 more int8
# elements (row_elements below).
OP_TYPES = {"float16": "HalfKvAttention", "int8": "Int8KvAttention"}
HEAD_SIZES = (16, 32, 64, 128)  # the kernel's compiled widths


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
