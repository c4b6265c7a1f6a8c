"""End to end: the real `ghostls serve --stdio` with a workspace folder, driven by a real LSP client, on a tiny
converted model. A definition from another file reaches the prompt; secret files never do, nor the server log."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient

FIXTURE = Path(__file__).parent / "fixtures" / "workspace"
CANARY = "GHOSTLS-CANARY-91d2f7aa"
SECRETS = {".env": f"API_TOKEN={CANARY}\n", "id_rsa": f"-----BEGIN OPENSSH PRIVATE KEY-----\n{CANARY}\n",
           "certs/server.pem": f"-----BEGIN CERTIFICATE-----\n{CANARY}\n",
           "credentials.json": f'{{"token": "{CANARY}"}}\n', "config/settings.env": f"SECRET={CANARY}\n"}


async def _start(root: Path, model: Path, log: Path, family_options: dict | None = None) -> LanguageClient:
    client = LanguageClient("ghostls-test", "0")

    @client.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
    def _create(params):
        return None

    registered = client.registered = []

    @client.feature(types.CLIENT_REGISTER_CAPABILITY)
    def _register(params: types.RegistrationParams):
        registered.extend(r.method for r in params.registrations)

    for method in (types.PROGRESS, types.WINDOW_LOG_MESSAGE, types.WINDOW_SHOW_MESSAGE, "ghostls/status"):
        client.feature(method)(lambda params: None)
    # The server's stderr goes to a file, at the default log level, so the test can read all of it.
    await client.start_io("sh", "-c", f'exec "{sys.executable}" -m ghostls.cli.main serve --stdio 2>"{log}"')
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(workspace=types.WorkspaceClientCapabilities(
            did_change_watched_files=types.DidChangeWatchedFilesClientCapabilities(dynamic_registration=True))),
        root_uri=root.as_uri(),
        workspace_folders=[types.WorkspaceFolder(uri=root.as_uri(), name=root.name)],
        initialization_options={"model": str(model), "loadWaitMs": 120_000, "debounceMs": 0, "maxNewTokens": 8,
                                "timeBudgetMs": 20_000, **(family_options or {})}))
    client.initialized(types.InitializedParams())
    return client


async def _stop(client: LanguageClient) -> None:
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()


def _open(client: LanguageClient, path: Path, language: str) -> str:
    uri = path.as_uri()
    client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
        uri=uri, language_id=language, version=1, text=path.read_text())))
    return uri


async def _complete(client: LanguageClient, uri: str, line: int, character: int):
    answer = await client.text_document_inline_completion_async(types.InlineCompletionParams(
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
        text_document=types.TextDocumentIdentifier(uri), position=types.Position(line, character)))
    explained = await client.protocol.send_request_async("ghostls/explain", {"includePrompt": True})
    return answer, explained


async def _wait_for_index(client: LanguageClient, files: int) -> None:
    for _ in range(200):
        status = (await client.protocol.send_request_async("ghostls/explain", None)).workspace
        if status.state == "ready" and status.files >= files:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"index not ready: {status}")


async def test_definition_from_another_file_reaches_the_prompt_and_secrets_never_do(tmp_path, tiny_model):
    root = tmp_path / "ws"
    shutil.copytree(FIXTURE, root)
    for name, text in SECRETS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    log = tmp_path / "server.log"
    client = await _start(root, tiny_model("qwen"), log)
    try:
        await _wait_for_index(client, 4)
        assert client.registered == [types.WORKSPACE_DID_CHANGE_WATCHED_FILES]
        uri = _open(client, root / "main.py", "python")
        _, explained = await _complete(client, uri, 6, len("    d = distance_between("))
        prompt = explained.last.prompt
        # The other file's definition, in Qwen's repository format, ahead of the FIM prefix.
        assert prompt.startswith("<|repo_name|>ws\n<|file_sep|>shapes/geometry.py\n")
        assert "def distance_between(a, b):\n    \"\"\"Euclidean distance" in prompt
        assert prompt.index("<|file_sep|>main.py\n") < prompt.index("<|fim_prefix|>")
        items = {(item.name, item.path) for item in explained.last.context.items}
        assert ("distance_between", "shapes/geometry.py") in items
        assert explained.last.context.format == "qwen"
        assert set(explained.last.timings_ms._fields) >= {"context", "prompt", "tokenize", "prefill", "decode"}
        assert CANARY not in prompt

        # A secret file, open in the editor: no completion at all, and the reason says why.
        for name in SECRETS:
            secret_uri = _open(client, root / name, "plaintext")
            answer, explained = await _complete(client, secret_uri, 0, 3)
            assert not answer.items
            assert "secret" in explained.last.reason
            assert explained.last.prompt == ""

        # Back in a normal file, after the secrets were opened (and could have been "recent edits").
        _, explained = await _complete(client, uri, 6, len("    d = distance_between("))
        assert CANARY not in explained.last.prompt
    finally:
        await _stop(client)
    assert CANARY not in log.read_text()
    assert "completion main.py" in log.read_text()  # the log was written, at the default level


async def test_context_uses_a_comment_block_for_a_prefix_only_model(tmp_path, tiny_model):
    root = tmp_path / "ws"
    shutil.copytree(FIXTURE, root)
    client = await _start(root, tiny_model("prefix_only"), tmp_path / "server.log")
    try:
        await _wait_for_index(client, 4)
        uri = _open(client, root / "web" / "app.js", "javascript")
        _, explained = await _complete(client, uri, 1, len("console.log(padTwo("))
        prompt = explained.last.prompt
        assert prompt.startswith("// Code from web/format.js:\n")
        assert "// function padTwo(n) {" in prompt
        assert prompt.endswith("console.log(padTwo(")
    finally:
        await _stop(client)


async def test_watched_file_changes_reach_the_index(tmp_path, tiny_model):
    root = tmp_path / "ws"
    shutil.copytree(FIXTURE, root)
    client = await _start(root, tiny_model("qwen"), tmp_path / "server.log")
    try:
        await _wait_for_index(client, 4)
        uri = _open(client, root / "main.py", "python")
        # A new file appears on disk, and main.py starts using what it defines.
        (root / "shapes" / "scale.py").write_text("def scale_polygon(polygon, factor):\n    return polygon\n")
        client.workspace_did_change_watched_files(types.DidChangeWatchedFilesParams(changes=[types.FileEvent(
            uri=(root / "shapes" / "scale.py").as_uri(), type=types.FileChangeType.Created)]))
        await _wait_for_index(client, 5)
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
            content_changes=[types.TextDocumentContentChangePartial(
                range=types.Range(types.Position(6, 4), types.Position(6, 4)), text="scale_polygon(square, 2)\n    ")]))
        _, explained = await _complete(client, uri, 7, len("    d = distance_between("))
        assert "<|file_sep|>shapes/scale.py\ndef scale_polygon(polygon, factor):" in explained.last.prompt
    finally:
        await _stop(client)


async def test_typing_along_a_line_keeps_the_context_and_the_kv_cache(tmp_path, tiny_model):
    """The cross-file context heads the prompt: if it changed with every name typed, every keystroke would pay
    a full prefill. Along one line it is held; a new line looks again."""
    root = tmp_path / "ws"
    shutil.copytree(FIXTURE, root)
    (root / "shapes" / "scaling.py").write_text('def scale_points(points, factor):\n    """Every point times factor."""\n'
                                                 "    return [(x * factor, y * factor) for x, y in points]\n")
    client = await _start(root, tiny_model("qwen"), tmp_path / "server.log")
    try:
        await _wait_for_index(client, 5)
        uri = _open(client, root / "main.py", "python")
        text = (root / "main.py").read_text()
        line = text.split("\n")[6]
        _, first = await _complete(client, uri, 6, len(line))
        assert "distance_between" in {item.name for item in first.last.context.items}
        assert "scale_points" not in {item.name for item in first.last.context.items}
        # Type a name defined in another file: looked up afresh, it would join the context at every keystroke.
        version, column = 1, len(line)
        for ch in "scale_points":
            version += 1
            client.text_document_did_change(types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[types.TextDocumentContentChangePartial(
                    range=types.Range(types.Position(6, column), types.Position(6, column)), text=ch)]))
            column += 1
            _, explained = await _complete(client, uri, 6, column)
            if explained.last.prompt_tokens:  # answered by the model, not typed through a shown completion
                assert explained.last.prompt.split("<|fim_prefix|>")[0] == first.last.prompt.split("<|fim_prefix|>")[0]
                assert explained.last.reused_tokens >= explained.last.prompt_tokens - 8
    finally:
        await _stop(client)
