"""ghostls/explain: why the last completion was what it was (stages, tokens, context, reason).

Never source code by default: the context is names, places and token counts. `{"includePrompt": true}` adds the
prompt text, for the client that asks (it is the user's own code, on the user's machine; it is never logged).
"""

from __future__ import annotations

import dataclasses


def register(server) -> None:
    @server.feature("ghostls/explain")
    def explain(ls, params=None) -> dict:
        status = ls.models.status
        result = ls.last_result
        last = None
        include_prompt = bool(_get(params, "includePrompt"))
        if result is not None:
            # Never the texts (the completion, the prompt, the held context, the document shown under it).
            hidden = ("text", "prompt", "alternatives", "held_context", "shown")
            last = {k: v for k, v in dataclasses.asdict(result).items() if k not in hidden}
            last["chars"] = len(result.text)
            last["candidates"] = int(bool(result.text)) + len(result.alternatives)
            if include_prompt:
                last["prompt"] = result.prompt
        return {"model": {"state": status.state.value, "detail": status.detail, "model": status.model,
                          "provider": status.provider, "template": status.template},
                "last": last,
                # Per open document, how many completions wait for typing through or acceptance (0 to 2).
                "precomputed": [{"uri": s.uri, "count": len(s.shown)} for s in ls.sessions if s.shown],
                "speculating": ls.speculation is not None,
                "last_speculation": ls.last_speculation,
                "workspace": ls.project.status()}


def _get(params, key: str):
    # pygls hands custom-request params over as an attribute object (or None, or a dict).
    if params is None:
        return None
    if isinstance(params, dict):
        return params.get(key)
    return getattr(params, key, None)
