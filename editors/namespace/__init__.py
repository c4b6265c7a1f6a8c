"""ghostls: AI ghost-text completions for any LSP editor, on the user's own machine.

The package is one import namespace laid over the repository's top-level folders:
``ghostls.server`` is ``server/``, ``ghostls.completion`` is ``completion/``, ``ghostls.parsers`` is
``parsers/``, ``ghostls.inference`` is ``inference/`` and ``ghostls.cli`` is ``editors/cli/``.
"""

__version__ = "0.1.0"
