"""End to end with a remote engine: a real LSP client -> `ghostls serve --stdio` -> an OpenAI-compatible engine.

The engines are a real llama.cpp server (llama-cpp-python, the embedded SmolLM2 GGUF, started by the test on
127.0.0.1) and the misbehaving fake of tests/fake_engine.py, one per failure mode. Every failure must reach the
client as an empty completion plus a `ghostls/status` error naming it, and the next request must work.
"""

from __future__ import annotations

import asyncio
import sys
import time

import pytest
import pytest_lsp
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

from fake_engine import FakeEngine
from ghostls.cli.llama_server import running_llama_server
from lsp_status import next_status, record_statuses

SERVER = [sys.executable, "-m", "ghostls.cli.main", "serve", "--stdio", "--log-level", "debug"]
SECRET = "sk-e2e-secret-0123456789"

FIB = '''def fibonacci(n):
    """Return the n-th Fibonacci number."""
    if n < 2:
        return n
    return '''

ADD = "def add(a, b):\n    "


@pytest.fixture(scope="module")
def llama_url():
    """A real llama.cpp server with the embedded GGUF, once for this module (about 10 s to start here)."""
    from ghostls.inference.cache import ModelError
    from ghostls.inference.embedded import embedded_gguf_path

    try:
        gguf = embedded_gguf_path()
    except ModelError as e:
        pytest.skip(str(e))
    with running_llama_server(gguf, n_ctx=1024) as url:
        yield url


@pytest.fixture
def fake():
    engine = FakeEngine(pieces=("return", " a", " +", " b", "\n")).start()
    yield engine
    engine.stop()


def _remote(url: str, **backend) -> dict:
    return {"kind": "remote", "url": url, "model": "smollm2-135m-instruct", **backend}


async def _start(client: LanguageClient, options: dict) -> None:
    params = types.InitializeParams(capabilities=client_capabilities("visual-studio-code"),
                                    initialization_options={"debounceMs": 0, "loadWaitMs": 120_000, **options})
    client.initialize_result = await client.initialize_session(params)


def _open(client: LanguageClient, uri: str, text: str, language: str = "python") -> None:
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        types.TextDocumentItem(uri=uri, language_id=language, version=1, text=text)))


async def _inline(client: LanguageClient, uri: str, line: int, character: int):
    return await client.text_document_inline_completion_async(types.InlineCompletionParams(
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
        text_document=types.TextDocumentIdentifier(uri), position=types.Position(line, character)))


@pytest_lsp.fixture(config=ClientServerConfig(server_command=SERVER))
async def client(lsp_client: LanguageClient):
    record_statuses(lsp_client)
    yield
    await lsp_client.shutdown_session()


async def test_completion_from_a_real_llama_cpp_server(client: LanguageClient, llama_url):
    await _start(client, {"backend": _remote(llama_url, timeoutMs=60_000), "maxNewTokens": 24,
                          "maxPromptTokens": 256, "timeBudgetMs": 60_000})
    uri = "file:///work/fib.py"
    _open(client, uri, FIB)
    result = await _inline(client, uri, 4, 11)
    explained = await client.protocol.send_request_async("ghostls/explain", None)
    assert explained.model.provider == "remote"
    assert explained.model.state == "ready"
    assert explained.last.error == "", explained.last.reason
    assert explained.last.prompt_tokens > 10
    assert result.items, explained.last.reason
    text = result.items[0].insert_text
    assert result.items[0].range.start == types.Position(4, 11)
    # The engine's raw answer runs on past the line (`...(n - 2)\n```...`): ghostls's post-processor saw the
    # line complete, closed the stream there and returned just the rest of the statement.
    assert text == "fibonacci(n - 1) + fibonacci(n - 2)", repr(text)
    assert explained.last.reason.startswith("single line (model stopped: ")  # the post-processor, then the model


@pytest.mark.parametrize("behaviour, kind", [
    ("hang", "timeout"),
    ("slow", "timeout"),
    ("drop", "dropped"),
    ("malformed", "malformed"),
    ("status:401", "unauthorized"),
    ("status:429", "rate_limited"),
    ("status:500", "server_error"),
])
async def test_engine_failure_is_an_empty_completion_and_a_status(client: LanguageClient, fake, behaviour, kind,
                                                                 capfd):
    fake.behaviour = behaviour
    await _start(client, {"backend": _remote(fake.url, timeoutMs=1500, maxRetries=0, apiKey=SECRET)})
    uri = "file:///work/add.py"
    _open(client, uri, ADD)
    started = time.monotonic()
    result = await _inline(client, uri, 1, 4)
    assert not result.items
    assert time.monotonic() - started < 5
    status = await next_status(client, "error")
    assert status.error == kind
    assert status.provider == "remote"
    assert any(kind in m.message for m in client.messages), [m.message for m in client.messages]

    fake.behaviour = "ok"
    result = await _inline(client, uri, 1, 4)
    assert [item.insert_text for item in result.items] == ["return a + b"]
    recovered = await next_status(client, "ready")
    assert recovered.error == ""
    said = " ".join([m.message for m in client.messages] + [m.message for m in client.log_messages])
    assert SECRET not in said
    assert fake.requests[-1].headers["authorization"] == f"Bearer {SECRET}"
    server_log = capfd.readouterr().err  # the server's stderr, at debug level: every JSON-RPC message
    assert f"remote engine {kind}" in server_log
    assert SECRET not in server_log


async def test_a_newer_edit_closes_the_stream_to_the_engine(client: LanguageClient, fake):
    fake.behaviour = "endless"
    await _start(client, {"backend": _remote(fake.url, timeoutMs=20_000), "timeBudgetMs": 20_000})
    uri = "file:///work/add.py"
    _open(client, uri, ADD)
    pending = asyncio.ensure_future(_inline(client, uri, 1, 4))
    while not fake.requests:
        await asyncio.sleep(0.05)
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
        content_changes=[types.TextDocumentContentChangePartial(
            range=types.Range(types.Position(1, 4), types.Position(1, 4)), text="r")]))
    changed_at = time.monotonic()
    assert await asyncio.get_running_loop().run_in_executor(None, fake.stream_abandoned.wait, 5)
    assert fake.abandoned_at - changed_at < 2
    # The answer computed for version 1 is never placed in version 2: the request ends as ContentModified.
    with pytest.raises(JsonRpcException) as error:
        await pending
    assert error.value.code == -32801 and "changed while the completion was computed" in str(error.value)
    fake.behaviour = "ok"
    result = await _inline(client, uri, 1, 5)
    # The next request works, and asks the engine about the edited text.
    assert len(fake.requests) == 2
    assert "def add(a, b):\n    r" in fake.requests[1].body["prompt"]
    assert result.items and result.items[0].range.start == types.Position(1, 5), result


async def test_local_stays_default_and_only_the_configured_language_goes_remote(client: LanguageClient, fake,
                                                                              tiny_model):
    await _start(client, {"model": str(tiny_model("qwen")), "maxNewTokens": 4,
                          "languageBackends": {"python": _remote(fake.url)}})
    _open(client, "file:///work/notes.txt", "Dear diary,\ntoday I ", language="plaintext")
    local = await _inline(client, "file:///work/notes.txt", 1, 8)
    explained = await client.protocol.send_request_async("ghostls/explain", None)
    assert explained.model.provider == "cpu" and local.items, explained.last  # the local model answered
    assert fake.requests == []  # and nothing left the machine
    _open(client, "file:///work/add.py", ADD)
    result = await _inline(client, "file:///work/add.py", 1, 4)
    assert [item.insert_text for item in result.items] == ["return a + b"]
    assert len(fake.requests) == 1
    assert "def add(a, b):" in fake.requests[0].body["prompt"]


def test_the_launcher_turns_extra_buffer_types_off():
    """The llama.cpp server these tests start (and ghostls bench's llama.cpp worker) must load its model without
    weight repacking (see ghostls.cli.llama_server)."""
    import llama_cpp

    from ghostls.cli.bench import without_llama_cpp_extra_buffers
    from ghostls.inference.embedded import embedded_gguf_path

    original = llama_cpp.llama_cpp.llama_model_default_params
    try:
        without_llama_cpp_extra_buffers()
        model = llama_cpp.Llama(model_path=str(embedded_gguf_path()), n_ctx=64, verbose=False)
        assert model.model_params.use_extra_bufts is False
        assert original().use_extra_bufts is True  # llama.cpp's own default, which the launcher overrides
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = original
