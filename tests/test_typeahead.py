"""Typing through and accepting a shown completion: answered from what was computed, not by the model."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

from ghostls.completion.typeahead import ShownCompletion, accepted

SERVER = [sys.executable, "-m", "ghostls.cli.main", "serve", "--stdio", "--log-level", "debug"]
DOC = "def area(width, height):\n    return \n\nprint(area(2, 3))\n"
CURSOR = DOC.index("return ") + len("return ")


def test_remainder_after_typing_a_prefix_of_the_completion():
    shown = ShownCompletion(DOC, CURSOR, "width * height", multiline=False)
    typed = DOC[:CURSOR] + "wid" + DOC[CURSOR:]
    assert shown.remainder(typed, CURSOR + 3) == "th * height"
    assert shown.remainder(DOC, CURSOR) == "width * height"  # the same state asked again


@pytest.mark.parametrize("text, offset", [
    (DOC[:CURSOR] + "x" + DOC[CURSOR:], CURSOR + 1),                       # typed something else
    (DOC[:CURSOR] + "width * height" + DOC[CURSOR:], CURSOR + 14),         # typed all of it: ask the model
    (DOC[:CURSOR] + "w" + DOC[CURSOR:].replace("print", "prin"), CURSOR + 1),  # and edited elsewhere
    ("#" + DOC[:CURSOR] + "w" + DOC[CURSOR:], CURSOR + 2),                 # an edit before the cursor
    (DOC, CURSOR - 1),                                                     # the cursor moved back
])
def test_no_remainder_when_the_document_went_another_way(text, offset):
    assert ShownCompletion(DOC, CURSOR, "width * height", multiline=False).remainder(text, offset) is None


def test_accepting_inserts_the_completion_at_the_cursor():
    text, offset = accepted(ShownCompletion(DOC, CURSOR, "width * height", multiline=False))
    assert text == DOC.replace("return \n", "return width * height\n") and text[offset:] == DOC[CURSOR:]


# A function body to fill: the embedded model writes `return width * height`, cut by a 3-token budget to
# `return width`, so that the completion after accepting it has the rest of the line to write.
BODY = "def area(width, height):\n    \n"


@pytest_lsp.fixture(config=ClientServerConfig(server_command=SERVER))
async def client(lsp_client: LanguageClient, embedded_model_dir):
    params = types.InitializeParams(
        capabilities=client_capabilities("visual-studio-code"),
        initialization_options={"model": str(embedded_model_dir), "loadWaitMs": 120_000, "debounceMs": 0,
                                "maxNewTokens": 3, "timeBudgetMs": 30_000})
    lsp_client.initialize_result = await lsp_client.initialize_session(params)
    yield
    await lsp_client.shutdown_session()


async def _inline(client, uri, position):
    return await client.text_document_inline_completion_async(types.InlineCompletionParams(
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
        text_document=types.TextDocumentIdentifier(uri), position=position))


def _insert(client, uri, version, position, text):
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[types.TextDocumentContentChangePartial(range=types.Range(position, position), text=text)]))


async def _explain(client):
    return await client.protocol.send_request_async("ghostls/explain", None)


@pytest.mark.embedded
async def test_typing_through_and_accepting_need_no_model(client: LanguageClient):
    uri = "file:///work/area.py"
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        types.TextDocumentItem(uri=uri, language_id="python", version=1, text=BODY)))
    first = await _inline(client, uri, types.Position(1, 4))
    assert first.items, "the embedded model completes the body of a two-argument function"
    shown = first.items[0].insert_text
    assert len(shown) >= 2 and "\n" not in shown, shown

    # Type the completion's first character: the rest comes back at once, from what was computed.
    _insert(client, uri, 2, types.Position(1, 4), shown[0])
    started = time.perf_counter()
    typed = await _inline(client, uri, types.Position(1, 5))
    assert [item.insert_text for item in typed.items] == [shown[1:]]
    assert typed.items[0].range.start == types.Position(1, 5)
    assert (await _explain(client)).last.reason == "typed through a completion already computed"
    assert time.perf_counter() - started < 1.0  # no prefill, no decode: just the round trip

    # Meanwhile the completion after accepting it is speculated (the model's budget cut the line short, so there is
    # more to write); accept it and ask: the speculated text is the answer, without the model.
    for _ in range(600):
        state = await _explain(client)
        if not state.speculating and state.last_speculation and state.last_speculation.uri == uri:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail(f"no speculative completion ran: {state}")
    speculated = state.last_speculation
    assert speculated.chars > 0, speculated
    _insert(client, uri, 3, types.Position(1, 5), shown[1:])
    after = await _inline(client, uri, types.Position(1, 4 + len(shown)))
    assert (await _explain(client)).last.reason == "typed through a completion already computed"
    assert [len(item.insert_text) for item in after.items] == [speculated.chars]
    assert after.items[0].range.start == types.Position(1, 4 + len(shown))


@pytest_lsp.fixture(config=ClientServerConfig(server_command=SERVER))
async def small_window_client(lsp_client: LanguageClient, tiny_model):
    params = types.InitializeParams(
        capabilities=client_capabilities("visual-studio-code"),
        initialization_options={"model": str(tiny_model("qwen")), "loadWaitMs": 120_000, "debounceMs": 0,
                                "maxNewTokens": 4, "maxPromptTokens": 128, "speculate": False})
    lsp_client.initialize_result = await lsp_client.initialize_session(params)
    yield
    await lsp_client.shutdown_session()


async def test_typing_in_a_long_file_keeps_reusing_the_kv_cache(small_window_client: LanguageClient):
    """A file far longer than the prompt budget: typed lines must not shift the prompt window at every
    line, or each keystroke would pay a full prefill."""
    client = small_window_client
    uri = "file:///work/long.py"
    head = "".join(f"def helper_{i}(x):\n    return x + {i}\n\n\n" for i in range(60))
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        types.TextDocumentItem(uri=uri, language_id="python", version=1, text=head)))
    line, col, version = head.count("\n"), 0, 1
    reuse = []
    for ch in "total = helper_1(2)\nother = helper_2(3)\nthird = helper_3(4)\n":
        version += 1
        _insert(client, uri, version, types.Position(line, col), ch)
        line, col = (line + 1, 0) if ch == "\n" else (line, col + 1)
        await _inline(client, uri, types.Position(line, col))
        last = (await _explain(client)).last
        if last.prompt_tokens:  # not answered from a completion already computed
            reuse.append(last.reused_tokens / last.prompt_tokens)
    assert len(reuse) >= 40
    # Cold prefills only when the window has to move (it is re-anchored with room to grow).
    assert sum(r < 0.5 for r in reuse) <= 4, reuse
