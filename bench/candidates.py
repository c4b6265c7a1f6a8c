"""What alternatives cost: the same positions completed as an Automatic request (one candidate) and as an Invoked
one (up to 3, by first-token branching), on the embedded model, in-process (no LSP), same prompt, warm cache.

    GHOSTLS_CACHE_DIR=.cache/ghostls .venv/bin/python bench/candidates.py [--positions 8]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

from ghostls.completion import Settings, complete
from ghostls.inference.backend import LocalBackend
from ghostls.inference.embedded import ensure_embedded_model
from ghostls.inference.engine import Engine
from ghostls.inference.fim import template_by_name
from ghostls.parsers.document import Document


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--positions", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    engine = Engine(ensure_embedded_model(), "cpu")
    backend = LocalBackend(engine, template_by_name("prefix_only"))
    settings = Settings(time_budget_ms=60_000)
    files = sorted(Path(__file__).resolve().parents[1].glob("parsers/*.py"))
    rng = random.Random(args.seed)
    rows = []
    for _ in range(args.positions):
        path = rng.choice(files)
        text = path.read_text()
        lines = text.split("\n")
        index = rng.choice([i for i, line in enumerate(lines) if len(line.strip()) > 10 and i > 5])
        offset = sum(len(line) + 1 for line in lines[:index]) + len(lines[index]) - len(lines[index].lstrip())
        holed = text[:offset] + text[offset + len(lines[index].lstrip()):]
        snapshot = Document(path.as_uri(), "python", 1, holed).snapshot()
        complete(backend, snapshot, offset, settings)  # warm the KV cache, so both runs below reuse it
        started = time.perf_counter()
        automatic = complete(backend, snapshot, offset, settings)
        one = time.perf_counter() - started
        started = time.perf_counter()
        invoked = complete(backend, snapshot, offset, settings, invoked=True)
        three = time.perf_counter() - started
        rows.append((one, three, 1 + len(invoked.alternatives) if invoked.text else 0, bool(automatic.text)))
        print(f"{path.name}:{index + 1} automatic {one:.2f}s, invoked {three:.2f}s, "
              f"{rows[-1][2]} candidates", file=sys.stderr)
    print(f"automatic p50 {statistics.median(r[0] for r in rows):.2f}s, invoked p50 "
          f"{statistics.median(r[1] for r in rows):.2f}s, extra p50 "
          f"{statistics.median(r[1] - r[0] for r in rows):.2f}s, candidates mean "
          f"{statistics.mean(r[2] for r in rows):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
