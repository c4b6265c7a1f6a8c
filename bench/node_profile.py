"""Where one decode step's time goes: onnxruntime's own profiler over a converted model, by operator type.

Runs the model's ONNX graph directly (onnxruntime, not onnxruntime-genai) for one new token (or a prefill chunk of
--tokens) after a zeroed KV cache of --past tokens, --steps times, and prints per operator type its share of the
kernel time and the node count. The profiler adds its own cost to every node, so only the shares are printed; the
untimed steps/s line before them is the speed of the graph run this way. Attention's share is overstated here: fed as plain
inputs, the KV cache is copied into a new present tensor every step, where onnxruntime-genai shares one buffer.

    .venv/bin/python bench/node_profile.py .cache/ghostls/models/smollm2-135m-instruct-q4_1-native-cpu [--past 500]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _feeds(session, past: int, tokens: int, model_dir: Path) -> dict[str, np.ndarray]:
    decoder = json.loads((model_dir / "genai_config.json").read_text())["model"]["decoder"]
    feeds = {}
    for spec in session.get_inputs():
        if spec.name == "input_ids":
            feeds[spec.name] = np.full((1, tokens), 42, np.int64)
        elif spec.name == "attention_mask":
            feeds[spec.name] = np.ones((1, past + tokens), np.int64)
        elif spec.name == "position_ids":
            feeds[spec.name] = np.arange(past, past + tokens, dtype=np.int64)[None, :]
        elif spec.name.startswith("past_key_values."):
            # The last dimension as the graph fixes it (int8 rows carry their scale), else the head size.
            last = spec.shape[3] if isinstance(spec.shape[3], int) else decoder["head_size"]
            dtype = {"tensor(float16)": np.float16, "tensor(int8)": np.int8}.get(spec.type, np.float32)
            feeds[spec.name] = np.zeros((1, decoder["num_key_value_heads"], past, last), dtype)
        else:
            raise SystemExit(f"unexpected model input {spec.name}")
    return feeds


def main() -> int:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--past", type=int, default=500)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=1, help="new tokens a run: 1 for a decode step, more for a "
                        "prefill chunk")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()

    def session(profile_prefix: str | None):
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        library = (json.loads((args.model_dir / "genai_config.json").read_text())["model"]["decoder"]
                   .get("session_options", {}).get("custom_ops_library"))
        if library:  # ghostls's attention ops (inference/converter/ops/library.py), copied into the model folder
            options.register_custom_ops_library(str(args.model_dir / library))
        if profile_prefix:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        return ort.InferenceSession(str(args.model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])

    plain = session(None)
    feeds = _feeds(plain, args.past, args.tokens, args.model_dir)
    for _ in range(5):
        plain.run(None, feeds)
    started = time.perf_counter()
    for _ in range(args.steps):
        plain.run(None, feeds)
    print(f"{args.model_dir.name}: {args.steps / (time.perf_counter() - started):.1f} steps/s "
          f"({args.tokens} token(s) after {args.past}, {args.threads} threads, unprofiled)")

    with tempfile.TemporaryDirectory() as tmp:
        profiled = session(str(Path(tmp) / "profile"))
        for _ in range(args.steps):
            profiled.run(None, feeds)
        events = json.loads(Path(profiled.end_profiling()).read_text())
    spent: collections.Counter[str] = collections.Counter()
    nodes: dict[str, set[str]] = collections.defaultdict(set)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            spent[op] += event["dur"]
            nodes[op].add(event["name"])
    total = sum(spent.values())
    print("| operator | share of kernel time | nodes |")
    print("|---|---|---|")
    for op, micros in spent.most_common():
        print(f"| {op} | {micros / total:.1%} | {len(nodes[op])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
