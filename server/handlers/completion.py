"""textDocument/completion: the same ghost text as one completion item, for clients without inline support."""

from __future__ import annotations

from lsprotocol import types

from ..scheduling import run_completion


def register(server) -> None:
    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[]))
    async def completion(ls, params: types.CompletionParams) -> types.CompletionList:
        invoked = params.context is None or params.context.trigger_kind == types.CompletionTriggerKind.Invoked
        result = await run_completion(ls, params.text_document.uri, params.position.line,
                                      params.position.character, invoked, method=types.TEXT_DOCUMENT_COMPLETION)
        if result is None or not result.text:
            return types.CompletionList(is_incomplete=True, items=[])
        first_line = result.text.strip().splitlines()[0] if result.text.strip() else result.text
        at = types.Range(params.position, params.position)
        item = types.CompletionItem(
            label=first_line[:80], kind=types.CompletionItemKind.Text, detail="ghostls",
            documentation=types.MarkupContent(types.MarkupKind.Markdown, f"```\n{result.text}\n```"),
            text_edit=types.TextEdit(at, result.text), filter_text=first_line, sort_text="0",
        )
        # Incomplete: the next keystroke asks again instead of filtering a stale item.
        return types.CompletionList(is_incomplete=True, items=[item])


