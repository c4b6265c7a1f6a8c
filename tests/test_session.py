"""The completion core on its own: one DocumentSession per open document, its request's CancelToken, and what a
CompletionResult carries back into the session (real tree-sitter parses; the embedded model's real ONNX session
where a completion runs). And the core stays free of LSP."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ghostls.completion import (CancelToken, DocumentSessions, SessionSnapshot, Settings, ShownCompletion, accepted,
                                complete)
from ghostls.inference.backend import LocalBackend
from ghostls.inference.engine import Engine
from ghostls.inference.fim import PREFIX_ONLY, TEMPLATES
from ghostls.parsers.document import Document

SOURCE = "import os\nimport sys\n\n\n" + "".join(f"def helper_{i}(value):\n    return value * {i} + {i * 7}\n\n\n" for i in range(40))
SOURCE += "def main(values):\n    total = helper_3(values)\n    return "
SETTINGS = Settings(max_new_tokens=16, max_prompt_tokens=400, time_budget_ms=60_000, speculate=False)


def _open(sessions: DocumentSessions, name: str, text: str = SOURCE):
    return sessions.open(Document(f"file:///{name}.py", "python", 1, text))


def test_the_core_imports_no_lsp_and_not_the_server():
    code = ("import json, sys, ghostls.completion; print(json.dumps(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('pygls', 'lsprotocol') or m.startswith('ghostls.server'))))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(found.stdout) == []


def test_a_new_request_cancels_the_one_it_replaces():
    sessions = DocumentSessions()
    session = _open(sessions, "a")
    first = session.start_request()
    second = session.start_request()
    assert first.cancelled() and first.reason == "superseded by a newer request"
    assert not second.cancelled() and session.token is second
    session.end_request(first)  # the older request ending late leaves the newer one in place
    assert session.token is second
    session.end_request(second)
    assert session.token is None


def test_a_live_request_elsewhere_is_what_contention_means():
    sessions = DocumentSessions()
    mine = _open(sessions, "mine").start_request()
    other = _open(sessions, "other")
    assert not mine.others_waiting()
    theirs = other.start_request()
    assert mine.others_waiting() and mine.contended() and not theirs.cancelled()
    other.end_request(theirs)
    # Nobody waits now, but the engine counts as shared for a while (CONTENTION_HOLD_S).
    assert not mine.others_waiting() and mine.contended()
    assert not CancelToken().others_waiting() and not CancelToken().contended()  # a request with no documents


def test_closing_a_document_drops_all_its_state_at_once():
    sessions = DocumentSessions()
    session = _open(sessions, "closing")
    kept = _open(sessions, "kept")
    session.anchor, session.held = 120, (3, None)
    session.show(ShownCompletion(SOURCE, len(SOURCE), "total", multiline=False))
    token = session.start_request()
    kept_token = kept.start_request()

    assert sessions.close(session.uri) is session
    assert token.cancelled() and token.reason == "document closed"
    assert (session.anchor, session.held, session.shown, session.token) == (None, None, [], None)
    assert sessions.get(session.uri) is None and list(sessions) == [kept]
    assert not kept_token.cancelled() and not kept_token.others_waiting()  # the closed one no longer waits
    reopened = _open(sessions, "closing")
    assert reopened is not session and reopened.snapshot() == SessionSnapshot(session.uri)


def test_typing_through_a_shown_completion_and_its_speculated_successor():
    sessions = DocumentSessions()
    session = _open(sessions, "typing")
    shown = ShownCompletion(SOURCE, len(SOURCE), "total + 1", multiline=False)
    session.show(shown)
    after_text, after_offset = accepted(shown)
    after = ShownCompletion(after_text, after_offset, "\n", multiline=True)
    session.speculated(after, ShownCompletion(SOURCE, 0, "stale", multiline=False))  # not the one on screen
    assert session.shown == [shown]
    session.speculated(after, shown)
    assert session.remainder(SOURCE + "tot", len(SOURCE) + 3) == ("al + 1", shown)
    assert session.remainder(after_text, after_offset) == ("\n", after)
    assert session.remainder(SOURCE + "x", len(SOURCE) + 1) is None


@pytest.fixture(scope="module")
def backend(embedded_model_dir):
    return LocalBackend(Engine(embedded_model_dir, provider="cpu"), TEMPLATES[PREFIX_ONLY])


@pytest.mark.embedded
def test_the_result_carries_the_window_back_and_the_next_request_reuses_its_cache(backend):
    sessions = DocumentSessions()
    session = _open(sessions, "roundtrip")
    snapshot = session.document.snapshot()
    token = session.start_request()
    first = complete(backend, snapshot, len(SOURCE), SETTINGS, session.snapshot(), token)
    session.end_request(token)
    assert first.prefix_start is not None and first.prefix_start > 0  # the window misses the top of the file
    assert first.text and first.shown == ShownCompletion(SOURCE, len(SOURCE), first.text, first.multiline)

    session.keep_window(first)
    session.show(first.shown)
    assert session.anchor == first.prefix_start and session.shown == [first.shown]
    again = complete(backend, snapshot, len(SOURCE), SETTINGS, session.snapshot(), session.start_request())
    assert again.prefix_start == first.prefix_start and again.prompt == first.prompt
    assert again.reused_tokens >= again.prompt_tokens - 1  # the document's KV cache served the whole prompt
    assert session.cache_key in backend.engine.cache_keys()


@pytest.mark.embedded
def test_a_superseded_request_stops_in_the_decode_loop(backend):
    sessions = DocumentSessions()
    session = _open(sessions, "superseded")
    stale = session.start_request()
    session.start_request()
    result = complete(backend, session.document.snapshot(), len(SOURCE), SETTINGS, session.snapshot(), stale)
    assert result.reason == "cancelled" and result.text == "" and result.shown is None
    assert result.prefix_start is not None  # the window is still reported, for the next request's anchor


@pytest.mark.embedded
@pytest.mark.parametrize("others_waiting", [False, True])
def test_one_prompt_is_built_per_request_without_an_anchor(backend, monkeypatch, others_waiting):
    """The first request in a document has no window to keep: under contention its small window is the only one
    built (the full one would be thrown away), and the local context's refit happens inside that one build."""
    import ghostls.completion.completer as completer

    built = []

    def counted(*args, **kwargs):
        built.append(kwargs["budget"])
        return real(*args, **kwargs)

    real = completer.build_prompt
    monkeypatch.setattr(completer, "build_prompt", counted)
    sessions = DocumentSessions()
    session = _open(sessions, "once")
    token = session.start_request()
    if others_waiting:
        _open(sessions, "waiting").start_request()
    result = complete(backend, session.document.snapshot(), len(SOURCE), SETTINGS, session.snapshot(), token)
    assert len(built) == 1 and result.context["busy"] is others_waiting
    assert built[0] == (completer.busy_budget(400) if others_waiting else 400)
    assert result.context["localLines"] > 0  # the window missed the top of the file: headers came back
