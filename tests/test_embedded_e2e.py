"""End to end on the embedded default model (SmolLM2-135M, converted for real once per cache):
the `ghostls complete` command, and the server's cancellation paths, each seen to stop the generation itself (the
server's log says how it ended) while every token is slowed enough that an uncancelled one would run for seconds."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

from ghostls.inference.cache import read_manifest
from ghostls.parsers.document import Document
from lsp_status import next_status, record_statuses

pytestmark = pytest.mark.embedded

REPO = Path(__file__).resolve().parent.parent
# The server with every decoded token TOKEN_DELAY_MS slower (tests/fault_server.py): an uncancelled generation runs
# for many seconds, so whether a cancel stopped it shows; at debug level its log says when a generation starts and ends.
TOKEN_DELAY_MS = 200
SLOW_SERVER = [sys.executable, str(Path(__file__).with_name("fault_server.py")), f"token_delay_ms={TOKEN_DELAY_MS}",
               "serve", "--stdio", "--log-level", "debug"]
# A long real file, so that a cold prefill takes seconds on two cores.
LONG_SOURCE = Path(json.__file__).with_name("decoder.py").read_text() * 3


def _error_count(text: str, language: str = "python") -> int:
    tree = Document("file:///t.py", language, 1, text).snapshot().tree
    count = 0
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        count += node.is_error or node.is_missing
        stack.extend(node.children)
    return count


def test_cli_completes_the_sample_with_code_that_parses(embedded_model_dir):
    sample = REPO / "docs" / "examples" / "fib.py"
    run = subprocess.run([sys.executable, "-m", "ghostls.cli.main", "complete", f"{sample}:4:9", "--json",
                          "--model", str(embedded_model_dir)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert answer["text"].strip(), answer
    assert answer["provider"] == "cpu"
    lines = sample.read_text().split("\n")
    lines[3] = lines[3][:8] + answer["text"] + lines[3][8:]
    merged = "\n".join(lines)
    assert _error_count(merged) == 0, merged


def test_the_embedded_model_keeps_the_gguf_blocks_w8a8_does_not_take_exactly(embedded_model_dir):
    import onnx

    # SmolLM2's GGUF holds Q4_1 layers and a Q8_0 token embedding (the tied LM head). W8A8 takes the four
    # projections after a norm or attention in each of the 30 layers; the down projections' Q4_1 blocks and the
    # Q8_0 head are found again bit for bit (inference/converter/requantize.py checks each block), none
    # re-quantized.
    manifest = read_manifest(embedded_model_dir)
    assert manifest.precision == "w8a8"
    assert manifest.weights == {"w8a8": 120, "q4_1 exact": 30, "q8_0 exact": 1}
    # Attention is ghostls's own op over an int8 cache (inference/converter/ops/kv_attention.py) on any x86-64 CPU
    # with AVX2; the W8A8 MatMuls are its Int8MatMul (q/k/v, o, gate|up); each MLP's activation and down
    # projection offsets are one GatedSilu, the offsets applied by the SkipRmsNorm after the down projection.
    # Eight nodes a layer: two norms, q/k/v, attention, o, gate|up, GatedSilu, down.
    assert manifest.kv_cache == "int8"
    graph = onnx.load(str(embedded_model_dir / "model.onnx"), load_external_data=False).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("Int8KvAttention") == 30 and ops.count("Int8MatMul") == 90 and ops.count("GatedSilu") == 30
    assert all(len(node.input) == 2 for node in graph.node if node.op_type == "GatedSilu")
    assert ops.count("SkipRmsNorm") == 30 and ops.count("SkipSimplifiedLayerNormalization") == 30
    assert not {"Sigmoid", "Split", "QuantizeLinear", "ReduceMax", "Mul", "Add", "DynamicQuantizeMatMul",
                "MatMulIntegerToFloat"} & set(ops)


@pytest_lsp.fixture(config=ClientServerConfig(server_command=SLOW_SERVER))
async def client(lsp_client: LanguageClient, embedded_model_dir):
    record_statuses(lsp_client)
    options = {"model": str(embedded_model_dir), "loadWaitMs": 60_000, "debounceMs": 0,
               "maxNewTokens": 200, "maxLines": 200, "timeBudgetMs": 60_000}
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities("visual-studio-code"), initialization_options=options))
    status = await next_status(lsp_client, "ready", "error", timeout=120)
    assert status.state == "ready", status.detail
    yield
    await lsp_client.shutdown_session()


class ServerLog:
    """The server's stderr (pytest-lsp leaves it on the test's own, which capfd holds), read as it grows."""

    def __init__(self, capfd):
        self._capfd = capfd
        self.text = ""

    async def wait_for(self, pattern: str, timeout: float = 90) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            self.text += self._capfd.readouterr().err
            if match := re.search(pattern, self.text):
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in the server log within {timeout}s:\n{self.text[-3000:]}")
            await asyncio.sleep(0.05)


def _params(uri: str, line: int, character: int) -> types.InlineCompletionParams:
    return types.InlineCompletionParams(
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
        text_document=types.TextDocumentIdentifier(uri), position=types.Position(line, character))


def _open_long(client: LanguageClient, uri: str) -> int:
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        types.TextDocumentItem(uri=uri, language_id="python", version=1, text=LONG_SOURCE)))
    return LONG_SOURCE.count("\n")


def _answer_quickly_from_now_on(client: LanguageClient) -> None:
    """Requests after this one decode 4 tokens at most; a generation already running keeps its own settings."""
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"ghostls": {"maxNewTokens": 4}}))


async def test_cancel_request_gives_request_cancelled_and_stops_the_generation(client: LanguageClient, capfd):
    log = ServerLog(capfd)
    uri = "file:///work/long.py"
    last = _open_long(client, uri)
    # pytest-lsp's send_request_async is a coroutine: schedule it now, so it is sent before the cancel.
    pending = asyncio.ensure_future(client.protocol.send_request_async(
        types.TEXT_DOCUMENT_INLINE_COMPLETION, _params(uri, last, 0), msg_id="slow-1"))
    await log.wait_for(r"generating for long\.py v1")  # on the engine: prefilling or decoding
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="slow-1"))
    with pytest.raises(JsonRpcException) as error:
        await pending
    assert error.value.code == -32800
    # The engine stopped because of the cancel, within one token or one prefill chunk of it (a chunk takes seconds
    # on a loaded CI machine); uncancelled, this generation would run on for up to 200 tokens of TOKEN_DELAY_MS each.
    stopped = await log.wait_for(r"cancelled completion long\.py v1: generation stopped \((.*?)\) (\d+) ms after")
    assert stopped.group(1) == "cancelled", stopped.group(0)
    assert int(stopped.group(2)) < 10_000, stopped.group(0)
    # The engine is free: the next request runs the model and is answered.
    _answer_quickly_from_now_on(client)
    answer = await client.text_document_inline_completion_async(_params(uri, 1, 0))
    explained = await client.protocol.send_request_async("ghostls/explain", None)
    assert explained.last.prompt_tokens > 0 and "(model stopped: " in explained.last.reason, explained.last
    assert len(answer.items) == explained.last.candidates


async def test_newer_request_supersedes_older_one(client: LanguageClient, capfd):
    log = ServerLog(capfd)
    uri = "file:///work/supersede.py"
    last = _open_long(client, uri)
    older = asyncio.ensure_future(client.text_document_inline_completion_async(_params(uri, last, 0)))
    await log.wait_for(r"generating for supersede\.py v1")
    _answer_quickly_from_now_on(client)
    newer = await client.text_document_inline_completion_async(_params(uri, last // 2, 0))
    explained = await client.protocol.send_request_async("ghostls/explain", None)
    assert "(model stopped: " in explained.last.reason, explained.last  # the newer one ran to its own end
    assert len(newer.items) == explained.last.candidates
    # The older one gave way: its generation stopped as cancelled (the first of the two to end), and it answers
    # with nothing rather than text for a position the user has left.
    ended = await log.wait_for(r"generated for supersede\.py v1: (.*)")
    assert ended.group(1) == "cancelled", ended.group(0)
    assert len((await older).items) == 0


async def test_change_during_generation_is_content_modified(client: LanguageClient, capfd):
    log = ServerLog(capfd)
    uri = "file:///work/changing.py"
    last = _open_long(client, uri)
    pending = asyncio.ensure_future(client.text_document_inline_completion_async(_params(uri, last, 0)))
    await log.wait_for(r"generating for changing\.py v1")
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
        content_changes=[types.TextDocumentContentChangePartial(
            range=types.Range(types.Position(0, 0), types.Position(0, 0)), text="# edited\n")]))
    with pytest.raises(JsonRpcException) as error:
        await pending
    assert error.value.code == -32801
    # The edit stopped the generation at once rather than letting it run to its end for a stale answer.
    ended = await log.wait_for(r"generated for changing\.py v1: (.*)")
    assert ended.group(1) == "cancelled", ended.group(0)
