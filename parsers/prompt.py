"""Prompt building: a pure function of (snapshot, cursor offset, template, tokenizer, budget) to a Prompt value.

Owns how the token budget is split between context, prefix and suffix and where they are cut (line boundaries).
Must never copy or scan the whole document (20 MB files exist) and never call the tokenizer per line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .context import gather_context
from .document import DocumentSnapshot

# Source code runs 2.5-4 characters per token for code-trained BPE tokenizers; the first guess only needs
# to be close, because every guess is checked with an exact count and corrected from the observed ratio.
_FIRST_CHARS_PER_TOKEN = 3.5
# Whitespace-heavy text can compress far better than that; the cap keeps a window (and the tokenizer call on
# it) bounded however well the text compresses.
_MAX_CHARS_PER_TOKEN = 32
# Exact tokenizer calls per window; each call refines the chars-per-token estimate.
_MAX_COUNTS = 5
# A prefix window that cannot hold the whole file starts this full, leaving room for the user to type on
# with the same start (the anchor), so the model's KV cache for it is reused keystroke after keystroke.
_WINDOW_FILL = 0.75
# An anchored window is kept while it holds at least this share of the prefix budget, and at most the budget plus
# this share: a first window is filled whole (the best first answer), and the slack lets the next keystrokes
# reuse its KV cache instead of paying a second long prefill right after the first.
_ANCHOR_MIN_FILL = 0.5
_ANCHOR_SLACK = 0.15


class PromptTemplate(Protocol):
    uses_suffix: bool  # False for prefix-only models

    def render(self, prefix: str, suffix: str, context: str) -> str: ...


@dataclass(frozen=True)
class Prompt:
    text: str  # rendered by the template
    prefix: str  # document text that went in before the cursor
    suffix: str  # document text that went in after the cursor
    context: str  # extra context block placed first (may be "")
    prefix_truncated: bool
    suffix_truncated: bool
    # Spaces and tabs cut from the end of the prefix before rendering, when the cursor is mid-line.
    # Tokenizers fold a space into the next word's token (" 1"), so a prompt ending in one makes the
    # model add another; it generates the space itself instead, and `heal` drops it again.
    healed: str = ""
    # The cursor stands after indentation only. The indentation stays in the prompt (cut away, the
    # model is free to dedent out of the block), but for its last space (see build_prompt), and the model's
    # leading spaces are dropped.
    at_indent: bool = False
    # Imports and enclosing scope headers from above the window, brought back into `context` (build_prompt's
    # local_context); "" when the window holds the top of the file or there were none.
    local: str = ""

    def heal(self, generated: str) -> str:
        """The generated text as it continues the document at the cursor."""
        if self.at_indent:
            return self._at_cursor_depth(generated)
        if not self.healed:
            return generated
        if generated.startswith(self.healed):
            return generated[len(self.healed):]
        # The model chose other whitespace (or none): the cursor's own spaces stand.
        return generated.lstrip(" \t")

    def _at_cursor_depth(self, generated: str) -> str:
        """A completion at indentation, its first line at the cursor. Where the model began one level deeper than
        the cursor, the lines after it that are at least that deep move out by the same amount, up to the first
        line that is not (where the model left the block it began): the block keeps the shape the model gave it.
        (A tokenizer that folds a newline and a tab into one token leaves a Go or C prompt ending on that token,
        and the model then writes one more tab before every line of the body.)"""
        body = generated[len(self.healed):] if self.healed and generated.startswith(self.healed) else generated
        text = body.lstrip(" \t")
        extra = body[: len(body) - len(text)]
        if not extra or "\n" not in text:
            return text
        depth = self.prefix[self.prefix.rfind("\n") + 1:] + extra  # where the model put the cursor's depth
        lines = text.split("\n")
        for i in range(1, len(lines)):
            if lines[i].strip() and not lines[i].startswith(depth):
                break  # the model left its block here: this line and the rest stand as written
            lines[i] = lines[i][len(extra):] if lines[i].strip() else lines[i]
        return "\n".join(lines)


def build_prompt(
    snapshot: DocumentSnapshot,
    offset: int,
    template: PromptTemplate,
    count_tokens: Callable[[str], int],
    budget: int = 1500,
    suffix_share: float = 0.25,
    context: str = "",
    anchor: int | None = None,
    local_context: bool = False,
) -> Prompt:
    """`anchor` is where the previous prompt's prefix in this document started (None: no previous prompt).
    It is kept while it fits, so that typing in a file longer than the budget does not shift the window,
    and lose the KV cache, at every new line. `local_context`: when the window misses the top of the file,
    the imports and enclosing scope headers above it follow `context` (see Prompt.local)."""
    prompt = _fit_prompt(snapshot, offset, template, count_tokens, budget, suffix_share, context, anchor)
    if not (local_context and prompt.prefix_truncated):
        return prompt
    local = gather_context(snapshot, offset, offset - len(prompt.prefix))
    if not local:
        return prompt
    # Fitted again: the local lines take budget from the suffix and the prefix, so the window starts lower. Only
    # the first fit can say which lines are above the window, so the two cannot be one.
    refitted = _fit_prompt(snapshot, offset, template, count_tokens, budget, suffix_share, context + local, anchor)
    return dataclasses.replace(refitted, local=local)


def _fit_prompt(snapshot: DocumentSnapshot, offset: int, template: PromptTemplate,
                count_tokens: Callable[[str], int], budget: int, suffix_share: float, context: str,
                anchor: int | None) -> Prompt:
    """The prompt with `context` first, then as much of the suffix and prefix as the budget holds."""
    text = snapshot.text
    offset = max(0, min(offset, len(text)))
    budget = max(budget, 0)
    ratio = _FIRST_CHARS_PER_TOKEN

    # 1. Context comes first, but may not crowd out the code around the cursor: at most half the budget,
    #    trimmed from its top (its last lines are the scope headers nearest the cursor).
    context_tokens = 0
    if context:
        start, context_tokens, ratio = _fit_before(context, len(context), budget // 2, count_tokens, ratio)
        context = context[start:]

    available = max(budget - context_tokens, 0)

    # 2. The suffix gets its share; whatever it does not use goes back to the prefix.
    suffix, suffix_tokens, suffix_truncated = "", 0, False
    if template.uses_suffix:
        end, suffix_tokens, ratio = _fit_after(text, offset, int(available * suffix_share), count_tokens, ratio)
        suffix, suffix_truncated = text[offset:end], end < len(text)

    # 3. The prefix: whole lines above the cursor, plus the cursor's own line up to the cursor: as much as
    #    fits. When the document's previous prompt left an anchor: the anchored window while it still
    #    fits, else a new one filled to _WINDOW_FILL, so that the next keystrokes keep its start.
    prefix_budget = available - suffix_tokens
    start, _, ratio = _fit_before(text, offset, prefix_budget, count_tokens, ratio)
    if start > 0 and anchor is not None:
        kept = _anchored_start(text, offset, anchor, prefix_budget, count_tokens)
        if kept is not None:
            start = kept
        else:
            start, _, ratio = _fit_before(text, offset, int(prefix_budget * _WINDOW_FILL), count_tokens, ratio)
    prefix = text[start:offset]
    cursor_line = prefix[prefix.rfind("\n") + 1:]
    at_indent = bool(cursor_line) and not cursor_line.strip(" \t")
    rendered = prefix if at_indent else prefix.rstrip(" \t")
    if at_indent and not template.uses_suffix and cursor_line.endswith(" "):
        # BPE tokenizers fold a line's last indentation space into its first word (" return"): a prompt that
        # continues straight from the cursor ends one space short, so the model writes " return" itself, at the
        # block's depth, instead of one space deeper on every line. (A FIM prompt ends in a special token:
        # its models saw prefixes cut anywhere.)
        rendered = prefix[:-1]
    healed = prefix[len(rendered):]

    return Prompt(
        text=template.render(rendered, suffix, context),
        prefix=prefix,
        suffix=suffix,
        context=context,
        prefix_truncated=start > 0,
        suffix_truncated=suffix_truncated,
        healed=healed,
        at_indent=at_indent,
    )


def _anchored_start(text: str, offset: int, anchor: int | None, budget: int,
                    count: Callable[[str], int]) -> int | None:
    """The anchor, if it is a line start before the cursor whose window still fits the budget well (see
    _ANCHOR_SLACK)."""
    if anchor is None or not 0 < anchor <= offset or text[anchor - 1] not in "\r\n":
        return None
    most = budget * (1 + _ANCHOR_SLACK)
    if offset - anchor > max(most, 1) * _MAX_CHARS_PER_TOKEN:
        return None  # far above the cursor: not worth a tokenizer call over that much text
    tokens = count(text[anchor:offset])
    return anchor if budget * _ANCHOR_MIN_FILL <= tokens <= most else None


def _line_start(text: str, offset: int) -> int:
    # Look for a lone \r only within the line the \n search found, so a file without \r is not scanned whole.
    newline = text.rfind("\n", 0, offset)
    return max(newline, text.rfind("\r", newline + 1, offset)) + 1


def _fit_before(
    text: str, offset: int, budget: int, count: Callable[[str], int], ratio: float
) -> tuple[int, int, float]:
    """Smallest start (a line start) with count(text[start:offset]) <= budget; returns (start, tokens, ratio).

    The cursor's own line, from its start to the offset, is always kept whole, even over budget, unless it is
    so long (minified code) that no tokenizer could fit it: then it is cut by characters, to stay bounded.
    """
    cap = max(budget, 1) * _MAX_CHARS_PER_TOKEN
    line_start = _line_start(text, offset)
    whole_cursor_line = offset - line_start <= cap

    def snap(size: int) -> int:
        # Window size in chars -> the size of the largest whole-line window that is not larger.
        start = offset - min(size, offset, cap)
        if not whole_cursor_line:
            return offset - start
        if start >= line_start:
            return offset - line_start
        if start > 0:
            newline = text.find("\n", start - 1, line_start)
            start = newline + 1 if newline != -1 else line_start
        return offset - start

    def window(size: int) -> str:
        return text[offset - size : offset]

    size, tokens, ratio = _fit(snap, window, min(offset, cap), budget, count, ratio)
    if tokens > budget and not whole_cursor_line:
        size = _char_cut(window, size, budget, count, ratio)
        tokens = count(window(size)) if size else 0
    return offset - size, tokens, ratio


def _fit_after(
    text: str, offset: int, budget: int, count: Callable[[str], int], ratio: float
) -> tuple[int, int, float]:
    """Largest end (just after a line break, or the end of text) with count(text[offset:end]) <= budget."""
    cap = max(budget, 1) * _MAX_CHARS_PER_TOKEN
    max_size = min(len(text) - offset, cap)

    def snap(size: int) -> int:
        end = offset + min(size, max_size)
        if end >= len(text):
            return len(text) - offset
        newline = max(text.rfind("\n", offset, end), text.rfind("\r", offset, end))
        if newline != -1 and text.startswith("\r\n", newline):
            newline += 1  # never split a \r\n: take its \n too, one char past the guess
        return newline + 1 - offset if newline != -1 else 0

    size, tokens, ratio = _fit(snap, lambda size: text[offset : offset + size], max_size, budget, count, ratio)
    return offset + size, tokens, ratio


def _fit(
    snap: Callable[[int], int],
    window: Callable[[int], str],
    max_size: int,
    budget: int,
    count: Callable[[str], int],
    ratio: float,
) -> tuple[int, int, float]:
    """Largest snapped window size whose token count fits the budget, with a handful of exact counts.

    Each guess is sized from the chars-per-token ratio observed on the previous exact count; guesses are kept
    strictly between the best size known to fit and the smallest known not to, so the search ends.
    """
    budget = max(budget, 0)
    fits, fits_tokens, over = -1, 0, max_size + 1
    target = budget * ratio * 0.97
    for _ in range(_MAX_COUNTS):
        size = snap(int(target))
        if size <= fits or size >= over:
            break
        tokens = count(window(size)) if size else 0
        if size and tokens:
            ratio = min(size / tokens, _MAX_CHARS_PER_TOKEN)
        if tokens <= budget:
            fits, fits_tokens = size, tokens
            if size >= max_size or tokens >= budget * 0.9:
                break
            target = size + (budget - tokens) * ratio * 0.95
        else:
            over = size
            target = size * budget / tokens * 0.95
    if fits < 0:
        # Nothing fitted: the smallest window (the cursor line for a prefix, nothing for a suffix), even over budget.
        fits = snap(0)
        fits_tokens = count(window(fits)) if fits else 0
    return fits, fits_tokens, ratio


def _char_cut(window: Callable[[int], str], size: int, budget: int, count: Callable[[str], int], ratio: float) -> int:
    # Only for a cursor line longer than the whole budget: cut inside it, by characters, nearest the cursor.
    size = min(size, int(budget * ratio * 0.9))
    for _ in range(3):
        tokens = count(window(size)) if size else 0
        if tokens <= budget:
            return size
        size = int(size * budget / tokens * 0.9)
    return size
