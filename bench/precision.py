"""Chooses the embedded model's default precision: greedy agreement with fp32, prefill and decode speed.

Converts the embedded GGUF at each precision (cached after the first run; fp32 is the reference), feeds the
same real source prompts to each through ghostls's own Engine, and prints a Markdown table.

    .venv/bin/python bench/precision.py [--prompts 6] [--tokens 32] [--context 900] [--precisions int8,native]
"""

from __future__ import annotations

import argparse
import inspect
import platform
import statistics
import sys

from ghostls.inference import convert, embedded
from ghostls.inference.engine import Engine, GenerationRequest


def _prompts(count: int) -> list[str]:
    """Real source files from installed packages, cut at a line in their middle."""
    import json
    import pathlib
    import textwrap

    modules = [json.decoder, pathlib, textwrap, argparse, inspect, statistics]
    texts = []
    for module in modules[:count]:
        source = open(module.__file__, encoding="utf-8").read()
        cut = source.find("\n", len(source) // 2)
        texts.append(source[:cut + 1])
    return texts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--context", type=int, default=900, help="prompt tokens (the tail of each file)")
    parser.add_argument("--precisions", default="w8a8,native,int8,int4",
                        help="comma-separated precisions to measure against fp32")
    args = parser.parse_args()

    gguf = embedded.embedded_gguf_path()
    others = [p for p in args.precisions.split(",") if p and p != "fp32"]
    dirs = {p: convert.convert(gguf, precision=p) for p in ("fp32", *others)}
    prompts = _prompts(args.prompts)
    outputs: dict[str, list[tuple[int, ...]]] = {}
    rows = []
    for precision, folder in dirs.items():
        engine = Engine(folder, provider="cpu")
        prefill, decode, outs = [], [], []
        for text in prompts:
            ids = tuple(engine.encode(text)[-args.context:])
            engine.reset()  # cold prefill each time
            result = engine.generate(GenerationRequest(ids, max_new_tokens=args.tokens, time_budget_s=600))
            prefill.append(result.prefill_s)
            decode.append(len(result.token_ids) / result.decode_s if result.decode_s else 0.0)
            outs.append(result.token_ids)
        outputs[precision] = outs
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 2**20
        rows.append((precision, statistics.median(prefill), statistics.median(decode), size, engine.load_s))

    def agreement(outs: list[tuple[int, ...]]) -> float:
        """Mean count of leading tokens equal to the fp32 reference's greedy tokens."""
        same = []
        for mine, ref in zip(outs, outputs["fp32"]):
            n = 0
            while n < min(len(mine), len(ref)) and mine[n] == ref[n]:
                n += 1
            same.append(n)
        return statistics.mean(same)

    print(f"machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, "
          f"python {platform.python_version()}")
    print(f"{len(prompts)} prompts of {args.context} tokens, {args.tokens} new tokens, greedy\n")
    print("| precision | leading tokens equal to fp32 (of %d) | prefill s (median) | decode tok/s (median) "
          "| size MiB | load s |" % args.tokens)
    print("| --- | --- | --- | --- | --- | --- |")
    for precision, prefill_s, tok_s, size, load_s in rows:
        print(f"| {precision} | {agreement(outputs[precision]):.1f} | {prefill_s:.2f} | {tok_s:.1f} | "
              f"{size:.0f} | {load_s:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
