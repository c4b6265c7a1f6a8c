"""Token healing, measured: completions asked with the cursor inside a word, with and without healing.

Picks random points inside identifiers (4+ characters, cursor after the first; or, with `--cursor punctuation`,
right after a punctuation mark with more of the line after it) of the Python files under the given folders, feeds the 1,500 characters before each to ghostls's own Engine (greedy, up to 16 tokens, first line),
once as the prompt tokenizes and once healed (HEAL_TOKENS, or --heal-tokens), and prints how often the rest of
the word comes out exactly and the mean edit similarity of the rest of the line.

    GHOSTLS_CACHE_DIR=$PWD/.cache/ghostls .venv/bin/python bench/healing.py DIR [DIR ...] [--points 120] [--seed 1]
"""

from __future__ import annotations

import argparse
import difflib
import platform
import random
import re
import sys
from pathlib import Path

from ghostls.inference import engine as engine_module
from ghostls.inference.engine import Engine, GenerationRequest

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{3,}")
# A punctuation mark with more code after it on its line: the cursor goes right after the mark.
_PUNCTUATION = re.compile(r"[^\sA-Za-z0-9_](?=[^\n]*\S)")
_CONTEXT_CHARS = 1500


def _points(folders: list[str], count: int, seed: int, cursor: str) -> list[tuple[str, int, int]]:
    """(source, cursor, end of the word after it) for `count` cursors past each file's first lines."""
    files = sorted(p for folder in folders for p in Path(folder).rglob("*.py") if p.stat().st_size > 2000)
    if not files:
        raise SystemExit(f"no Python file over 2 kB under {', '.join(folders)}")
    rng = random.Random(seed)
    points = []
    while len(points) < count:
        source = rng.choice(files).read_text(encoding="utf-8", errors="replace")
        pattern = _WORD if cursor == "word" else _PUNCTUATION
        found = [m for m in pattern.finditer(source) if m.start() > 800]
        if found:
            match = rng.choice(found)
            at = rng.randint(match.start() + 1, match.end() - 1) if cursor == "word" else match.end()
            points.append((source, at, re.compile(r"[A-Za-z0-9_]*").match(source, at).end()))
    return points


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--points", type=int, default=120)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cursor", choices=("word", "punctuation"), default="word")
    parser.add_argument("--heal-tokens", type=int, default=engine_module.HEAL_TOKENS)
    parser.add_argument("--model", help="a converted model folder (default: the embedded model)")
    args = parser.parse_args()

    if args.model:
        model_dir = Path(args.model)
    else:
        from ghostls.inference import embedded
        model_dir = embedded.ensure_embedded_model()
    engine_module.HEAL_TOKENS = args.heal_tokens
    engine = Engine(model_dir)
    totals = {False: [0, 0.0], True: [0, 0.0]}
    points = _points(args.folders, args.points, args.seed, args.cursor)
    for source, cursor, word_end in points:
        ids = tuple(engine.encode(source[max(0, cursor - _CONTEXT_CHARS):cursor]))
        line_end = source.find("\n", cursor)
        rest_of_line = source[cursor:line_end if line_end >= 0 else len(source)]
        for heal in (False, True):
            engine.reset()
            generation = engine.generate(GenerationRequest(ids, max_new_tokens=16, heal=heal, stop_strings=("\n",)))
            got = generation.text.split("\n")[0]
            totals[heal][0] += re.match(r"[A-Za-z0-9_]*", got).group(0) == source[cursor:word_end]
            totals[heal][1] += difflib.SequenceMatcher(None, got, rest_of_line).ratio()

    print(f"{len(points)} cursors {'inside words' if args.cursor == 'word' else 'after punctuation'}, model {model_dir.name}, heal tokens {args.heal_tokens}, "
          f"{platform.processor() or platform.machine()}")
    print("| prompt | rest of the word exact | rest of the line, edit similarity |")  # after punctuation: next word
    print("|---|---|---|")
    for heal, (exact, similarity) in totals.items():
        print(f"| {'healed' if heal else 'as tokenized'} | {exact / len(points):.3f} | {similarity / len(points):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
