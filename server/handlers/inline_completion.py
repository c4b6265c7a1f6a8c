"""textDocument/inlineCompletion: ghost text at the cursor (LSP 3.18). Cancellable, off the event loop."""

from __future__ import annotations

from lsprotocol import types

from ..scheduling import run_completion


def register(server) -> None:
    # Registered with options, or pygls does not advertise inlineCompletionProvider.
    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls, params: types.InlineCompletionParams) -> types.InlineCompletionList:
        invoked = params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
        result = await run_completion(ls, params.text_document.uri, params.position.line,
                                      params.position.character, invoked)
        if result is None or not result.text:
            return types.InlineCompletionList(items=[])
        at = types.Range(params.position, params.position)
        # An invoked request may carry alternatives: the client cycles through them.
        texts = (result.text, *result.alternatives)
        return types.InlineCompletionList(items=[types.InlineCompletionItem(insert_text=t, range=at) for t in texts])
