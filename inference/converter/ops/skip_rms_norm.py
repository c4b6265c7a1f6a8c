"""SkipRmsNorm (skip_rms_norm.cc) in a converted graph: the Add of a Q4_1 down projection's offsets before the
residual sum and RMS norm folded into the norm, in place of onnxruntime's SkipSimplifiedLayerNormalization.
"""

from __future__ import annotations

from . import gated_silu
from .graph import MS_DOMAIN, GraphIndex, make_node

OP_TYPE = "SkipRmsNorm"


def fold_run(norm, index: GraphIndex):
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
        if last.op_type != "Add" or sorted(kinds, key=str) != sorted(["MatMulNBits", gated_silu.OP_TYPE], key=str):
            continue
        offsets = last.input[kinds.index(gated_silu.OP_TYPE)]
        if makers[kinds.index(gated_silu.OP_TYPE)].output[1:2] != [offsets]:
            continue
        fused_inputs = [residual, last.input[kinds.index("MatMulNBits")], inputs[2], offsets]
        fused = make_node(OP_TYPE, fused_inputs, [outputs[0], outputs[3]] if outputs[3] else [outputs[0]],
                          norm.name or outputs[0])
        fused.attribute.extend([a for a in norm.attribute if a.name == "epsilon"])
        return fused, [last]
    return None
