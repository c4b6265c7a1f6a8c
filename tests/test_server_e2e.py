"""End to end: the real `ghostls serve --stdio` process, driven by a real LSP client (pytest-lsp),
on a tiny converted model. Every test ends with a clean shutdown; the harness fails otherwise."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

from lsp_status import next_status, record_statuses

SERVER = [sys.executable, "-m", "ghostls.cli.main", "serve", "--stdio", "--log-level", "debug"]

PY_SOURCE = '''import os


def read_config(path):
    """Read a config file."""
    with open(path) as handle:
        return handle.read()


def main():
    
'''


def _options(model_dir, **extra) -> dict:
    return {"model": str(model_dir), "loadWaitMs": 120_000, "debounceMs": 0, "maxNewTokens": 12,
            "timeBudgetMs": 20_000, **extra}


@pytest_lsp.fixture(config=ClientServerConfig(server_command=SERVER))
async def client(lsp_client: LanguageClient, tiny_model):
    params = types.InitializeParams(capabilities=client_capabilities("visual-studio-code"),
                                    initialization_options=_options(tiny_model("qwen")))
    lsp_client.initialize_result = await lsp_client.initialize_session(params)
    yield
    await lsp_client.shutdown_session()


def _open(client: LanguageClient, uri: str, text: str, language: str = "python", version: int = 1) -> None:
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        types.TextDocumentItem(uri=uri, language_id=language, version=version, text=text)))


async def _inline(client: LanguageClient, uri: str, line: int, character: int, invoked: bool = True):
    kind = types.InlineCompletionTriggerKind.Invoked if invoked else types.InlineCompletionTriggerKind.Automatic
    return await client.text_document_inline_completion_async(types.InlineCompletionParams(
        context=types.InlineCompletionContext(trigger_kind=kind),
        text_document=types.TextDocumentIdentifier(uri), position=types.Position(line, character)))


async def _explain(client: LanguageClient):
    return await client.protocol.send_request_async("ghostls/explain", None)


async def test_advertises_inline_completion_and_fallback(client: LanguageClient):
    caps = client.initialize_result.capabilities
    assert caps.inline_completion_provider is not None
    assert caps.completion_provider is not None
    assert caps.text_document_sync.change == types.TextDocumentSyncKind.Incremental
    assert caps.position_encoding == types.PositionEncodingKind.Utf16  # VS Code offers only utf-16


async def test_inline_completion_runs_the_model(client: LanguageClient):
    uri = "file:///work/demo.py"
    _open(client, uri, PY_SOURCE)
    result = await _inline(client, uri, 10, 4)
    explained = await _explain(client)
    assert explained.model.state == "ready"
    assert explained.model.template == "qwen"
    assert explained.model.provider == "cpu"
    assert explained.last.prompt_tokens > 20  # the real prompt went through the real tokenizer
    assert explained.last.timings_ms.prefill > 0
    # The tiny model's noise is code enough for a candidate here (its greedy one the syntax guard rejects, the next
    # most likely start stands): what the engine kept is what the client gets, placed at the cursor.
    assert result.items, explained.last.reason
    assert len(result.items) == explained.last.candidates
    assert all(item.insert_text and item.range == types.Range(types.Position(10, 4), types.Position(10, 4))
               for item in result.items), result.items


async def test_incremental_edits_reuse_the_kv_cache(client: LanguageClient):
    uri = "file:///work/reuse.py"
    _open(client, uri, PY_SOURCE)
    await _inline(client, uri, 10, 4)
    # Type one character at the cursor, as an editor sends it: an incremental change.
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
        content_changes=[types.TextDocumentContentChangePartial(
            range=types.Range(types.Position(10, 4), types.Position(10, 4)), text="r")]))
    await _inline(client, uri, 10, 5)
    explained = await _explain(client)
    assert explained.last.reused_tokens > 0.5 * explained.last.prompt_tokens


async def test_position_outside_the_document_is_invalid_params_and_server_survives(client: LanguageClient):
    uri = "file:///work/small.py"
    _open(client, uri, "x = 1\n")
    with pytest.raises(JsonRpcException) as error:
        await _inline(client, uri, 500, 0)
    assert error.value.code == -32602
    assert "outside" in str(error.value)
    result = await _inline(client, uri, 1, 0)  # the next request runs the model as if nothing happened
    assert result.items and all(item.range.start == types.Position(1, 0) for item in result.items), result


async def test_request_for_unopened_document_is_a_clear_error(client: LanguageClient):
    with pytest.raises(JsonRpcException) as error:
        await _inline(client, "file:///never/opened.py", 0, 0)
    assert error.value.code == -32602
    assert "not open" in str(error.value)


async def test_unknown_language_is_plain_text(client: LanguageClient):
    uri = "file:///work/notes.zzz"
    _open(client, uri, "Dear diary,\ntoday I ", language="klingon")
    result = await _inline(client, uri, 1, 8)
    explained = await _explain(client)
    assert explained.last.prompt_tokens > 0
    # No grammar to parse it with, so nothing is cut by syntax: the model's line stands as it wrote it.
    assert result.items, explained.last.reason
    assert explained.last.reason == "complete (model stopped: max_tokens)"


async def test_completion_fallback_returns_a_list(client: LanguageClient):
    uri = "file:///work/fallback.py"
    _open(client, uri, PY_SOURCE)
    result = await client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri), position=types.Position(10, 4)))
    assert result.is_incomplete
    # The same ghost text as the inline request, as one item whose edit inserts it at the cursor.
    assert len(result.items) == 1, result
    item = result.items[0]
    assert item.text_edit.new_text and item.text_edit.range == types.Range(types.Position(10, 4),
                                                                           types.Position(10, 4))
    assert item.label == item.text_edit.new_text.strip().splitlines()[0][:80]


async def test_invalid_settings_fall_back_with_one_warning(client: LanguageClient):
    for _ in range(2):  # the same mistake twice is still one warning each
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"ghostls": {"maxLines": "many", "nonsense": 1}}))
    await _explain(client)  # answered after both notifications were handled, and after their warnings
    texts = [m.message for m in client.messages]
    assert [t for t in texts if "maxLines" in t] == [
        "ghostls: ignoring setting maxLines='many': expected a number from 1 to 200; using 12"], texts
    assert [t for t in texts if "nonsense" in t] == ["ghostls: unknown setting 'nonsense' ignored"], texts


async def test_model_progress_is_reported(client: LanguageClient):
    uri = "file:///work/progress.py"
    _open(client, uri, "x = 1\n")
    await _inline(client, uri, 1, 0)  # waits for the model
    reports = client.progress_reports.get("ghostls/model")
    assert reports, "no $/progress for the model load"
    assert isinstance(reports[0], types.WorkDoneProgressBegin)
    assert isinstance(reports[-1], types.WorkDoneProgressEnd)


@pytest_lsp.fixture(config=ClientServerConfig(server_command=SERVER))
async def broken_client(lsp_client: LanguageClient, tmp_path):
    record_statuses(lsp_client)
    missing = tmp_path / "no-such-model"
    params = types.InitializeParams(capabilities=client_capabilities("neovim"),
                                    initialization_options=_options(missing))
    await lsp_client.initialize_session(params)
    yield
    await lsp_client.shutdown_session()


async def test_missing_model_is_reported_and_server_stays_up(broken_client: LanguageClient):
    status = await next_status(broken_client, "error", "ready")
    assert status.state == "error"
    assert "does not exist" in status.detail
    uri = "file:///work/a.py"
    _open(broken_client, uri, "x = 1\n")
    result = await _inline(broken_client, uri, 1, 0)
    assert not result.items
    assert (await _explain(broken_client)).last.reason.startswith("model not ready (error: model path ")
    assert any("does not exist" in m.message for m in broken_client.messages)


@pytest_lsp.fixture(config=ClientServerConfig(server_command=SERVER))
async def converting_client(lsp_client: LanguageClient, tiny_checkpoints, tmp_path):
    # A checkpoint folder never seen before, so the server must convert it (about 10 s) first.
    fresh = tmp_path / f"unseen-{tmp_path.name}"
    shutil.copytree(tiny_checkpoints["starcoder"], fresh)
    lsp_client.fresh_checkpoint = fresh
    record_statuses(lsp_client)
    params = types.InitializeParams(capabilities=client_capabilities("visual-studio-code"),
                                    initialization_options=_options(fresh, loadWaitMs=0))
    await lsp_client.initialize_session(params)
    yield
    await lsp_client.shutdown_session()


async def test_request_while_converting_is_empty_not_an_error(converting_client: LanguageClient):
    uri = "file:///work/early.py"
    _open(converting_client, uri, PY_SOURCE)
    result = await _inline(converting_client, uri, 10, 4)
    assert not result.items
    explained = await _explain(converting_client)
    assert explained.model.state in ("starting", "converting")
    assert "model not ready" in explained.last.reason
    # The conversion goes on in the background and ends ready.
    status = await next_status(converting_client, "ready", "error", timeout=300)
    assert status.state == "ready", status.detail
    # The one-off conversion must not pile up in the shared test cache.
    models = Path(os.environ["GHOSTLS_CACHE_DIR"]) / "models"
    for folder in models.glob(f"{converting_client.fresh_checkpoint.name}*"):
        shutil.rmtree(folder, ignore_errors=True)


def test_expected_answers_leave_no_traceback_in_the_log():
    import logging

    from pygls.exceptions import JsonRpcContentModified, JsonRpcInternalError, JsonRpcRequestCancelled

    from ghostls.server.app import ExpectedAnswers

    def record(error: BaseException) -> logging.LogRecord:
        try:
            raise error
        except BaseException:
            return logging.LogRecord("pygls.protocol.json_rpc", logging.ERROR, __file__, 1, "Exception occurred",
                                     None, sys.exc_info())

    keep = ExpectedAnswers().filter
    assert not keep(record(JsonRpcContentModified("changed")))
    assert not keep(record(JsonRpcRequestCancelled("cancelled")))
    assert keep(record(JsonRpcInternalError("a real failure")))  # real failures keep their traceback
    assert keep(logging.LogRecord("pygls", logging.INFO, __file__, 1, "no exception", None, None))
