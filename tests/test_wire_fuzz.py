"""Wire fuzzing: the real `ghostls serve --stdio` process fed random bytes, wrong Content-Lengths, invalid JSON,
unknown methods and wrongly typed params. Each request gets exactly one answer with the JSON-RPC error the spec
names, and the server keeps serving: a valid request afterwards succeeds.

The budget is fixed in CI; GHOSTLS_FUZZ=long runs many more examples (see tests/fuzzing.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import fuzz_settings
from ghostls.completion.settings import Settings
from lsp_wire import WirePeer

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = -32700, -32600, -32601, -32602, -32603
URI = "file:///work/fuzz.py"


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wire")
    # No model: these tests are about the protocol, and an absent model keeps the server light.
    server = WirePeer(folder / "server.log")
    server.initialize({"model": str(folder / "no-model")})
    server.open(URI, "def f(x):\n    return x\n")
    yield server
    assert server.close() == 0, server.log()[-2000:]


def _still_serving(peer: WirePeer) -> None:
    answer = peer.request("ghostls/explain", None, timeout=20)
    assert "result" in answer and answer["result"]["model"]["state"] == "error", answer
    assert peer.alive()


def _crashes(messages: list[dict]) -> list[str]:
    """What pygls tells the user when a handler raised: for a notification, the only trace a crash leaves."""
    return [m["params"]["message"] for m in messages if m.get("method") in ("window/showMessage", "window/logMessage")
            and m["params"]["message"].startswith("Error in server")]


def _error_code(peer: WirePeer, msg_id, timeout: float = 20) -> int:
    return peer.response(msg_id, timeout)["error"]["code"]


def _framed(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


def test_invalid_json_is_a_parse_error(peer):
    before = len(peer.seen)
    peer.send_raw(_framed(b'{"jsonrpc": "2.0", "id": 1, "method": "ghostls/explain"'))
    error = peer.wait_for(lambda m: m.get("error", {}).get("code") == PARSE_ERROR and m in peer.seen[before:])
    assert error["id"] is None
    _still_serving(peer)


@pytest.mark.parametrize(("body", "answered_id"), [
    (b"[1, 2, 3]", None),                                                    # a batch: LSP has none
    (b"42", None),
    (b'{"jsonrpc": "2.0", "id": 7001}', 7001),                              # neither method nor result
    (b'{"jsonrpc": "2.0", "id": 7002, "method": 12}', 7002),                # method is not a string
    (b'{"jsonrpc": "1.0", "id": 7003, "method": "ghostls/explain"}', 7003),  # wrong protocol version
    (b'{"jsonrpc": "2.0", "id": {"x": 1}, "method": "ghostls/explain"}', None),  # an id must be a number or string
])
def test_invalid_requests(peer, body, answered_id):
    before = len(peer.seen)
    peer.send_raw(_framed(body))
    error = peer.wait_for(lambda m: m.get("error", {}).get("code") == INVALID_REQUEST and m in peer.seen[before:])
    assert error["id"] == answered_id
    _still_serving(peer)


def test_unknown_method_request_and_notification(peer):
    assert _error_code(peer, peer.request_async("ghostls/noSuchThing", {})) == METHOD_NOT_FOUND
    before = len(peer.seen)
    peer.notify("ghostls/noSuchNotification", {"x": 1})  # notifications are never answered
    _still_serving(peer)
    assert all("error" not in m for m in peer.seen[before:])


@pytest.mark.parametrize("params", [
    {"textDocument": {"uri": URI}, "position": {"line": "three", "character": 0}, "context": {"triggerKind": 1}},
    {"textDocument": {"uri": URI}, "position": {"line": -1, "character": 0}, "context": {"triggerKind": 1}},
    {"textDocument": URI, "position": [0, 0]},
    "not an object",
])
def test_wrongly_typed_params_are_invalid_params(peer, params):
    assert _error_code(peer, peer.request_async("textDocument/inlineCompletion", params)) == INVALID_PARAMS
    _still_serving(peer)


def test_wrongly_typed_notification_is_dropped_and_the_document_kept(peer):
    peer.notify("textDocument/didChange", {"textDocument": {"uri": URI, "version": "two"}, "contentChanges": 5})
    _still_serving(peer)
    # The document still answers positions of its last good version.
    assert _error_code(peer, peer.inline_async(URI, 50, 0)) == INVALID_PARAMS


# Found by the fuzzing below: pygls's own document store raised on these before any handler of ghostls's ran.
@pytest.mark.parametrize(("method", "params"), [
    ("textDocument/didOpen", {"textDocument": {"uri": "file://[bad/x.py", "languageId": "python", "version": 1,
                                               "text": "x = 1\n"}}),
    ("textDocument/didChange", {"textDocument": {"uri": "file:///never/opened.py", "version": 2},
                                "contentChanges": [{"text": "x"}]}),
    ("workspace/didChangeWatchedFiles", {"changes": [{"uri": "file://[bad/y.py", "type": 2}]}),
])
def test_notifications_the_document_store_cannot_take_are_dropped_quietly(peer, method, params):
    before = len(peer.seen)
    peer.notify(method, params)
    _still_serving(peer)
    assert not _crashes(peer.seen[before:])


def test_a_document_uri_that_is_no_uri_is_invalid_params(peer):
    answer = peer.request("textDocument/inlineCompletion", {"textDocument": {"uri": "file://[bad/x.py"},
                                                            "position": {"line": 0, "character": 0},
                                                            "context": {"triggerKind": 1}})
    assert answer["error"]["code"] == INVALID_PARAMS and "is not a URI" in answer["error"]["message"], answer


def test_content_length_too_short_then_resync(peer):
    body = json.dumps({"jsonrpc": "2.0", "id": 7101, "method": "ghostls/explain"}).encode()
    before = len(peer.seen)
    # Cut the body in half: the rest arrives as junk in front of the next header and must be skipped.
    peer.send_raw(b"Content-Length: %d\r\n\r\n%s" % (len(body) // 2, body))
    peer.wait_for(lambda m: m.get("error", {}).get("code") == PARSE_ERROR and m in peer.seen[before:])
    _still_serving(peer)


def test_content_length_too_long_then_resync(peer):
    body = json.dumps({"jsonrpc": "2.0", "id": 7102, "method": "ghostls/explain"}).encode()
    before = len(peer.seen)
    peer.send_raw(b"Content-Length: %d\r\n\r\n%s" % (len(body) + 40, body))
    # The server reads 40 bytes of the next message into the broken one, then resynchronises on the header after.
    peer.notify("ghostls/padding", {"pad": "x" * 100})
    peer.wait_for(lambda m: m.get("error", {}).get("code") == PARSE_ERROR and m in peer.seen[before:])
    _still_serving(peer)


def test_oversized_content_length_is_refused_before_reading(tmp_path):
    server = WirePeer(tmp_path / "server.log")
    try:
        server.send_raw(b"Content-Length: 999999999999\r\n\r\n")
        error = server.wait_for(lambda m: "error" in m, timeout=20)
        assert error["error"]["code"] == INVALID_REQUEST and "limit" in error["error"]["message"]
        status = open(f"/proc/{server.proc.pid}/status").read()
        rss_kb = int(status.split("VmRSS:")[1].split()[0])
        assert server.alive() and rss_kb < 500_000  # the claimed size was never allocated
    finally:
        server.proc.kill()
        server.proc.wait()
        server.close()


_ids = itertools.count(20_000)
_json = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.text(max_size=20),
                     lambda children: st.lists(children, max_size=4)
                     | st.dictionaries(st.text(max_size=12), children, max_size=4), max_leaves=12)
_METHODS = ["textDocument/inlineCompletion", "textDocument/completion", "ghostls/explain", "textDocument/didOpen",
            "textDocument/didChange", "textDocument/didClose", "$/cancelRequest", "textDocument/hover",
            "workspace/executeCommand", "ghostls/nothing", ""]


@fuzz_settings(ci=200, long=5000)
@given(junk=st.binary(max_size=300), method=st.sampled_from(_METHODS), params=_json, is_request=st.booleans())
def test_fuzzed_traffic_gets_one_right_answer_each(peer, junk, method, params, is_request):
    """Random bytes, then a random message: a request gets exactly one answer (a result or one of the JSON-RPC
    errors), a notification none; afterwards a valid request succeeds."""
    # Junk never forms a header of its own here; the server must skip it and find the next real header.
    peer.send_raw(junk.replace(b"\n", b" ").replace(b"\r", b" ").lower().replace(b"content-length", b"x") + b"\r\n")
    message = {"jsonrpc": "2.0", "method": method, "params": params}
    msg_id = next(_ids)
    if is_request:
        message["id"] = msg_id
    before = len(peer.seen)
    peer.send(message)
    _still_serving(peer)
    assert not _crashes(peer.seen[before:]), (method, params)
    answers = peer.responses_to(msg_id)
    if is_request:
        assert len(answers) == 1, answers
        code = answers[0].get("error", {}).get("code")
        assert code in (None, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS), answers
    else:
        assert answers == []


# Well-formed messages with hostile values: every field has the type LSP names, so each reaches its handler.
_small = st.integers(0, 8)
_position = st.fixed_dictionaries({"line": _small, "character": st.integers(0, 40)})
_doc_text = st.text(max_size=80) | st.sampled_from(
    ["", "\r\n\r", "def f(x):\n    return x\n", "\ud83d\ude00\u00e9\n\t\u2028x", "\ud800 lone", "\x00\x1b[0m"])
# Never URI itself: the module's other tests rely on its text.
_uri = st.text(max_size=20) | st.sampled_from([
    "file:///work/b.py", "file:///work/b%20c.py", "file:///work/b c.py", "untitled:Untitled-1", "file://[bad/x.py",
    "file:///%ZZ%00.py", "file:///work/.env", "", "file:", "git:/x?y#z"])
_language = st.text(max_size=8) | st.sampled_from(["python", "rust", "plaintext", "", "klingon", "c++",
                                                   "javascriptreact"])
# Settings that change no model (a model change would start a load), set to any value, valid or not.
_FUZZED_SETTINGS = ("enable", "disabled_languages", "max_prompt_tokens", "max_new_tokens", "max_lines",
                    "time_budget_ms", "debounce_ms", "speculate", "kv_cache_mb", "fim_template", "skip_rules",
                    "secret_patterns", "context_tokens", "workspace_context", "log_level")
_DEFAULTS = {key: value for key, value in dataclasses.asdict(Settings()).items() if key in _FUZZED_SETTINGS}


@st.composite
def _lsp_message(draw):
    uri = draw(_uri)
    kind = draw(st.sampled_from(["open", "change", "close", "save", "watched", "inline", "completion", "explain",
                                 "configure"]))
    if kind == "open":
        return "textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": draw(_language),
                                                         "version": draw(_small), "text": draw(_doc_text)}}
    if kind == "change":
        change = {"text": draw(_doc_text)}
        if draw(st.booleans()):
            change["range"] = {"start": draw(_position), "end": draw(_position)}
        return "textDocument/didChange", {"textDocument": {"uri": uri, "version": draw(_small)},
                                          "contentChanges": [change]}
    if kind in ("close", "save"):
        return f"textDocument/did{kind.capitalize()}", {"textDocument": {"uri": uri}}
    if kind == "watched":
        return "workspace/didChangeWatchedFiles", {"changes": [{"uri": uri, "type": draw(st.sampled_from([1, 2, 3]))}]}
    if kind == "inline":
        return "textDocument/inlineCompletion", {"textDocument": {"uri": uri}, "position": draw(_position),
                                                 "context": {"triggerKind": draw(st.sampled_from([1, 2]))}}
    if kind == "completion":
        params = {"textDocument": {"uri": uri}, "position": draw(_position)}
        if draw(st.booleans()):
            params["context"] = {"triggerKind": draw(st.sampled_from([1, 2, 3]))}
        return "textDocument/completion", params
    if kind == "explain":
        return "ghostls/explain", draw(st.none() | st.fixed_dictionaries({"includePrompt": _json}) | _json)
    setting = draw(st.sampled_from(_FUZZED_SETTINGS))
    return "workspace/didChangeConfiguration", {"settings": {"ghostls": {setting: draw(_json)}}}


@fuzz_settings(ci=150, long=3000)
@given(messages=st.lists(_lsp_message(), min_size=1, max_size=6))
def test_fuzzed_documents_and_positions_are_answered_never_crashed_on(peer, messages):
    """Documents, edits, positions and settings of the right types but hostile values (odd URIs, lone surrogates,
    positions past the end, changes to closed documents, invalid settings): each request is answered with a result
    or invalid params (a position outside the document, a document not open), never an internal error, and no
    notification crashes its handler."""
    sent, before = [], len(peer.seen)
    for method, params in messages:
        if method.startswith(("textDocument/did", "workspace/")):
            peer.notify(method, params)
        else:
            sent.append((peer.request_async(method, params), method, params))
    for msg_id, method, params in sent:
        answer = peer.response(msg_id, timeout=20)
        assert answer.get("error", {}).get("code") in (None, INVALID_PARAMS), (method, params, answer)
    _still_serving(peer)
    assert not _crashes(peer.seen[before:]), messages
    # Each example starts from the same state: only URI open, the default settings.
    for uri in {params["textDocument"]["uri"] for method, params in messages if method == "textDocument/didOpen"}:
        peer.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    peer.notify("workspace/didChangeConfiguration", {"settings": {"ghostls": _DEFAULTS}})
