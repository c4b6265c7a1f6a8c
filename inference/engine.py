"""The decode loop: one ONNX model loaded once, greedy decoding, KV-cache reuse across keystrokes.

Runs on a worker thread and is driven through plain values (token ids, strings, callables); it never
touches LSP or the event loop. One generation runs at a time; each document (cache key) keeps a KV cache
of its own, and the caches share a byte budget, evicted least recently used first.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .cache import ModelError, validate_model_dir
from .provider import ProviderChoice, choose_provider

log = logging.getLogger(__name__)

# Prefill in chunks so that a cancellation or the time budget is noticed within one chunk: 256 tokens on the CPU
# (a fraction of a second). On CUDA a whole 1,000-token prefill takes 9 ms, and each chunk is another pass over
# every layer's kernels: four chunks made the first token 24 ms instead of 9 (docs/benchmarks.md, the GPU check).
PREFILL_CHUNK = {"cpu": 256, "cuda": 4096}
# Reusing fewer tokens than this is not worth keeping a stale cache around.
MIN_REUSE = 8
# A new cache is sized for at least this many tokens, rounded up to a multiple of CACHE_STEP: onnxruntime-genai
# allocates the whole buffer up front (past and present share it), so the size is the memory it costs.
MIN_CACHE_TOKENS = 1280
CACHE_STEP = 256
DEFAULT_KV_BUDGET = 256 * 2**20
# Token healing gives back at most this many tokens of the word at the cursor. Measured (bench/healing.py, 120
# cursors inside words): the rest of the word right 4% unhealed, 47% with one token back, 62% with two; three
# added nothing. One is too few where a tokenizer cut a word into short pieces ("getvalu": get val u).
HEAL_TOKENS = 2


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: tuple[int, ...]
    max_new_tokens: int = 64
    stop_strings: tuple[str, ...] = ()
    time_budget_s: float = 5.0
    # Requests with the same key (the server uses the document URI) share a KV cache.
    cache_key: str = ""
    # Tokens the answer must start with (an alternative's first token); fed after the prompt, returned as generated.
    forced: tuple[int, ...] = ()
    # How many of the most likely first tokens to report (for alternative candidates); 0 for none.
    first_choices: int = 0
    # Token healing: the prompt ends inside a word the user is typing ("self.ap"), so its last tokens are the
    # tokenizer's cut (".", "ap"), not tokens the model would write there. Re-choose them: give up to HEAL_TOKENS
    # of the word back, let the first new tokens be any that write that text again (".append"), and return only
    # what follows it.
    heal: bool = False


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: tuple[int, ...]
    stop_reason: str  # eos | stop_string | complete | max_tokens | time_budget | cancelled | context_full
    prompt_tokens: int
    reused_tokens: int  # prompt tokens whose KV cache came from the previous request
    prefill_s: float
    decode_s: float
    first_token_s: float | None = None  # from the call to the first new token; None when none came
    first_choices: tuple[int, ...] = ()  # the most likely first tokens, best first, when the request asked
    healed: bool = False  # the prompt's last tokens were re-chosen (GenerationRequest.heal)


@dataclass
class _KvState:
    """The generator whose KV cache holds `tokens` (prompt and generated ids, in order)."""

    generator: object
    tokens: list[int] = field(default_factory=list)
    max_length: int = 0
    nbytes: int = 0


class Vocabulary:
    """Every token's text, sorted, to find the tokens that agree with a given text (token healing)."""

    def __init__(self, tokenizer):
        size = tokenizer.get_vocab_size()
        self.texts: list[str] = tokenizer.decode_batch([[i] for i in range(size)], skip_special_tokens=False)
        self.special = frozenset(i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special)
        ordered = sorted((text, i) for i, text in enumerate(self.texts) if text and i not in self.special)
        self._keys = [text for text, _ in ordered]
        self._ids = np.array([i for _, i in ordered], dtype=np.int64)
        self._by_text = {text: i for text, i in ordered}
        # Healing needs a token's text to be the same alone as inside a sequence (byte-level BPE: GPT-2, Qwen,
        # StarCoder, SmolLM). A decoder that drops a word's leading space when it decodes one token alone
        # (SentencePiece's) would make the texts lie, so such a tokenizer is never healed.
        sample = "def heal(self, x):\n    return x.strip() + ' ok'\n"
        self.exact = "".join(self.texts[i] for i in tokenizer.encode(sample, add_special_tokens=False).ids) == sample

    def agreeing_with(self, text: str) -> np.ndarray:
        """The ids of every non-special token that could write `text` from its start: the tokens that begin with
        it, and those that are a shorter head of it (the rest then comes in later tokens)."""
        low = bisect.bisect_left(self._keys, text)
        high = bisect.bisect_left(self._keys, text + "\U0010ffff", low)
        heads = [self._by_text[text[:n]] for n in range(1, len(text)) if text[:n] in self._by_text]
        return np.concatenate([self._ids[low:high], np.array(heads, dtype=np.int64)])


def common_prefix_length(a: list[int] | tuple[int, ...], b: list[int] | tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Engine:
    """A loaded model plus its tokenizer. Thread-safe: calls are serialised by a lock."""

    def __init__(self, model_dir: Path, provider: str = "auto", threads: int | None = None,
                 max_context: int = 4096, kv_budget_bytes: int = DEFAULT_KV_BUDGET):
        import onnxruntime_genai as og
        from tokenizers import Tokenizer

        self.model_dir = Path(model_dir)
        self.manifest = validate_model_dir(self.model_dir)
        self.provider: ProviderChoice = choose_provider(provider)
        started = time.perf_counter()
        try:
            config = og.Config(str(self.model_dir))
            config.clear_providers()
            if self.provider.name == "cuda":
                config.append_provider("cuda")
            # The converter records the converting machine's cores; the running machine may differ.
            threads = threads or len(os.sched_getaffinity(0)) or 1
            config.overlay(json.dumps(
                {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
            self._og = og
            self._model = og.Model(config)
            self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        except Exception as exc:  # a corrupt or truncated model must become a clear message
            raise ModelError(f"cannot load the model in {self.model_dir}: {exc}") from exc
        self.load_s = time.perf_counter() - started
        self.prefill_chunk = PREFILL_CHUNK[self.provider.name]
        genai = json.loads((self.model_dir / "genai_config.json").read_text())
        self.context_length = min(int(genai["model"].get("context_length", 2048)), max_context)
        eos = genai["model"].get("eos_token_id", [])
        self.eos_ids = frozenset(eos if isinstance(eos, list) else [eos])
        # What an empty prompt (the top of an empty file) starts from: the start-of-document token.
        bos = genai["model"].get("bos_token_id")
        self.start_ids = [bos] if isinstance(bos, int) else sorted(self.eos_ids)[:1]
        decoder = genai["model"]["decoder"]
        # Keys and values, every layer: float16 on CUDA, the manifest's type on the CPU (int8 rows carry a scale).
        head = decoder["head_size"]
        kv_cache = "float16" if self.provider.name == "cuda" else self.manifest.kv_cache
        row_bytes = {"int8": head + 4, "float16": 2 * head}.get(kv_cache, 4 * head)
        self.kv_bytes_per_token = 2 * decoder["num_hidden_layers"] * decoder["num_key_value_heads"] * row_bytes
        self.kv_budget_bytes = kv_budget_bytes
        self._lock = threading.Lock()
        self._caches: OrderedDict[str, _KvState] = OrderedDict()  # least recently used first
        self._vocabulary: Vocabulary | None = None
        self._vocabulary_lock = threading.Lock()
        log.info("model %s loaded in %.2fs on %s (%s)", self.model_dir.name, self.load_s,
                 self.provider.name, self.provider.reason)

    # -- tokenizer -------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=True).ids

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def vocabulary(self) -> Vocabulary:
        """Built on first use (0.15 s for a 49k vocabulary); the server builds it right after loading."""
        with self._vocabulary_lock:
            if self._vocabulary is None:
                self._vocabulary = Vocabulary(self.tokenizer)
            return self._vocabulary

    @staticmethod
    def _healing(prompt: list[int], vocabulary: Vocabulary) -> int:
        """How many of the prompt's last tokens to re-choose: those of the word the prompt ends in (at most
        HEAL_TOKENS), when none is whitespace at its end, a special token or part of a character's bytes."""
        if not vocabulary.exact:
            return 0
        count = 0
        while count < min(HEAL_TOKENS, len(prompt) - 1):
            token = prompt[-1 - count]
            text = vocabulary.texts[token] if 0 <= token < len(vocabulary.texts) else ""
            if (not text or token in vocabulary.special or "\ufffd" in text or text[-1].isspace()
                    or any(c.isspace() for c in text.lstrip(" "))):
                break
            count += 1
            if text[0] == " " or not (text[0].isalnum() or text[0] == "_"):
                break  # the word's first token (" foo", ".foo"): a healed word starts no further back
        return count

    @staticmethod
    def _heal_step(kv: _KvState, vocabulary: Vocabulary, remaining: str,
                   ranked_count: int) -> tuple[int, tuple[int, ...]]:
        """Feeds the most likely token that agrees with `remaining` (the healed text not yet written again);
        returns it and the `ranked_count` most likely agreeing tokens, best first."""
        ranked = _most_likely(kv.generator.get_logits().reshape(-1), max(ranked_count, 1),
                              among=vocabulary.agreeing_with(remaining))
        kv.generator.append_tokens([ranked[0]])
        kv.tokens.append(ranked[0])
        return ranked[0], tuple(ranked[:ranked_count])

    # -- generation ------------------------------------------------------------------------
    def generate(self, request: GenerationRequest, *,
                 is_complete: Callable[[str], bool] = lambda text: False,
                 cancelled: Callable[[], bool] = lambda: False) -> Generation:
        with self._lock:
            try:
                return self._generate(request, is_complete, cancelled)
            except Exception:
                self._caches.pop(request.cache_key, None)  # a half-fed cache must not be reused
                raise

    def _generate(self, request: GenerationRequest, is_complete, cancelled) -> Generation:
        started = time.perf_counter()
        deadline = started + request.time_budget_s
        # Keep the newest tokens when the prompt exceeds what the cache was sized for.
        room = self.context_length - request.max_new_tokens
        prompt = list(request.prompt_ids[-room:]) if room > 0 else list(request.prompt_ids[-1:])
        prompt = prompt or list(self.start_ids)
        forced = list(request.forced)
        vocabulary = self.vocabulary() if request.heal else None
        healed = self._healing(prompt, vocabulary) if vocabulary is not None else 0
        tail = self.tokenizer.decode(prompt[-healed:], skip_special_tokens=False) if healed else ""
        prompt = prompt[:-healed] if healed else prompt  # the healed text comes back as the first new tokens' head

        # Step 1: reuse the KV cache of the longest common prefix with what this document's cache holds (an
        # alternative's prompt is the previous answer's prompt, so only its forced first token is new).
        kv, reused = self._reusable_state(request.cache_key, prompt + forced, request.max_new_tokens)
        pending = (prompt + forced)[reused:]

        # Step 2: prefill the rest of the prompt, a chunk at a time, checking for cancellation.
        while pending:
            if cancelled():
                return self._result([], "cancelled", prompt, reused, started, time.perf_counter())
            chunk, pending = pending[:self.prefill_chunk], pending[self.prefill_chunk:]
            kv.generator.append_tokens(chunk)
            kv.tokens.extend(chunk)
        prefilled = time.perf_counter()

        # Step 3: greedy decoding, one token at a time, each step checking every way to stop.
        new_ids: list[int] = forced
        reason = "max_tokens"
        first_token_at = None
        choices: tuple[int, ...] = ()
        # Healing: the first tokens must write the healed text again (forced ones, an alternative's, count).
        remaining = tail
        for token in forced:
            remaining = _unwritten(remaining, vocabulary.texts[token]) if remaining else ""
        if remaining:
            token, choices = self._heal_step(kv, vocabulary, remaining, 0 if forced else request.first_choices)
            new_ids, first_token_at = forced + [token], time.perf_counter()
            while ((remaining := _unwritten(remaining, vocabulary.texts[token]))
                   and len(new_ids) < request.max_new_tokens):
                token, _ = self._heal_step(kv, vocabulary, remaining, 0)
                new_ids.append(token)
        elif request.first_choices and not forced:
            # The logits of the prompt's last token are already computed: ranking them costs no model run.
            top = _most_likely(kv.generator.get_logits().reshape(-1), request.first_choices + len(self.eos_ids))
            choices = tuple(t for t in top if t not in self.eos_ids)[: request.first_choices]
        text = self._text(new_ids, tail)
        while len(new_ids) < request.max_new_tokens:
            if cancelled():
                reason = "cancelled"
                break
            if time.perf_counter() > deadline:
                reason = "time_budget"
                break
            if len(kv.tokens) >= kv.max_length:
                reason = "context_full"
                break
            kv.generator.generate_next_token()
            token = int(kv.generator.get_next_tokens()[0])
            kv.tokens.append(token)
            first_token_at = first_token_at or time.perf_counter()
            if token in self.eos_ids:
                reason = "eos"
                break
            new_ids.append(token)
            text = self._text(new_ids, tail)
            cut = _first_stop(text, request.stop_strings)
            if cut is not None:
                text = text[:cut]
                reason = "stop_string"
                break
            if is_complete(text):
                reason = "complete"
                break
        result = self._result(new_ids, reason, prompt, reused, started, prefilled, text, first_token_at)
        return dataclasses.replace(result, first_choices=choices, healed=bool(healed))

    def _text(self, ids: list[int], tail: str) -> str:
        """The text of the new tokens, less the healed tail the first of them repeats."""
        text = self.tokenizer.decode(ids, skip_special_tokens=False) if ids else ""
        return text[len(tail):] if tail and text.startswith(tail) else text

    def _reusable_state(self, key: str, prompt: list[int], max_new_tokens: int) -> tuple[_KvState, int]:
        kv = self._caches.get(key)
        if kv is not None and len(prompt) + max_new_tokens <= kv.max_length:
            self._caches.move_to_end(key)
            # At least one prompt token must be fed again: the logits come from the last one fed.
            shared = min(common_prefix_length(kv.tokens, prompt), len(prompt) - 1)
            if shared >= MIN_REUSE:
                kv.generator.rewind_to(shared)
                del kv.tokens[shared:]
                return kv, shared
        # A fresh generator, sized with room for the prompt to grow as the user types.
        needed = max(MIN_CACHE_TOKENS, len(prompt) + max_new_tokens + 1)
        max_length = min(self.context_length, -(-needed // CACHE_STEP) * CACHE_STEP)
        nbytes = max_length * self.kv_bytes_per_token
        # Free this document's old cache and the least recently used others before allocating.
        self._caches.pop(key, None)
        while self._caches and self.cached_bytes() + nbytes > self.kv_budget_bytes:
            evicted, _ = self._caches.popitem(last=False)
            log.debug("KV cache of %s evicted", evicted or "<default>")
        params = self._og.GeneratorParams(self._model)
        params.set_search_options(do_sample=False, max_length=max_length)
        kv = self._caches[key] = _KvState(self._og.Generator(self._model, params), [], max_length, nbytes)
        return kv, 0

    def _result(self, ids, reason, prompt, reused, started, prefilled, text="", first_token_at=None) -> Generation:
        now = time.perf_counter()
        return Generation(text=text, token_ids=tuple(ids), stop_reason=reason, prompt_tokens=len(prompt),
                          reused_tokens=reused, prefill_s=prefilled - started, decode_s=now - prefilled,
                          first_token_s=None if first_token_at is None else first_token_at - started)

    def cached_bytes(self) -> int:
        """Bytes held by the KV caches (their whole allocated buffers)."""
        return sum(kv.nbytes for kv in self._caches.values())

    def cache_keys(self) -> list[str]:
        """The documents holding a KV cache, least recently used first."""
        with self._lock:
            return list(self._caches)

    def reset(self, key: str | None = None) -> None:
        """Drops one document's KV cache (a closed document), or all of them (a new model, memory pressure)."""
        with self._lock:
            if key is None:
                self._caches.clear()
            else:
                self._caches.pop(key, None)


def _most_likely(logits: np.ndarray, k: int, among: np.ndarray | None = None) -> list[int]:
    """The k most likely token ids, best first; of `among` only, when given. A partition, then a sort of the k:
    every request ranks its first tokens, and a full argsort of the vocabulary is 10x the work."""
    scores = logits if among is None else logits[among]
    k = min(k, scores.size)
    top = np.argpartition(scores, -k)[-k:]
    top = top[np.argsort(scores[top])[::-1]]
    return [int(t) for t in (top if among is None else among[top])]


def _unwritten(remaining: str, written: str) -> str:
    """What of the healed text `remaining` is still to come after a token that wrote `written`."""
    return remaining[len(written):] if len(written) < len(remaining) else ""


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None
