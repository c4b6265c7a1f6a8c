"""One completion, start to end: snapshot → mode → prompt → generation → post-processing.

Plain values in, plain values out; runs on the engine's worker thread, never on the event loop, and
knows nothing of LSP. Every stage is timed so that an empty or cut answer can be explained.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from ghostls.inference.backend import BackendError, CompletionBackend, TextRequest
from ghostls.parsers.context import gather_context
from ghostls.parsers.document import DocumentSnapshot
from ghostls.parsers.postprocess import decide_mode, finalize, stop_check
from ghostls.parsers.prompt import build_prompt

from .config import Settings


# A single-line completion needs few tokens; stopping early keeps it quick.
SINGLE_LINE_MAX_TOKENS = 48


@dataclass(frozen=True)
class CompletionResult:
    text: str
    reason: str  # why it ended, or why it is empty
    multiline: bool
    prompt_tokens: int = 0
    reused_tokens: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: str = ""  # a BackendError kind (unreachable, unauthorized, ...) when the backend failed
    # Where the prompt's prefix began: the next request in the document keeps it as its anchor.
    prefix_start: int | None = None


def complete(backend: CompletionBackend, snapshot: DocumentSnapshot, offset: int, settings: Settings,
             cancelled: Callable[[], bool] = lambda: False, anchor: int | None = None) -> CompletionResult:
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round((now - clock) * 1000, 2)
        clock = now

    template = backend.template
    mode = decide_mode(snapshot, offset)
    budget = settings.prompt_budget(backend.provider_name)
    prompt = build_prompt(snapshot, offset, template, backend.count_tokens, budget=budget, anchor=anchor)
    if prompt.prefix_truncated:
        # The window misses the top of the file: bring the imports and enclosing headers back in.
        context = gather_context(snapshot, offset, offset - len(prompt.prefix))
        if context:
            prompt = build_prompt(snapshot, offset, template, backend.count_tokens, budget=budget,
                                  context=context, anchor=anchor)
    lap("prompt")

    max_new = settings.max_new_tokens if mode.multiline else min(settings.max_new_tokens, SINGLE_LINE_MAX_TOKENS)
    request = TextRequest(prompt.text, max_new_tokens=max_new, stop_strings=template.stop,
                          time_budget_s=settings.time_budget_ms / 1000, cache_key=snapshot.uri)
    complete_at = stop_check(snapshot, offset, mode, settings.max_lines)
    try:
        generation = backend.complete(request, is_complete=lambda text: complete_at(prompt.heal(text)),
                                      cancelled=cancelled)
    except BackendError as exc:
        lap("generate")
        return CompletionResult("", str(exc), mode.multiline, timings_ms=timings, error=exc.kind)
    timings.update(generation.timings_ms)
    clock = time.perf_counter()
    if generation.stop_reason == "cancelled":
        return CompletionResult("", "cancelled", mode.multiline, generation.prompt_tokens,
                                generation.reused_tokens, timings)
    final = finalize(snapshot, offset, mode, prompt.heal(generation.text), settings.max_lines)
    lap("postprocess")
    reason = final.reason or generation.stop_reason
    if not final.text and not final.reason:
        reason = f"empty after post-processing (model stopped: {generation.stop_reason})"
    return CompletionResult(final.text, reason, mode.multiline, generation.prompt_tokens,
                            generation.reused_tokens, timings, prefix_start=offset - len(prompt.prefix))
