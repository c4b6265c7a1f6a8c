"""initialize / initialized / shutdown: read the client's options, then start the model in the background."""

from __future__ import annotations

from lsprotocol import types

from ghostls.completion.settings import parse_settings

from .workspace_files import watch_files


def register(server) -> None:
    @server.feature(types.INITIALIZE)
    def initialize(ls, params: types.InitializeParams) -> None:
        ls.settings, warnings = parse_settings(params.initialization_options, ls.settings)
        ls.pending_warnings = warnings
        ls.watch_parent(params.process_id)
        ls.open_workspace(params)

    @server.feature(types.INITIALIZED)
    def initialized(ls, params: types.InitializedParams) -> None:
        for warning in ls.pending_warnings:
            ls.warn_once(warning)
        ls.start_model()
        watch_files(ls)

    @server.feature(types.SHUTDOWN)
    def shutdown(ls, params) -> None:
        ls.sessions.cancel_all("shutdown")
        ls.remotes.close_all()
