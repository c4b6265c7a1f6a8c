"""ghostls's own onnxruntime ops for the CPU: each op's C++ kernel (name.cc) beside its Python half (name.py), which
puts the op into a converted graph; library.py builds all the kernels into one library, as build.toml describes.

Attention over a float16 or int8 KV cache (kv_attention) replaces onnxruntime's GroupQueryAttention; around it,
`fuse_small_nodes` folds runs of small nodes into the other ops.
"""

from __future__ import annotations

from . import gated_silu, int8_matmul, skip_rms_norm
from .graph import fold


def fuse_small_nodes(model) -> dict[str, int]:
    """Fold runs of small nodes into ghostls's ops, in place; returns how many runs of each op it folded.

    A decode step runs each node of the graph once, on a few thousand floats at most, and each node has a fixed
    cost (a kernel call, an output allocation, often a hand-off to the other thread): four such nodes fewer per
    layer made a decode step 7% quicker in a paired A/B (docs/benchmarks.md). Folded in this order, each op's
    module saying which runs it takes: requantize.py's W8A8 MatMuls into Int8MatMul, then an MLP's activation
    into GatedSilu, then the Add of its Q4_1 offsets into SkipRmsNorm (which reads GatedSilu's output).
    Only runs whose intermediate values nothing else reads are folded: the graph computes the same values.
    """
    return {op.OP_TYPE: fold(model.graph, op.fold_run) for op in (int8_matmul, gated_silu, skip_rms_norm)}
