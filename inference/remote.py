"""The remote backend: an OpenAI-compatible `/v1/completions` engine (vLLM, TGI, llama.cpp server, Ollama).

Sends the raw prompt ghostls built, streams the answer (SSE) and closes the stream as soon as the caller's
`is_complete` or `cancelled` says so. Owns retries, timeouts, the keep-alive pool and the API key; must never
log or echo the key, never turn TLS verification off, and never import pygls or lsprotocol.

Requests run on one asyncio loop in a thread of this backend's own: a cancelled asyncio task closes its
HTTP stream at once, wherever it waits, which a blocking socket read cannot promise.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from .backend import BackendError, TextGeneration, TextRequest
from .fim import FimTemplate, template_by_name, template_for_model_name

log = logging.getLogger(__name__)
# httpx logs every request at INFO; httpcore's DEBUG lines describe headers. Neither belongs in our log.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# Without a local tokenizer, prompt tokens are estimated from UTF-8 bytes. Code runs 2.5-4.6 bytes per token
# for BPE code tokenizers (SmolLM2's: 3.7 median and 2.55 at the 5th percentile over 200 stdlib files; 2.46
# for our escape-heavy tests/test_document.py), so 2.25 over-counts almost always: the prompt may come out
# shorter than the budget allows, rarely longer than the engine's context.
DEFAULT_BYTES_PER_TOKEN = 2.25
# Backoff before retry n (1-based): BACKOFF_S * 2**(n-1), plus up to half of it again as jitter.
BACKOFF_S = 0.2
# How often a waiting caller looks at its cancel flag.
CANCEL_POLL_S = 0.02
_RETRYABLE_STATUS = (429, 503)  # the engine refused before doing any work: asking again is safe


@dataclass(frozen=True)
class RemoteConfig:
    """One remote engine, as the user configured it. The API key is kept out of repr (and so of logs)."""

    url: str  # base URL (`https://host:8000`, `.../v1`) or the full `.../v1/completions`
    model: str = ""  # sent as `model`; engines serving one model may accept any name
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None  # environment variable holding the key; wins over api_key
    fim_template: str = "auto"  # auto: guessed from the model name
    timeout_ms: int = 10_000  # per request: connect, queue, first token and stream together
    max_retries: int = 2  # only for connect errors, 429 and 503, and only before any byte was streamed
    tokenizer: str | None = None  # a tokenizer.json matching the served model, for exact prompt budgets
    bytes_per_token: float = DEFAULT_BYTES_PER_TOKEN
    ca_file: str | None = None  # extra CA bundle for a private certificate authority (verification stays on)

    @property
    def endpoint(self) -> str:
        base = self.url.rstrip("/")
        if base.endswith("/completions"):
            return base
        return f"{base}/completions" if base.endswith("/v1") else f"{base}/v1/completions"

    def resolve_key(self) -> str | None:
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return self.api_key or None

    def template(self) -> FimTemplate:
        if self.fim_template == "auto":
            return template_for_model_name(self.model)
        return template_by_name(self.fim_template)

    def describe(self) -> str:
        """For status lines and logs: where and what, never the key."""
        return f"{self.endpoint} ({self.model or 'default model'})"


def is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


class RemoteBackend:
    """A CompletionBackend for one RemoteConfig, with its own keep-alive pool. Call close() when replaced."""

    provider_name = "remote"

    def __init__(self, config: RemoteConfig):
        import httpx

        self.config = config
        self.template = config.template()
        self._httpx = httpx
        self._count = self._token_counter(config)
        self._key = config.resolve_key()
        headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ghostls-remote", daemon=True)
        self._thread.start()
        verify = True
        if config.ca_file:
            import ssl
            verify = ssl.create_default_context(cafile=config.ca_file)
        timeout_s = config.timeout_ms / 1000

        async def make_client():  # created on its loop, so its pool belongs there
            return httpx.AsyncClient(
                headers=headers, verify=verify, follow_redirects=False, trust_env=False,
                timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
                limits=httpx.Limits(max_connections=16, max_keepalive_connections=8, keepalive_expiry=60))

        self._client = asyncio.run_coroutine_threadsafe(make_client(), self._loop).result()
        # Requests this backend gave up on (cancelled, or out of time) before the engine began answering them.
        # An engine that queues requests (llama.cpp's Python server, a busy single-slot server) still runs
        # each one's prefill before it notices the closed connection; sent anyway, every new request would
        # wait behind that wasted work, run out of time in turn, and leave another behind it: one slow
        # answer became a run of empty ones. So such a stream is kept open until the engine begins it (or
        # timeout_ms), and the next request goes out only then (see _engine_free).
        self._abandoned = 0
        self._engine_free = asyncio.run_coroutine_threadsafe(_new_event(), self._loop).result()

    # -- prompt budget -----------------------------------------------------------------------
    @staticmethod
    def _token_counter(config: RemoteConfig) -> Callable[[str], int]:
        if config.tokenizer:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(Path(config.tokenizer).expanduser()))
            return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)
        per_token = config.bytes_per_token
        return lambda text: math.ceil(len(text.encode("utf-8", "surrogatepass")) / per_token)

    def count_tokens(self, text: str) -> int:
        return self._count(text)

    # -- generation --------------------------------------------------------------------------
    def complete(self, request: TextRequest, *, is_complete: Callable[[str], bool] = lambda text: False,
                 cancelled: Callable[[], bool] = lambda: False) -> TextGeneration:
        started = time.perf_counter()
        prompt_tokens = self._count(request.prompt)
        if cancelled():
            return TextGeneration("", "cancelled", prompt_tokens)
        future = asyncio.run_coroutine_threadsafe(self._generate(request, is_complete, started), self._loop)
        while True:
            try:
                state = future.result(timeout=CANCEL_POLL_S)
                break
            except concurrent.futures.TimeoutError:
                if cancelled():
                    # Cancelling the task exits its `async with` stream: the connection is closed, not pooled.
                    self._loop.call_soon_threadsafe(future.cancel)
                    try:
                        future.result(timeout=5)
                    except (concurrent.futures.CancelledError, BackendError, concurrent.futures.TimeoutError):
                        pass
                    return TextGeneration("", "cancelled", prompt_tokens,
                                          timings_ms={"prefill": _ms(started, time.perf_counter())})
            except concurrent.futures.CancelledError:
                return TextGeneration("", "cancelled", prompt_tokens)
        now = time.perf_counter()
        first_at = state.first_token_at or now
        return TextGeneration(state.text, state.reason, prompt_tokens,
                              timings_ms={"prefill": _ms(started, first_at), "decode": _ms(first_at, now)},
                              token_ids=state.first.token, first_choices=state.first.choices)

    async def _generate(self, request: TextRequest, is_complete, started: float) -> "_StreamState":
        # One deadline for everything: the time budget, or the request timeout if that is shorter.
        budget_s = min(request.time_budget_s, self.config.timeout_ms / 1000)
        deadline = started + budget_s
        # An alternative's first token (TextRequest.forced) is sent as the end of the prompt, and is the start of
        # the answer returned.
        forced = "".join(str(token) for token in request.forced)
        body = {"model": self.config.model, "prompt": request.prompt + forced, "max_tokens": request.max_new_tokens,
                "temperature": 0, "stream": True}
        if request.first_choices:
            body["logprobs"] = request.first_choices  # the first token's most likely alternatives, for candidates
        if request.stop_strings:
            body["stop"] = list(request.stop_strings)
        state = _StreamState(text=forced)
        try:
            await asyncio.wait_for(self._engine_free.wait(), max(deadline - time.perf_counter(), 0.001))
        except (TimeoutError, asyncio.TimeoutError):
            raise self._error("timeout", f"{self.config.describe()} had not begun a request ghostls gave up on "
                                         f"within {budget_s:.1f}s; this one was not sent") from None
        try:
            await asyncio.wait_for(self._post_with_retries(body, request, is_complete, state, deadline),
                                   max(deadline - time.perf_counter(), 0.001))
        except (TimeoutError, asyncio.TimeoutError):
            if state.text and state.first_token_at is not None:
                state.reason = "time_budget"
                return state
            if state.received_bytes:
                raise self._error("timeout", f"{self.config.describe()} sent no text within {budget_s:.1f}s") from None
            raise self._error("timeout", f"no answer from {self.config.describe()} within {budget_s:.1f}s") from None
        return state

    async def _post_with_retries(self, body: dict, request: TextRequest, is_complete, state: "_StreamState",
                                 deadline: float) -> None:
        httpx = self._httpx
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._post(body, request, is_complete, state)
                return
            except _Retryable as retry:
                if attempt > self.config.max_retries:
                    raise self._error(retry.kind, retry.message) from None
                delay = BACKOFF_S * 2 ** (attempt - 1)
                delay = max(delay + random.uniform(0, delay / 2), retry.retry_after or 0)
                if time.perf_counter() + delay >= deadline:
                    raise self._error(retry.kind, retry.message) from None  # no time left to ask again
                log.info("remote engine: %s; retry %d in %.2fs", self._redact(retry.message), attempt, delay)
                await asyncio.sleep(delay)  # the caller's deadline (wait_for) still bounds this
            except httpx.TimeoutException:
                raise asyncio.TimeoutError from None  # the outer deadline handler words it
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                raise self._error("dropped", f"{self.config.describe()} dropped the stream "
                                             f"after {len(state.text)} chars: {type(exc).__name__}") from None
            except httpx.HTTPError as exc:
                raise self._error("unreachable", f"request to {self.config.describe()} failed: "
                                                 f"{type(exc).__name__}: {exc}") from None

    async def _post(self, body: dict, request: TextRequest, is_complete, state: "_StreamState") -> None:
        httpx = self._httpx
        try:
            response_cm = self._client.stream("POST", self.config.endpoint, json=body)
            response = await response_cm.__aenter__()
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # Nothing reached the engine: safe to try again.
            raise _Retryable("unreachable", f"cannot connect to {self.config.describe()}: {_reason(exc)}") from None
        if response.status_code != 200:
            try:
                await self._refuse(response)
            finally:
                await response_cm.__aexit__(None, None, None)
        # The stream is read by a task of its own, so that a request given up on can leave it open (below).
        lines: asyncio.Queue = asyncio.Queue()
        reader = self._loop.create_task(_read_lines(response, lines))
        given_up_before_begun = False
        try:
            await self._read_events(lines, request, is_complete, state)
        except asyncio.CancelledError:
            given_up_before_begun = not state.received_bytes
            raise
        finally:
            if given_up_before_begun:
                self._close_when_begun(response_cm, reader, lines)  # see _engine_free
            else:
                # Exiting the stream early (complete, cancelled, error) closes the connection instead of
                # pooling it.
                reader.cancel()
                await response_cm.__aexit__(None, None, None)

    def _close_when_begun(self, response_cm, reader: asyncio.Task, lines: asyncio.Queue) -> None:
        """Keeps an abandoned stream open, in the background, until the engine sends its first line (it has
        then done the prefill and stops at its next token) or timeout_ms passes; new requests wait meanwhile."""
        self._abandoned += 1
        self._engine_free.clear()

        async def close_when_begun():
            try:
                await asyncio.wait_for(lines.get(), self.config.timeout_ms / 1000)
            except asyncio.TimeoutError:
                pass
            finally:
                reader.cancel()
                try:
                    await response_cm.__aexit__(None, None, None)
                except Exception:  # noqa: BLE001 - the answer is unwanted; closing it is all that matters
                    pass
                self._abandoned -= 1
                if not self._abandoned:
                    self._engine_free.set()

        self._loop.create_task(close_when_begun())

    async def _refuse(self, response) -> None:
        status = response.status_code
        try:
            detail = (await response.aread())[:300].decode("utf-8", "replace").strip()
        except self._httpx.HTTPError:
            detail = ""
        where = self.config.describe()
        suffix = f": {detail}" if detail else ""
        if status in _RETRYABLE_STATUS:
            kind = "rate_limited" if status == 429 else "server_error"
            raise _Retryable(kind, f"{where} answered {status}{suffix}", _retry_after(response))
        if status in (401, 403):
            hint = (f"check the key in ${self.config.api_key_env}" if self.config.api_key_env
                    else "set backend.apiKeyEnv or backend.apiKey")
            raise self._error("unauthorized", f"{where} answered {status} ({hint}){suffix}")
        if status >= 500:
            raise self._error("server_error", f"{where} answered {status}{suffix}")
        raise self._error("rejected", f"{where} answered {status}{suffix}")

    async def _read_events(self, lines: asyncio.Queue, request: TextRequest, is_complete,
                           state: "_StreamState") -> None:
        """Reads `data:` events until [DONE], a finish_reason, a stop string, or `is_complete`."""
        where = self.config.describe()
        done = False
        while (line := await lines.get()) is not _END_OF_BODY:
            if isinstance(line, BaseException):
                raise line  # what ended the reading: a dropped connection, a read timeout
            state.received_bytes = True
            if not line.startswith("data:"):
                continue  # SSE comments, `event:` lines and the blank lines between events
            data = line[5:].strip()
            if data == "[DONE]":
                # Read on to the body's end (its last chunk) so that the connection goes back to the pool.
                state.reason = state.reason or "eos"
                done = True
            if done:
                continue
            try:
                event = json.loads(data)
            except ValueError:
                raise self._error("malformed", f"{where} sent an event that is not JSON: {data[:80]!r}") from None
            if isinstance(event, dict) and "error" in event:
                raise self._error("server_error", f"{where} reported an error mid-stream: "
                                                  f"{str(event['error'])[:200]}")
            try:
                choice = event["choices"][0]
                piece = choice.get("text") or ""
                finish = choice.get("finish_reason")
            except (KeyError, IndexError, TypeError, AttributeError):
                raise self._error("malformed", f"{where} sent an event that is not a completion chunk: "
                                               f"{data[:80]!r}") from None
            if not isinstance(piece, str):
                raise self._error("malformed", f"{where} sent a non-text completion chunk")
            if piece and state.first_token_at is None:
                state.first_token_at = time.perf_counter()
                state.first = _first_token(choice.get("logprobs"))
            state.text += piece
            # Engines apply `stop` themselves; cutting here too covers any that ignore it.
            cut = _first_stop(state.text, request.stop_strings)
            if cut is not None:
                state.text, state.reason = state.text[:cut], "stop_string"
                return
            if piece and is_complete(state.text):
                state.reason = "complete"
                return
            if finish:  # [DONE] follows; reading on to it keeps the connection reusable
                state.reason = {"length": "max_tokens", "stop": "eos"}.get(finish, finish)
        if state.reason:
            return  # a finish_reason without [DONE]: complete all the same
        # The body ended without [DONE] or a finish_reason: the answer may be cut anywhere.
        raise self._error("dropped", f"{where} ended the stream before the answer finished "
                                     f"({len(state.text)} chars received)")

    def _error(self, kind: str, message: str) -> BackendError:
        return BackendError(kind, self._redact(message))

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "[redacted]") if self._key else text

    def close(self) -> None:
        """Closes the pooled connections and stops the loop thread."""
        if self._loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result(timeout=5)
        except Exception:  # noqa: BLE001 - closing must not fail the caller
            log.debug("closing the remote pool failed", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


@dataclass(frozen=True)
class _FirstToken:
    """The answer's first token and the engine's most likely first tokens, best first, from its `logprobs`."""

    token: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()


def _first_token(logprobs) -> _FirstToken:
    """From a completion chunk's `logprobs` ({"tokens": [...], "top_logprobs": [{text: logprob}, ...]}, as vLLM and
    llama.cpp's servers send them); an engine that sends none, or another shape, gives none."""
    try:
        tokens, top = logprobs["tokens"], logprobs["top_logprobs"][0]
        ranked = sorted(top.items(), key=lambda item: -float(item[1]))
        return _FirstToken(tuple(tokens[:1]), tuple(text for text, _ in ranked if isinstance(text, str) and text))
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):
        return _FirstToken()


@dataclass
class _StreamState:
    """What one request has received so far; survives retries (which only happen before any byte)."""

    text: str = ""  # starts with the forced tokens' text, if any
    reason: str = ""
    first_token_at: float | None = None
    received_bytes: bool = False
    first: _FirstToken = _FirstToken()


class _Retryable(Exception):
    def __init__(self, kind: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.kind, self.message, self.retry_after = kind, message, retry_after


_END_OF_BODY = object()


async def _read_lines(response, lines: asyncio.Queue) -> None:
    """The stream's lines into `lines`, then _END_OF_BODY, or the exception that ended the reading."""
    try:
        async for line in response.aiter_lines():
            lines.put_nowait(line)
        lines.put_nowait(_END_OF_BODY)
    except Exception as exc:  # noqa: BLE001 - handed to the request that reads the queue, which words it
        lines.put_nowait(exc)


async def _new_event() -> asyncio.Event:
    event = asyncio.Event()  # made on the backend's loop, so that it belongs there
    event.set()
    return event


def _retry_after(response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return min(float(value), 30.0)  # seconds form only; the deadline cuts a long wait anyway
    except ValueError:
        return None


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def _ms(start: float, end: float) -> float:
    return round((end - start) * 1000, 2)
