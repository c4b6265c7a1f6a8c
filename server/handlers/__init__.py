"""One module per LSP method group; each registers its handlers on a GhostServer."""

from . import completion, configuration, explain, inline_completion, lifecycle, text_sync, workspace_files

MODULES = (lifecycle, text_sync, configuration, inline_completion, completion, explain, workspace_files)


def register_all(server) -> None:
    for module in MODULES:
        module.register(server)
