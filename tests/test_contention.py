"""Several documents at once on one engine: while other documents wait, a request that needs a new prompt window
gets a smaller one, and a multi-line answer stops at its first line (real tree-sitter parse, real ONNX session of
the embedded model: the tiny random models hardly ever write a line break)."""

from __future__ import annotations

import pytest

from ghostls.inference.backend import LocalBackend
from ghostls.inference.engine import Engine
from ghostls.inference.fim import PREFIX_ONLY, TEMPLATES
from ghostls.parsers.document import Document
from ghostls.completion.completer import BUSY_BUDGET_SHARE, BUSY_MIN_BUDGET, complete
from ghostls.completion.session import DocumentSessions, SessionSnapshot
from ghostls.completion.settings import Settings

SOURCE = "".join(f"def helper_{i}(value):\n    return value * {i} + {i * 7}\n\n\n" for i in range(60))
SOURCE += "def main(values):\n    "


pytestmark = pytest.mark.embedded


@pytest.fixture(scope="module")
def backend(embedded_model_dir):
    return LocalBackend(Engine(embedded_model_dir, provider="cpu"), TEMPLATES[PREFIX_ONLY])


def _complete(backend, others_waiting: bool, anchor: int | None = None, uri: str = "file:///busy.py"):
    """A request in `uri` with (or without) a live request for another open document waiting for the engine."""
    document = Document(uri, "python", 1, SOURCE)
    sessions = DocumentSessions()
    token = sessions.open(document).start_request()
    if others_waiting:
        sessions.open(Document("file:///other.py", "python", 1, "x = 1\n")).start_request()
    assert token.others_waiting() is others_waiting
    settings = Settings(max_new_tokens=48, max_prompt_tokens=900, time_budget_ms=60_000, speculate=False)
    return complete(backend, document.snapshot(), len(SOURCE), settings, SessionSnapshot(uri, anchor), token)


def test_other_documents_waiting_shrink_a_new_window_and_cut_to_one_line(backend):
    idle = _complete(backend, others_waiting=False, uri="file:///idle.py")
    assert not idle.context["busy"] and idle.prompt_tokens > 600
    assert idle.multiline and "\n" in idle.text  # the model's greedy answer here runs over several lines

    busy = _complete(backend, others_waiting=True)
    small = max(BUSY_MIN_BUDGET, int(900 * BUSY_BUDGET_SHARE))
    assert busy.context["busy"] and busy.context["budget"] == small < 900
    assert busy.prompt_tokens <= small + 8  # the template's own tokens
    assert "\n" not in busy.text.strip("\n")
    assert "other documents were waiting" in busy.reason


def test_a_window_that_keeps_its_anchor_is_not_shrunk(backend):
    first = _complete(backend, others_waiting=False, uri="file:///warm.py")
    again = _complete(backend, others_waiting=True, anchor=first.prefix_start, uri="file:///warm.py")
    assert not again.context["busy"] and again.prompt_tokens == first.prompt_tokens
    assert again.reused_tokens >= first.prompt_tokens - 1  # its KV cache served the whole prompt
