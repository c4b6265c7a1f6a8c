"""What generates a completion from a prompt: the backend interface, and its local (ONNX Engine) implementation.

A backend takes prompt text built by ghostls and returns generated text; prompt building and post-processing
stay with the caller, so their quality carries over to every backend. Never imports pygls or lsprotocol.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from .engine import Engine, GenerationRequest
from .fim import FimTemplate


@dataclass(frozen=True)
class TextRequest:
    prompt: str
    max_new_tokens: int = 64
    stop_strings: tuple[str, ...] = ()
    time_budget_s: float = 5.0
    # Requests with the same key (the document URI) share a KV cache where the backend keeps one.
    cache_key: str = ""
    # Report this many most likely first tokens, for alternative candidates; and the tokens the answer must start
    # with (an alternative's first token). A token is its id for a local backend, its text for a remote one (an
    # engine reports its first tokens through `logprobs`; one that does not reports none).
    first_choices: int = 0
    forced: tuple[int | str, ...] = ()
    # Local backends only: re-choose the prompt's last tokens when it ends inside a word (GenerationRequest.heal).
    heal: bool = False


@dataclass(frozen=True)
class TextGeneration:
    text: str
    # eos | stop_string | complete | max_tokens | time_budget | cancelled | context_full
    stop_reason: str
    prompt_tokens: int
    reused_tokens: int = 0  # prompt tokens whose KV cache came from the previous request (local only)
    # Stage -> milliseconds. `prefill` is the time to the first token; for a remote backend that includes
    # the network and the engine's queue.
    timings_ms: dict[str, float] = field(default_factory=dict)
    # The generated tokens (a remote backend: the first one only), and the most likely first tokens when asked;
    # ids for a local backend, texts for a remote one (see TextRequest.first_choices).
    token_ids: tuple[int | str, ...] = ()
    first_choices: tuple[int | str, ...] = ()
    healed: bool = False


class BackendError(Exception):
    """A backend that could not answer. `kind` is a stable name the server shows the user
    (unreachable, unauthorized, rate_limited, server_error, timeout, malformed, dropped, rejected)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class CompletionBackend(Protocol):
    # The FIM layout this backend's model wants; the caller renders the prompt with it.
    template: FimTemplate
    # Picks the default prompt budget: "cpu", "cuda" or "remote".
    provider_name: str

    def count_tokens(self, text: str) -> int: ...

    def complete(self, request: TextRequest, *, is_complete: Callable[[str], bool] = ...,
                 cancelled: Callable[[], bool] = ...) -> TextGeneration:
        """Generates after `request.prompt`, stopping early once `is_complete(text)` or `cancelled()`.
        Raises BackendError when the backend cannot answer; never hangs past the request's time budget."""
        ...


class LocalBackend:
    """The ONNX Engine on this machine. Tokenizes here so the Engine can reuse its KV cache by token ids."""

    def __init__(self, engine: Engine, template: FimTemplate):
        self.engine = engine
        self.template = template
        self.provider_name = engine.provider.name
        # The last prompt and its ids: an alternative sends the same prompt again, with another forced first token.
        self._encoded: tuple[str, tuple[int, ...]] = ("", ())

    def count_tokens(self, text: str) -> int:
        return self.engine.count_tokens(text)

    def complete(self, request: TextRequest, *, is_complete: Callable[[str], bool] = lambda text: False,
                 cancelled: Callable[[], bool] = lambda: False) -> TextGeneration:
        started = time.perf_counter()
        prompt, ids = self._encoded
        if prompt != request.prompt or not ids:
            ids = tuple(self.engine.encode(request.prompt))
            self._encoded = (request.prompt, ids)
        tokenize_ms = round((time.perf_counter() - started) * 1000, 2)
        generation = self.engine.generate(
            GenerationRequest(ids, max_new_tokens=request.max_new_tokens,
                              stop_strings=request.stop_strings, time_budget_s=request.time_budget_s,
                              cache_key=request.cache_key, first_choices=request.first_choices,
                              forced=request.forced, heal=request.heal),
            is_complete=is_complete, cancelled=cancelled)
        return TextGeneration(generation.text, generation.stop_reason, generation.prompt_tokens,
                              generation.reused_tokens,
                              {"tokenize": tokenize_ms, "prefill": round(generation.prefill_s * 1000, 2),
                               "decode": round(generation.decode_s * 1000, 2)},
                              token_ids=generation.token_ids, first_choices=generation.first_choices,
                              healed=generation.healed)
