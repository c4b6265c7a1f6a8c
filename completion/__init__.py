"""The completion core: one completion from a document snapshot, and what each open document keeps between them.

Settings, the completer (mode, prompt, generation, post-processing), typing through shown completions, and one
DocumentSession per open document with the CancelToken of its request. Plain values in and out; it must never
import pygls, lsprotocol or ghostls.server: the server, `ghostls eval`, the benches and the tests all call it.
"""

from .completer import CompletionResult, complete
from .session import CancelToken, DocumentSession, DocumentSessions, SessionSnapshot
from .settings import Settings, parse_settings
from .typeahead import ShownCompletion, accepted

__all__ = ["CancelToken", "CompletionResult", "DocumentSession", "DocumentSessions", "SessionSnapshot", "Settings",
           "ShownCompletion", "accepted", "complete", "parse_settings"]
