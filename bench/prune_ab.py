"""The LM-head pruning lever, A/B: the embedded model built at int8 with and without `prune_lm_head`.

Both are built from the same dequantized checkpoint by onnxruntime-genai's builder; each gets the first 1,000
tokens of `inspect.py`, cold, three times: time to first token (prefill plus one step), decode tok/s, and the
first greedy tokens, which must be the same.

    .venv/bin/python bench/prune_ab.py [--work /tmp/ghostls-prune-ab]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def build(work: Path) -> dict[str, Path]:
    from ghostls.inference import convert, embedded

    checkpoint = work / "checkpoint"
    if not (checkpoint / "config.json").is_file():
        convert._gguf_to_checkpoint(embedded.embedded_gguf_path(), checkpoint, lambda *a: None)
    out = {}
    for prune in ("false", "true"):
        target = out[prune] = work / f"int8-prune-{prune}"
        if not (target / "genai_config.json").is_file():
            subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint),
                            "-o", str(target), "-p", "int8", "-e", "cpu", "-c", str(work / f"cache-{prune}"),
                            "--extra_options", "hf_token=false", f"prune_lm_head={prune}"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return out


def measure(model_dir: Path, ids: list[int], runs: int = 3) -> tuple[float, float, list[int]]:
    import onnxruntime_genai as og

    config = og.Config(str(model_dir))
    config.clear_providers()
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": len(os.sched_getaffinity(0))}}}}))
    model = og.Model(config)
    ttft, decode, first = [], [], []
    for _ in range(runs):
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + 64)
        generator = og.Generator(model, params)
        started = time.perf_counter()
        generator.append_tokens(ids)
        generator.generate_next_token()
        ttft.append(time.perf_counter() - started)
        out = [int(generator.get_next_tokens()[0])]
        started = time.perf_counter()
        for _ in range(31):
            generator.generate_next_token()
            out.append(int(generator.get_next_tokens()[0]))
        decode.append(31 / (time.perf_counter() - started))
        first = out[:8]
    return statistics.median(ttft), statistics.median(decode), first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/ghostls-prune-ab")
    args = parser.parse_args()
    from tokenizers import Tokenizer

    models = build(Path(args.work))
    tokenizer = Tokenizer.from_file(str(models["false"] / "tokenizer.json"))
    ids = tokenizer.encode(Path(inspect.__file__).read_text()).ids[:1000]
    for prune, folder in models.items():
        ttft, tps, first = measure(folder, ids)
        print(f"prune_lm_head={prune}: TTFT {ttft:.2f} s, decode {tps:.1f} tok/s, first tokens {first}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
