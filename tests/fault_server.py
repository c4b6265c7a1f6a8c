"""`ghostls serve` with faults patched into its real engine: the reliability tests' only way to inject them. ghostls
itself reads no fault switch, so nothing in an editor's environment can change what it generates.

    python tests/fault_server.py FAULTS serve --stdio ...     FAULTS: e.g. raise_on_generate=1,token_delay_ms=50

- raise_on_generate=N: the engine's Nth generate() call raises inside the real decode path, so the KV-cache reset
  and the server's error handling run for real. Corrupting the ONNX file after load would not do: ONNX Runtime
  holds the graph in memory, so the fault would never reach a request.
- token_delay_ms=MS: every decoded token takes MS longer, standing in for a large model on a slow CPU so that
  cancellation and typing bursts can be timed on a tiny model that decodes a token in about a millisecond.
"""

from __future__ import annotations

import logging
import sys
import time

FAULTS = ("raise_on_generate", "token_delay_ms")


def parse(spec: str) -> dict[str, float]:
    """"key=value,key=value" as a plan; anything else is refused, so that a typo cannot quietly inject nothing."""
    plan = {}
    for item in filter(None, spec.split(",")):
        key, sep, value = item.partition("=")
        try:
            if key not in FAULTS or not sep:
                raise ValueError
            plan[key] = float(value)
        except ValueError:
            raise SystemExit(f"fault_server: {item!r} is not one of {', '.join(f'{f}=NUMBER' for f in FAULTS)}")
    return plan


def install(plan: dict[str, float]) -> None:
    """Patch the faults of `plan` into the engine classes, before the server makes its engine."""
    import onnxruntime_genai as og

    from ghostls.inference.engine import Engine

    if failing := plan.get("raise_on_generate"):
        decode = Engine._generate

        def _generate(self, request, is_complete, cancelled):
            # Engine.generate calls this once a call, holding its lock, and drops the document's cache on a raise.
            self.fault_calls = getattr(self, "fault_calls", 0) + 1
            if self.fault_calls == failing:
                raise RuntimeError(f"injected fault on generate call {self.fault_calls} (tests/fault_server.py)")
            return decode(self, request, is_complete, cancelled)

        Engine._generate = _generate

    if delay_ms := plan.get("token_delay_ms"):
        real_generator = og.Generator

        class SlowGenerator:
            """onnxruntime-genai's generator (the engine makes its own through `og.Generator`), each token later."""

            def __init__(self, model, params):
                self._generator = real_generator(model, params)

            def generate_next_token(self) -> None:
                time.sleep(delay_ms / 1000)
                self._generator.generate_next_token()

            def __getattr__(self, name):
                return getattr(self._generator, name)

        og.Generator = SlowGenerator
    logging.getLogger(__name__).warning("fault injection is on: %s", plan)


def main(argv: list[str]) -> int:
    plan = parse(argv[0])
    install(plan)
    from ghostls.cli.main import main as ghostls

    return ghostls(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
