"""didSave / workspace/didChangeWatchedFiles: files changed on disk reach the symbol index.

Runs on the event loop and only queues work for the index thread. The file watchers are registered dynamically
after `initialized`, when the client supports it.
"""

from __future__ import annotations

import logging

from lsprotocol import types

log = logging.getLogger(__name__)

WATCHER_ID = "ghostls/workspace-files"


def register(server) -> None:
    @server.feature(types.TEXT_DOCUMENT_DID_SAVE, types.SaveOptions(include_text=False))
    def did_save(ls, params: types.DidSaveTextDocumentParams) -> None:
        ls.project.files_changed([params.text_document.uri])

    @server.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)
    def did_change_watched_files(ls, params: types.DidChangeWatchedFilesParams) -> None:
        ls.project.files_changed(change.uri for change in params.changes)


def watch_files(ls) -> None:
    """Asks the client to report file changes under the workspace (all files: the index filters them).
    Without workspace folders there is nothing to watch, and nothing is asked."""
    if not ls.project.roots:
        return
    workspace = ls.client_capabilities.workspace
    watched = workspace.did_change_watched_files if workspace else None
    if not (watched and watched.dynamic_registration):
        return
    options = types.DidChangeWatchedFilesRegistrationOptions(watchers=[types.FileSystemWatcher(glob_pattern="**/*")])
    registration = types.Registration(id=WATCHER_ID, method=types.WORKSPACE_DID_CHANGE_WATCHED_FILES,
                                      register_options=options)
    future = ls.client_register_capability(types.RegistrationParams(registrations=[registration]))

    def done(f) -> None:
        if f.exception() is not None:
            log.info("client refused file watchers: %s", f.exception())

    future.add_done_callback(done)
