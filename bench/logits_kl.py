"""How close converted models stay to a reference: KL divergence of the last-position logits and leading greedy
tokens in agreement, on real source files from the standard library. The measurement behind precision w8a8.

The first folder is the reference (the fp32 conversion); each other folder is compared with it on the same
prompts: every prompt set's files, each cut at a line two thirds in, kept to its last N tokens for each N of
--contexts, prefilled from an empty cache, then --tokens greedy tokens.

The last position of a prefill runs the prompt path only. With --decode-steps N each model is also fed the
reference's first N greedy tokens one at a time after the prompt (teacher-forced: the same tokens for all), and
the KL is taken at every one of those steps: the one-token decode path, where a change to it alone (the int8
cache's integer scores, for one) is the only place it shows.

    .venv/bin/python bench/logits_kl.py REFERENCE MODEL [MODEL...] [--prompt-set a|b] [--contexts 300,900]
                                        [--decode-steps 16]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
from pathlib import Path

import numpy as np

# bench/ab_models.py: the scripts here run by path, so their folder is first on sys.path.
from ab_models import load_model

# Two sets of six modules, so that a choice made on one can be checked on the other.
PROMPT_SETS = {
    "a": ("json.decoder", "pathlib", "textwrap", "argparse", "inspect", "statistics"),
    "b": ("email.message", "http.client", "logging", "csv", "shutil", "tarfile"),
}


def _texts(prompt_set: str) -> list[str]:
    texts = []
    for name in PROMPT_SETS[prompt_set]:
        source = Path(importlib.import_module(name).__file__).read_text(encoding="utf-8")
        cut = source.find("\n", len(source) * 2 // 3)
        texts.append(source[:cut + 1])
    return texts


def _log_probs(generator) -> np.ndarray:
    """The last position's log-probabilities."""
    logits = np.asarray(generator.get_output("logits"), dtype=np.float64)
    logits = logits.reshape(-1, logits.shape[-1])[-1]  # [batch, positions, vocab]: the last position
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def _generator(model, ids: list[int], tokens: int):
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + tokens + 1)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    return generator


def _run(model, prompts: list[list[int]], tokens: int) -> list[tuple[np.ndarray, list[int]]]:
    """Per prompt: the last position's log-probabilities after the prefill, and the greedy tokens."""
    out = []
    for ids in prompts:
        generator = _generator(model, ids, tokens)
        log_probs = _log_probs(generator)
        greedy = []
        for _ in range(tokens):
            generator.generate_next_token()
            greedy.append(int(generator.get_next_tokens()[0]))
        out.append((log_probs, greedy))
    return out


def _forced(model, prompts: list[list[int]], forced: list[list[int]]) -> list[list[np.ndarray]]:
    """Per prompt: the log-probabilities after each of its forced tokens, fed one at a time after the prompt."""
    out = []
    for ids, tokens in zip(prompts, forced):
        generator = _generator(model, ids, len(tokens))
        steps = []
        for token in tokens:
            generator.append_tokens([token])
            steps.append(_log_probs(generator))
        out.append(steps)
    return out


def main() -> int:
    from tokenizers import Tokenizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference", type=Path)
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--prompt-set", choices=sorted(PROMPT_SETS), default="a")
    parser.add_argument("--contexts", default="300,900", help="prompt lengths in tokens")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decode-steps", type=int, default=0,
                        help="also the KL at each of the reference's first N greedy tokens, fed one at a time")
    args = parser.parse_args()
    if args.decode_steps > args.tokens:
        parser.error("--decode-steps cannot exceed --tokens (the reference's greedy tokens it feeds)")

    tokenizer = Tokenizer.from_file(str(args.reference / "tokenizer.json"))
    contexts = [int(c) for c in args.contexts.split(",")]
    encoded = [tokenizer.encode(text, add_special_tokens=False).ids for text in _texts(args.prompt_set)]
    prompts = [ids[-context:] for context in contexts for ids in encoded]
    results, decoded = {}, {}
    for folder in (args.reference, *args.models):
        model = load_model(folder, args.threads)
        results[folder] = _run(model, prompts, args.tokens)
        if args.decode_steps:
            forced = [tokens[:args.decode_steps] for _, tokens in results[args.reference]]
            decoded[folder] = _forced(model, prompts, forced)
        del model

    print(f"prompt set {args.prompt_set}: {len(encoded)} files x contexts {contexts}, {args.tokens} greedy tokens")
    print("| model | KL median (nats) | KL max | leading tokens equal (of %d) by context | same top token |"
          % args.tokens)
    print("| --- | --- | --- | --- | --- |")
    reference = results[args.reference]
    for folder in args.models:
        kls, leading, same_top = [], [], 0
        for (ref_lp, ref_tokens), (lp, tokens) in zip(reference, results[folder]):
            kls.append(float((np.exp(ref_lp) * (ref_lp - lp)).sum()))
            n = 0
            while n < min(len(tokens), len(ref_tokens)) and tokens[n] == ref_tokens[n]:
                n += 1
            leading.append(n)
            same_top += int(ref_lp.argmax() == lp.argmax())
        per_context = " / ".join(f"{statistics.mean(leading[i * len(encoded):(i + 1) * len(encoded)]):.1f}"
                                 for i in range(len(contexts)))
        print(f"| {folder.name} | {statistics.median(kls):.4f} | {max(kls):.4f} | {per_context} | "
              f"{same_top}/{len(kls)} |")
    if args.decode_steps:
        print(f"\nteacher-forced decode: {args.decode_steps} steps after each prompt")
        print("| model | decode KL median (nats) | mean | p90 | same top token |")
        print("| --- | --- | --- | --- | --- |")
        for folder in args.models:
            pairs = [(ref, lp) for ref_steps, steps in zip(decoded[args.reference], decoded[folder])
                     for ref, lp in zip(ref_steps, steps)]
            kls = [float((np.exp(ref) * (ref - lp)).sum()) for ref, lp in pairs]
            same_top = sum(int(ref.argmax() == lp.argmax()) for ref, lp in pairs)
            print(f"| {folder.name} | {statistics.median(kls):.4f} | {statistics.mean(kls):.4f} | "
                  f"{float(np.percentile(kls, 90)):.4f} | {same_top}/{len(kls)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
