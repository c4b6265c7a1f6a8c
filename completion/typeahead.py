"""Answers without the model when the user types through, or accepts, a completion already computed.

Typing the characters the ghost text shows leaves the rest of it the answer: it is returned at once,
whatever the model's speed. And right after a completion is shown, the one that follows its acceptance
is computed speculatively while the engine is idle, so that accepting is followed by the next
suggestion at once. Only plain text comparisons here: no model, no LSP.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ShownCompletion:
    """A completion computed for `text` with the cursor at `offset` (text is the whole document)."""

    text: str
    offset: int
    completion: str
    multiline: bool

    def remainder(self, text: str, offset: int) -> str | None:
        """What is left of the completion for the document `text` with the cursor at `offset`, if the
        document is this one with a prefix of the completion typed at the cursor; else None."""
        typed = offset - self.offset
        if typed < 0 or typed >= len(self.completion) or len(text) != len(self.text) + typed:
            return None
        if text[self.offset:offset] != self.completion[:typed]:
            return None
        # The rest of the document must be untouched: an auto-inserted bracket or any other edit means
        # the model has to look again.
        if text[:self.offset] != self.text[:self.offset] or text[offset:] != self.text[self.offset:]:
            return None
        return self.completion[typed:]


def accepted(shown: ShownCompletion) -> tuple[str, int]:
    """The document and cursor after the user accepts the whole completion."""
    text = shown.text[:shown.offset] + shown.completion + shown.text[shown.offset:]
    return text, shown.offset + len(shown.completion)
