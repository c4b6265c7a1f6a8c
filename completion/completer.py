"""One completion, start to end: snapshot → mode → prompt → generation → post-processing.

Plain values in, plain values out; runs on the engine's worker thread, never on the event loop, and
knows nothing of LSP. What it needs from the document's earlier answers comes in a SessionSnapshot and goes back
in the CompletionResult; one CancelToken stops it. Every stage is timed so that an empty or cut answer can be
explained.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from ghostls.inference.backend import BackendError, CompletionBackend, TextRequest
from ghostls.parsers.document import DocumentSnapshot
from ghostls.parsers.postprocess import (block_continues_below, block_has_code_above, decide_mode, finalize,
                                         stop_check, syntax_guard)
from ghostls.parsers.prompt import build_prompt
from ghostls.parsers.repo_context import EMPTY, RepoContext
from ghostls.parsers.workspace import Workspace

from .session import CancelToken, SessionSnapshot
from .settings import Settings
from .typeahead import ShownCompletion


# A single-line completion needs few tokens; stopping early keeps it quick.
SINGLE_LINE_MAX_TOKENS = 48
# An invoked request (the user asked) offers this many distinct candidates to cycle through; an automatic one, one.
MAX_CANDIDATES = 3
# Alternatives start from the next most likely first tokens (branching costs decode steps only, no prefill).
FIRST_TOKEN_BRANCHES = 4
# While requests for other documents wait for the one engine, a prompt that cannot reuse this document's KV cache
# is cut to this share of the budget (its prefill is most of a request's cost), and a multi-line answer stops at
# its first line: every document gets a short answer soon rather than one document a long one late.
BUSY_BUDGET_SHARE = 1 / 4
BUSY_MIN_BUDGET = 256


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
    # What context went in (names, places, token counts; never source text), for ghostls/explain.
    context: dict = field(default_factory=dict)
    # The prompt text, kept only for `ghostls/explain` with includePrompt (never logged).
    prompt: str = ""
    # More candidates after `text`, distinct, for an invoked request.
    alternatives: tuple[str, ...] = ()
    # (cursor line, cross-file context) this answer used: the next request on the same line reuses it.
    held_context: tuple[int, RepoContext] | None = None
    # The answer as the document shows it, for typing through it and accepting it; None when there is none.
    shown: ShownCompletion | None = None


def complete(backend: CompletionBackend, snapshot: DocumentSnapshot, offset: int, settings: Settings,
             session: SessionSnapshot | None = None, token: CancelToken | None = None,
             workspace: Workspace | None = None, invoked: bool = False) -> CompletionResult:
    """`session`: the document's anchor, held context and KV-cache key (None: a document with no earlier answer).
    `token` cancels the request and says whether other documents wait for the engine (None: never, and none do);
    see BUSY_*."""
    session = session or SessionSnapshot(snapshot.uri)
    token = token or CancelToken()
    anchor, held = session.anchor, session.held
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round((now - clock) * 1000, 2)
        clock = now

    template = backend.template
    skip = frozenset(settings.skip_rules)
    mode = decide_mode(snapshot, offset)
    if mode.multiline and not template.uses_suffix:
        # A prefix-only model cannot see the lines below, so a block from it would re-type them; and after a
        # block's existing code it does not know where the block ends, so it runs on: one line in both cases.
        if block_continues_below(snapshot, offset, mode):
            mode = dataclasses.replace(mode, multiline=False, reason="between lines (the model cannot see the suffix)")
        elif "next_line" not in skip and block_has_code_above(snapshot, offset, mode):
            mode = dataclasses.replace(mode, multiline=False, reason="next line of a block that has code")
    budget = settings.prompt_budget(backend.provider_name)
    count = backend.count_tokens
    repo = EMPTY
    cursor_line = snapshot.line_of(offset)
    if workspace is not None and settings.workspace_context:
        if held is not None and held[0] == cursor_line:
            # Typing along a line keeps the context it started with: the prompt's head, and so its KV cache,
            # stays put while the names near the cursor (or other documents) change under the user's fingers.
            repo = held[1]
        else:
            repo = workspace.context_for(snapshot, offset, template.family, count, settings.context_tokens)
    lap("context")
    # A new window (no KV cache to reuse) while other documents take turns gets a smaller budget; its start becomes
    # the anchor, so the next keystrokes here reuse it for as long as the engine stays shared. Without an anchor
    # every window is new, and the small one is the only one built.
    busy = anchor is None and token.contended()
    if busy:
        budget = busy_budget(budget)
    prompt = build_prompt(snapshot, offset, template, count, budget=budget, context=repo.text, anchor=anchor,
                          local_context=True)
    if anchor is not None and offset - len(prompt.prefix) != anchor and token.contended():
        # Built again, smaller: only the full window can tell whether the anchor still holds (then its KV cache
        # serves it, and it is kept whole).
        busy, budget = True, busy_budget(budget)
        prompt = build_prompt(snapshot, offset, template, count, budget=budget, context=repo.text, anchor=anchor,
                              local_context=True)
    lap("prompt")
    context = {"format": repo.format, "tokens": repo.tokens, "candidates": repo.candidates,
               "dropped": repo.dropped, "items": [dataclasses.asdict(item) for item in repo.items],
               "localLines": prompt.local.count("\n"), "prefixTruncated": prompt.prefix_truncated,
               "budget": budget, "busy": busy}
    prefix_start = offset - len(prompt.prefix)

    max_new = settings.max_new_tokens if mode.multiline else min(settings.max_new_tokens, SINGLE_LINE_MAX_TOKENS)
    deadline = time.perf_counter() + settings.time_budget_ms / 1000
    request = TextRequest(prompt.text, max_new_tokens=max_new, stop_strings=template.stop,
                          time_budget_s=settings.time_budget_ms / 1000, cache_key=session.cache_key,
                          first_choices=FIRST_TOKEN_BRANCHES,  # ranked from logits already computed
                          # A word being typed ("self.ap"): its last token is re-chosen. Only where the prompt ends
                          # at the cursor (a FIM prompt ends in the template's tokens) and the cursor's spaces were
                          # not cut from it (Prompt.heal).
                          heal=("heal" not in skip and not template.uses_suffix and not prompt.healed
                                and not prompt.at_indent))
    complete_at = stop_check(snapshot, offset, mode, settings.max_lines, skip)
    first_line_only = False

    def is_complete(text: str) -> bool:
        nonlocal first_line_only
        text = prompt.heal(text)
        if complete_at(text):
            return True
        if mode.multiline and "\n" in text.lstrip("\n") and token.others_waiting():
            first_line_only = True  # other documents wait: one line now, the rest on the next request
            return True
        return False

    try:
        generation = backend.complete(request, is_complete=is_complete, cancelled=token.cancelled)
    except BackendError as exc:
        lap("generate")
        return CompletionResult("", str(exc), mode.multiline, timings_ms=timings, error=exc.kind,
                                prefix_start=prefix_start, context=context, prompt=prompt.text)
    timings.update(generation.timings_ms)
    context["tokenHealed"] = generation.healed
    clock = time.perf_counter()
    if generation.stop_reason == "cancelled":
        return CompletionResult("", "cancelled", mode.multiline, generation.prompt_tokens,
                                generation.reused_tokens, timings, prefix_start=prefix_start, context=context,
                                prompt=prompt.text, held_context=(cursor_line, repo))
    final = finalize(snapshot, offset, mode, prompt.heal(generation.text), settings.max_lines, skip)
    if first_line_only:
        final = dataclasses.replace(final, reason=f"{final.reason}; first line only: other documents were waiting")
    lap("postprocess")
    rejected = False
    if "syntax" not in skip:
        # parse: the document re-parsed with the completion merged in, to keep it from adding syntax errors.
        guarded = syntax_guard(snapshot, offset, final)
        rejected, final = bool(final.text) and not guarded.text, guarded
        lap("parse")
    reason = f"{final.reason} (model stopped: {generation.stop_reason})"

    def finish(text: str) -> str:
        candidate = finalize(snapshot, offset, mode, prompt.heal(text), settings.max_lines, skip)
        return (candidate if "syntax" in skip else syntax_guard(snapshot, offset, candidate)).text

    # Alternatives: greedy continuations of the next most likely first tokens, while time is left. An invoked
    # request offers up to MAX_CANDIDATES; an automatic one branches only when the syntax guard rejected its
    # greedy answer (the next most likely start instead of silence), and not while other documents wait.
    wanted = MAX_CANDIDATES if invoked else int(rejected and not token.others_waiting())
    candidates = [final.text] if final.text else []
    branched = False
    for first in generation.first_choices:
        if len(candidates) >= wanted or token.cancelled() or time.perf_counter() >= deadline:
            break
        if generation.token_ids[:1] == (first,):
            continue  # that is the greedy answer
        try:
            branch = backend.complete(
                dataclasses.replace(request, forced=(first,), first_choices=0,
                                    time_budget_s=max(deadline - time.perf_counter(), 0.05)),
                is_complete=lambda text: complete_at(prompt.heal(text)), cancelled=token.cancelled)
        except BackendError:
            break
        branched = True
        if branch.stop_reason == "cancelled":
            break
        text = finish(branch.text)
        if text and text not in candidates:
            candidates.append(text)
    if branched or (invoked and generation.first_choices):
        lap("alternatives")
    if rejected and candidates:
        reason = f"{reason}; the next most likely start instead"
    elif rejected and final.open_head is not None:
        # Every start broke the file: the greedy answer's lines up to one that opens a block, rather than nothing.
        candidates, reason = [final.open_head.text], f"{final.open_head.reason} (model stopped: {generation.stop_reason})"
    text = candidates[0] if candidates else ""
    return CompletionResult(text, reason, mode.multiline, generation.prompt_tokens, generation.reused_tokens, timings,
                            prefix_start=prefix_start, context=context, prompt=prompt.text,
                            alternatives=tuple(candidates[1:]), held_context=(cursor_line, repo),
                            shown=ShownCompletion(snapshot.text, offset, text, mode.multiline) if text else None)


def busy_budget(budget: int) -> int:
    """The prompt budget of a new window while other documents wait for the engine."""
    return max(BUSY_MIN_BUDGET, int(budget * BUSY_BUDGET_SHARE))

