"""ghostls/explain: why the last completion was what it was (stages, tokens, reason), without source code."""

from __future__ import annotations

import dataclasses


def register(server) -> None:
    @server.feature("ghostls/explain")
    def explain(ls, params=None) -> dict:
        status = ls.models.status
        result = ls.last_result
        last = None
        if result is not None:
            last = {k: v for k, v in dataclasses.asdict(result).items() if k != "text"}
            last["chars"] = len(result.text)
        return {"model": {"state": status.state.value, "detail": status.detail, "model": status.model,
                          "provider": status.provider, "template": status.template},
                "last": last,
                # Per open document, how many completions wait for typing through or acceptance (0 to 2).
                "precomputed": [{"uri": uri, "count": len(shown)} for uri, shown in ls.shown.items()],
                "speculating": ls.speculation is not None,
                "last_speculation": ls.last_speculation}
