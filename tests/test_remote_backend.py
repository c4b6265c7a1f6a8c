"""The remote backend against a misbehaving local engine (tests/fake_engine.py): streaming, early cuts that close
the stream, every failure mode as a BackendError kind, safe retries only, keep-alive, and a key never echoed."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from fake_engine import FakeEngine
from ghostls.inference.backend import BackendError, TextRequest
from ghostls.inference.fim import template_for_model_name
from ghostls.inference.remote import RemoteBackend, RemoteConfig

PROMPT = "def add(a, b):\n"


@pytest.fixture
def engine():
    fake = FakeEngine().start()
    yield fake
    fake.stop()


@pytest.fixture
def backend_for():
    made = []

    def make(url: str, **config) -> RemoteBackend:
        backend = RemoteBackend(RemoteConfig(url=url, **{"model": "fake-model", "timeout_ms": 3000, **config}))
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def _request(**extra) -> TextRequest:
    return TextRequest(PROMPT, **{"max_new_tokens": 16, "time_budget_s": 3.0, **extra})


def test_streams_the_answer_and_sends_a_raw_prompt(engine, backend_for):
    backend = backend_for(engine.url)
    result = backend.complete(_request(stop_strings=("<|endoftext|>",)))
    assert result.text == "    return a + b\n"
    assert result.stop_reason == "eos"
    seen = engine.requests[0]
    assert seen.path == "/v1/completions"
    assert seen.body == {"model": "fake-model", "prompt": PROMPT, "max_tokens": 16, "temperature": 0,
                         "stream": True, "stop": ["<|endoftext|>"]}
    assert "authorization" not in seen.headers  # no key configured, none sent
    assert result.timings_ms["prefill"] > 0


def test_base_urls_with_or_without_v1_reach_the_completions_endpoint():
    assert RemoteConfig(url="https://h:8000").endpoint == "https://h:8000/v1/completions"
    assert RemoteConfig(url="https://h/v1/").endpoint == "https://h/v1/completions"
    assert RemoteConfig(url="https://h/x/v1/completions").endpoint == "https://h/x/v1/completions"


def test_is_complete_cuts_the_stream_and_closes_it(engine, backend_for):
    engine.behaviour = "endless"
    backend = backend_for(engine.url)
    result = backend.complete(_request(), is_complete=lambda text: text.count("x") >= 3)
    assert (result.text, result.stop_reason) == (" x x x", "complete")
    assert engine.stream_abandoned.wait(3), "the engine never saw the stream closed"


def test_cancellation_closes_the_stream_promptly(engine, backend_for):
    engine.behaviour = "endless"
    backend = backend_for(engine.url)
    started = time.monotonic()
    result = backend.complete(_request(), cancelled=lambda: time.monotonic() - started > 0.3)
    assert result.stop_reason == "cancelled"
    assert time.monotonic() - started < 1.0
    assert engine.stream_abandoned.wait(3), "the engine never saw the stream closed"
    assert engine.abandoned_at - started < 1.5


def test_cancellation_while_the_engine_hangs_returns_at_once(engine, backend_for):
    engine.behaviour = "hang"
    backend = backend_for(engine.url)
    started = time.monotonic()
    result = backend.complete(_request(), cancelled=lambda: time.monotonic() - started > 0.2)
    assert result.stop_reason == "cancelled"
    assert time.monotonic() - started < 1.0


def test_first_token_alternatives_come_from_the_engines_logprobs_and_a_forced_token_ends_the_prompt(
        engine, backend_for):
    """What the completer's alternatives need from a remote engine: its most likely first tokens (the syntax
    guard's fallback when it rejects the greedy answer), and a branch that starts with one of them."""
    engine.top_logprobs = {" x": -2.5, "    return": -0.2, "    pass": -1.0}
    backend = backend_for(engine.url)
    result = backend.complete(_request(first_choices=3))
    assert engine.requests[-1].body["logprobs"] == 3
    assert result.token_ids == ("    return",) and result.first_choices == ("    return", "    pass", " x")
    branch = backend.complete(_request(forced=("    pass",)))
    assert engine.requests[-1].body["prompt"] == PROMPT + "    pass" and "logprobs" not in engine.requests[-1].body
    assert branch.text == "    pass" + "    return a + b\n"  # the forced token, then what the engine streamed
    plain = backend.complete(_request())  # a request that wants no alternatives asks for no logprobs
    assert "logprobs" not in engine.requests[-1].body
    assert plain.first_choices == () and plain.text == "    return a + b\n"


def test_requests_given_up_on_do_not_pile_up_in_a_queueing_engine(engine, backend_for):
    """A single-slot engine runs the prefill of every request it was sent, listened to or not. Four keystrokes'
    requests given up on before it began them, then one more: only the first of the four reaches the engine (the
    others wait for it to begin, and give up unsent), so the last one waits for one wasted prefill, not four, and
    answers in its time. Were each sent at once, the engine would run five prefills and the last request get nothing."""
    engine.behaviour, engine.prefill_s = "queued", 1.0
    backend = backend_for(engine.url, timeout_ms=5000)
    for _ in range(4):
        started = time.monotonic()
        result = backend.complete(_request(), cancelled=lambda: time.monotonic() - started > 0.15)
        assert result.stop_reason == "cancelled" and time.monotonic() - started < 0.5  # never blocks the editor
    result = backend.complete(_request(time_budget_s=3.0))  # one wasted prefill and its own: 2 s
    assert result.text == "    return a + b\n"
    time.sleep(0.3)  # the engine notices the closed streams as it reaches them
    assert len(engine.requests) == 2 and engine.prefills == 2


@pytest.mark.parametrize("behaviour, kind", [
    ("hang", "timeout"),
    ("slow", "timeout"),
    ("drop", "dropped"),
    ("malformed", "malformed"),
    ("status:401", "unauthorized"),
    ("status:403", "unauthorized"),
    ("status:404", "rejected"),
    ("status:429", "rate_limited"),
    ("status:500", "server_error"),
    ("status:503", "server_error"),
])
def test_each_failure_is_a_named_error_and_the_next_request_works(engine, backend_for, behaviour, kind):
    engine.behaviour = behaviour
    backend = backend_for(engine.url, timeout_ms=1000, max_retries=1)
    started = time.monotonic()
    with pytest.raises(BackendError) as error:
        backend.complete(_request(time_budget_s=1.0))
    assert error.value.kind == kind, str(error.value)
    assert time.monotonic() - started < 2.5  # bounded by the timeout (plus one quick retry), never a hang
    engine.behaviour = "ok"
    assert backend.complete(_request()).text == "    return a + b\n"


def test_unreachable_engine_is_reported_after_retries(backend_for):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = backend_for(f"http://127.0.0.1:{port}", max_retries=2)
    with pytest.raises(BackendError) as error:
        backend.complete(_request())
    assert error.value.kind == "unreachable"
    assert f"127.0.0.1:{port}" in str(error.value)


def test_429_and_503_are_retried_before_any_byte(engine, backend_for):
    engine.script = ["status:429", "status:503"]
    backend = backend_for(engine.url, max_retries=2)
    assert backend.complete(_request()).text == "    return a + b\n"
    assert len(engine.requests) == 3


@pytest.mark.parametrize("behaviour", ["status:500", "status:401", "drop", "malformed"])
def test_unsafe_failures_are_never_retried(engine, backend_for, behaviour):
    engine.script = [behaviour]
    backend = backend_for(engine.url, max_retries=3)
    with pytest.raises(BackendError):
        backend.complete(_request())
    assert len(engine.requests) == 1


def test_connections_are_kept_alive_between_requests(engine, backend_for):
    backend = backend_for(engine.url)
    for _ in range(3):
        backend.complete(_request())
    assert len(engine.requests) == 3
    assert engine.connections == 1


def test_time_budget_returns_what_streamed_so_far(engine, backend_for):
    engine.piece_delay_s = 0.4
    backend = backend_for(engine.url)
    result = backend.complete(_request(time_budget_s=1.0))
    assert result.stop_reason == "time_budget"
    assert result.text.startswith("    return")
    assert result.text != "    return a + b\n"


def test_stop_strings_are_applied_even_if_the_engine_ignores_them(engine, backend_for):
    backend = backend_for(engine.url)
    result = backend.complete(_request(stop_strings=(" +",)))
    assert (result.text, result.stop_reason) == ("    return a", "stop_string")


def test_api_key_from_the_environment_is_sent_and_never_echoed(engine, backend_for, monkeypatch, caplog):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("GHOSTLS_TEST_KEY", secret)
    config = RemoteConfig(url=engine.url, model="m", api_key_env="GHOSTLS_TEST_KEY", api_key="ignored")
    assert secret not in repr(config) and "ignored" not in repr(config)
    backend = backend_for(engine.url, api_key_env="GHOSTLS_TEST_KEY")
    caplog.set_level(logging.DEBUG)
    backend.complete(_request())
    assert engine.requests[-1].headers["authorization"] == f"Bearer {secret}"
    engine.behaviour = "status:401"  # its body echoes the Authorization header back
    with pytest.raises(BackendError) as error:
        backend.complete(_request())
    assert error.value.kind == "unauthorized"
    assert "[redacted]" in str(error.value)
    assert secret not in str(error.value)
    assert secret not in caplog.text


def test_token_estimate_over_counts_real_code(embedded_model_dir):
    """Without a tokenizer the budget uses bytes / 2.25: more tokens than SmolLM2's tokenizer finds in our code."""
    from pathlib import Path

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(embedded_model_dir / "tokenizer.json"))
    estimate = RemoteBackend._token_counter(RemoteConfig(url="http://127.0.0.1:1"))
    exact = RemoteBackend._token_counter(RemoteConfig(url="http://127.0.0.1:1",
                                                      tokenizer=str(embedded_model_dir / "tokenizer.json")))
    for path in sorted(Path(__file__).resolve().parents[1].glob("*/*.py"))[:40]:
        text = path.read_text()[:4000]
        real = len(tokenizer.encode(text, add_special_tokens=False).ids)
        assert exact(text) == real
        assert estimate(text) >= real, path


def test_fim_template_is_guessed_from_the_model_name():
    assert template_for_model_name("Qwen/Qwen2.5-Coder-1.5B").family == "qwen"
    assert template_for_model_name("bigcode/starcoder2-3b").family == "starcoder"
    assert template_for_model_name("deepseek-ai/deepseek-coder-1.3b-base").family == "deepseek"
    assert template_for_model_name("codellama/CodeLlama-7b-hf").family == "codellama"
    assert template_for_model_name("smollm2-135m-instruct").family == "prefix_only"
    assert RemoteConfig(url="http://h", model="Qwen2.5-Coder", fim_template="starcoder").template().family == \
        "starcoder"


def test_a_retry_after_longer_than_the_deadline_is_reported_at_once(engine, backend_for):
    engine.behaviour = "status:429"
    engine.retry_after = 30
    backend = backend_for(engine.url, max_retries=2, timeout_ms=2000)
    started = time.monotonic()
    with pytest.raises(BackendError) as error:
        backend.complete(_request(time_budget_s=2.0))
    assert error.value.kind == "rate_limited"
    assert time.monotonic() - started < 1.0
    assert len(engine.requests) == 1


def test_when_every_start_breaks_the_file_the_head_that_opens_a_block_is_shown(engine, backend_for):
    """The completer's last resort: the greedy answer and each next most likely start all add syntax errors, so
    the greedy answer's lines up to the one that opens a block are shown, rather than nothing."""
    from ghostls.completion.completer import complete
    from ghostls.completion.settings import Settings
    from ghostls.parsers.document import Document

    text = "function f(x) {\n  \n}\n"
    snapshot = Document("file:///t.js", "javascript", 1, text).snapshot()
    engine.pieces = ("if (x > 0) {\n", "    ]] (\n", "  }")
    engine.top_logprobs = {"if": -0.1, "while": -1.5}
    backend = backend_for(engine.url, fim_template="prefix_only")
    result = complete(backend, snapshot, text.index("\n}"), Settings())
    assert result.text == "if (x > 0) {" and "the last one open" in result.reason
    assert len(engine.requests) == 3  # the greedy answer, then the two other starts, all broken
