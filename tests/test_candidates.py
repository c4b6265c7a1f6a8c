"""Alternative candidates for an invoked request: first-token branching on a real ONNX Runtime GenAI session."""

from __future__ import annotations

import sys

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

from ghostls.inference.engine import Engine, GenerationRequest

SOURCE = "def add(a, b):\n    return a + b\n\n\ndef multiply(a, b):\n    return a * b\n\n\ndef main():\n    "


@pytest.fixture(scope="module")
def engine(tiny_model):
    return Engine(tiny_model("starcoder"), provider="cpu")


def test_first_choices_rank_the_greedy_token_first(engine):
    ids = tuple(engine.encode(SOURCE))
    engine.reset()
    greedy = engine.generate(GenerationRequest(ids, max_new_tokens=6, first_choices=4))
    assert len(greedy.first_choices) == 4
    assert len(set(greedy.first_choices)) == 4
    assert not set(greedy.first_choices) & engine.eos_ids
    assert greedy.token_ids  # the tiny model writes on here: its first token must be the top choice
    assert greedy.first_choices[0] == greedy.token_ids[0]


def test_a_forced_first_token_reuses_the_prompt_cache(engine):
    ids = tuple(engine.encode(SOURCE))
    engine.reset()
    greedy = engine.generate(GenerationRequest(ids, max_new_tokens=6, first_choices=3))
    alternative = greedy.first_choices[1]
    branch = engine.generate(GenerationRequest(ids, max_new_tokens=6, forced=(alternative,)))
    assert branch.token_ids[0] == alternative
    assert branch.reused_tokens == len(ids)  # only the forced token was fed
    # The same as a cold run of the prompt with that token appended.
    engine.reset()
    cold = engine.generate(GenerationRequest(ids + (alternative,), max_new_tokens=5))
    assert branch.token_ids[1:] == cold.token_ids


SERVER = [sys.executable, "-m", "ghostls.cli.main", "serve", "--stdio"]


@pytest_lsp.fixture(config=ClientServerConfig(server_command=SERVER))
async def client(lsp_client: LanguageClient, tiny_model):
    # No cross-file context: these tests open several documents with the same text, which would be each other's
    # similar code, so each prompt would depend on what else is open; here the prompt is the document alone.
    params = types.InitializeParams(capabilities=client_capabilities("visual-studio-code"), initialization_options={
        "model": str(tiny_model("qwen")), "loadWaitMs": 120_000, "debounceMs": 0, "maxNewTokens": 6,
        "timeBudgetMs": 20_000, "workspaceContext": False})
    await lsp_client.initialize_session(params)
    yield
    await lsp_client.shutdown_session()


async def _inline(client, uri, kind):
    return await client.text_document_inline_completion_async(types.InlineCompletionParams(
        context=types.InlineCompletionContext(trigger_kind=kind),
        text_document=types.TextDocumentIdentifier(uri), position=types.Position(9, 4)))


async def test_invoked_offers_three_distinct_candidates_automatic_one(client: LanguageClient):
    for uri in ("file:///work/cands.py", "file:///work/cands-auto.py"):
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=uri, language_id="python", version=1, text=SOURCE)))
    invoked = await _inline(client, "file:///work/cands.py", types.InlineCompletionTriggerKind.Invoked)
    explained = await client.protocol.send_request_async("ghostls/explain", None)
    texts = [item.insert_text for item in invoked.items]
    # The tiny model's next likely first tokens each continue into distinct text: the client can cycle three.
    assert len(texts) == len(set(texts)) == 3, texts
    assert all(texts)
    assert explained.last.candidates == 3
    assert explained.last.timings_ms.alternatives > 0  # the branches were decoded, and timed
    # The same text in another document, automatically: the model runs again (nothing typed through) and offers
    # one candidate, the invoked request's first.
    automatic = await _inline(client, "file:///work/cands-auto.py", types.InlineCompletionTriggerKind.Automatic)
    explained = await client.protocol.send_request_async("ghostls/explain", None)
    assert explained.last.prompt_tokens > 0, explained.last.reason
    assert [item.insert_text for item in automatic.items] == texts[:1]
    assert explained.last.candidates == 1


async def test_an_automatic_answer_the_guard_rejects_gives_way_to_the_next_likely_start(client: LanguageClient):
    # The tiny random model writes noise, so at some of these cursors its greedy answer adds syntax errors and the
    # guard rejects it. There an automatic request branches on the next most likely first tokens (as an invoked
    # one does) rather than answer nothing; where the greedy answer stands, it branches on nothing.
    rejected = replaced = 0
    for i, line in enumerate(SOURCE.split("\n")):
        uri = f"file:///work/guard{i}.py"
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=uri, language_id="python", version=1, text=SOURCE)))
        answer = await client.text_document_inline_completion_async(types.InlineCompletionParams(
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
            text_document=types.TextDocumentIdentifier(uri), position=types.Position(i, len(line))))
        last = (await client.protocol.send_request_async("ghostls/explain", None)).last
        if "rejected: it adds syntax errors" in last.reason:
            rejected += 1
            assert last.timings_ms.alternatives > 0  # it branched: at least one alternative decoded
            replaced += bool(answer.items)
            assert bool(answer.items) == ("the next most likely start instead" in last.reason)
        else:
            assert not hasattr(last.timings_ms, "alternatives")
    assert rejected and replaced, (rejected, replaced)
