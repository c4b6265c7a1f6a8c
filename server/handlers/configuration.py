"""workspace/didChangeConfiguration: new settings apply to the next request; a new model reloads."""

from __future__ import annotations

from lsprotocol import types

from ghostls.completion.settings import parse_settings

_MODEL_KEYS = ("model", "precision", "provider", "backend", "language_backends")


def register(server) -> None:
    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(ls, params: types.DidChangeConfigurationParams) -> None:
        old = ls.settings
        ls.settings, warnings = parse_settings(params.settings, old)
        for warning in warnings:
            ls.warn_once(warning)
        if any(getattr(old, key) != getattr(ls.settings, key) for key in _MODEL_KEYS):
            ls.start_model()
        elif (model := ls.models.loaded) is not None:
            model.engine.kv_budget_bytes = ls.settings.kv_cache_mb * 2**20  # applies at the next new cache
