"""Why precision `native` carries a remainder MatMul: onnxruntime's 4-bit MatMulNBits with float zero points.

A Q4_1 block is `d * q + m`; MatMulNBits computes `scale * (q - zero_point)`. The zero point `-m / d` is exact
only as a float; the integer one nearest it leaves a remainder that `inference/converter/requantize.py` adds with a
small float MatMul (15-25% of a decode step). This times one MatMulNBits (K 576, N 1536: a SmolLM2-135M MLP
weight) on random Q4_1 blocks at one token and at 256, with uint8 zero points (the remainder left out, so inexact)
and with float zero points (exact), at accuracy levels 4 (int8 activations) and 1 (float32).

    .venv/bin/python bench/zero_points.py [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

K, N, BLOCK = 576, 1536, 32


def _pack(values: np.ndarray) -> np.ndarray:
    pairs = values.reshape(values.shape[:-1] + (-1, 2))
    return (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)


def _session(q, d, m, float_zero_points: bool, level: int, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    if float_zero_points:
        zeros = (-m / d).astype(np.float32).reshape(-1)
    else:
        nearest = np.clip(np.rint(-m / d), 0, 15).astype(np.uint8)
        nearest = np.concatenate([nearest, np.zeros((N, nearest.shape[1] % 2), np.uint8)], axis=1)
        zeros = _pack(nearest).reshape(-1)
    initializers = [numpy_helper.from_array(_pack(q), "W"), numpy_helper.from_array(d.reshape(-1), "S"),
                    numpy_helper.from_array(zeros, "Z")]
    node = helper.make_node("MatMulNBits", ["x", "W", "S", "Z"], ["y"], domain="com.microsoft", K=K, N=N, bits=4,
                            block_size=BLOCK, accuracy_level=level)
    graph = helper.make_graph([node], "matmul_nbits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, N])], initializers)
    model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17),
                                                                 helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=1000, help="runs at one token (at 256 tokens: 1/40 of it)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    q = rng.integers(0, 16, (N, K // BLOCK, BLOCK), dtype=np.uint8)
    d = rng.random((N, K // BLOCK), dtype=np.float32) * 0.01 + 0.001
    m = -rng.random((N, K // BLOCK), dtype=np.float32) * 8 * d
    weight = (d[..., None] * q + m[..., None]).reshape(N, K).T
    print(f"MatMulNBits 4-bit, K {K}, N {N}, {args.threads} threads")
    print("| zero points | accuracy level | tokens | time per run | max error / max output |")
    print("|---|---|---|---|---|")
    for float_zero_points in (False, True):
        for level in (4, 1):
            session = _session(q, d, m, float_zero_points, level, args.threads)
            for tokens in (1, 256):
                x = rng.standard_normal((tokens, K), dtype=np.float32)
                exact = x @ weight
                error = np.abs(session.run(None, {"x": x})[0] - exact).max() / np.abs(exact).max()
                repeats = args.repeats if tokens == 1 else max(args.repeats // 40, 1)
                started = time.perf_counter()
                for _ in range(repeats):
                    session.run(None, {"x": x})
                micros = (time.perf_counter() - started) / repeats * 1e6
                kind = "float (exact)" if float_zero_points else "uint8 (remainder left out)"
                print(f"| {kind} | {level} | {tokens} | {micros:,.0f} µs | {error:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
