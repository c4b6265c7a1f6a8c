"""Two converted models, timed against each other in one process: prefill and decode speed, and whether their
greedy tokens agree. For graph edits whose gain is a few percent, which a run per model cannot show on this
noisy two-core machine.

Rounds alternate the order ABBA / BAAB: with a fixed order, whichever model ran second decoded 10-12% quicker in
both orders of one pair of runs, an effect a fixed order hands to one of them. Each run is a cold prefill of
--prompt-tokens tokens of a real source file and --steps greedy decode steps, through onnxruntime-genai as the
Engine drives it; the paired ratios compare the runs of one round.

    .venv/bin/python bench/ab_models.py MODEL_A MODEL_B [--rounds 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import time
from pathlib import Path


def load_model(folder: Path, threads: int):
    """An onnxruntime-genai model on the CPU with `threads` intra-op threads (what the Engine sets)."""
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.clear_providers()
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    return og.Model(config)


def _run(model, ids: list[int], steps: int) -> tuple[float, float, list[int]]:
    """Prefill seconds, decode tokens/s, the greedy tokens."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + steps + 1)
    generator = og.Generator(model, params)
    started = time.perf_counter()
    generator.append_tokens(ids)
    prefilled = time.perf_counter()
    tokens = []
    for _ in range(steps):
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return prefilled - started, steps / (time.perf_counter() - prefilled), tokens


def main() -> int:
    from tokenizers import Tokenizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_a", type=Path)
    parser.add_argument("model_b", type=Path)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--prompt-tokens", type=int, default=600)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()

    models = [load_model(args.model_a, args.threads), load_model(args.model_b, args.threads)]
    tokenizer = Tokenizer.from_file(str(args.model_a / "tokenizer.json"))
    ids = tokenizer.encode(Path(inspect.getfile(argparse)).read_text()).ids[:args.prompt_tokens]
    prefill: list[list[float]] = [[], []]
    decode: list[list[float]] = [[], []]
    tokens: list[list[int]] = [[], []]
    for round_ in range(args.rounds):
        for which in ((0, 1, 1, 0) if round_ % 2 == 0 else (1, 0, 0, 1)):
            seconds, per_second, tokens[which] = _run(models[which], ids, args.steps)
            prefill[which].append(seconds)
            decode[which].append(per_second)
    for which, folder in enumerate((args.model_a, args.model_b)):
        print(f"{folder.name}: prefill {statistics.median(prefill[which]):.3f} s, "
              f"decode {statistics.median(decode[which]):.1f} tok/s (medians of {len(decode[which])} runs)")
    print(f"B / A, paired by round: decode {statistics.median(b / a for a, b in zip(*decode)):.3f}, "
          f"prefill time {statistics.median(b / a for a, b in zip(*prefill)):.3f}; "
          f"greedy tokens equal: {tokens[0] == tokens[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
