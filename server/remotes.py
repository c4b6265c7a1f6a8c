"""The remote engines this server talks to: one RemoteBackend (one keep-alive pool) per configured engine.

Lives on the event loop. A backend is created on the first request that needs it and closed once no setting
names it any more; nothing here ever sends a byte unless the user configured that engine.
"""

from __future__ import annotations

import logging
import re

from ghostls.completion.settings import Settings
from ghostls.inference.remote import RemoteBackend, RemoteConfig, is_loopback

log = logging.getLogger(__name__)


class RemoteBackends:
    def __init__(self) -> None:
        self._backends: dict[RemoteConfig, RemoteBackend] = {}
        # The failure kind last reported per engine ("" once it answers again): status only on a change.
        self.failures: dict[RemoteConfig, str] = {}

    def get(self, config: RemoteConfig) -> RemoteBackend:
        """The backend for `config`; raises what its setup raises (an unreadable tokenizer or CA file)."""
        backend = self._backends.get(config)
        if backend is None:
            if (key := config.resolve_key()) is not None:
                REDACTION.secrets.add(key)
            backend = self._backends[config] = RemoteBackend(config)
            log.info("remote engine %s, FIM template %s", config.describe(), backend.template.family)
        return backend

    def retire_unused(self, settings: Settings) -> None:
        """Closes the pools of engines the settings no longer name."""
        wanted = {settings.backend, *(backend for _, backend in settings.language_backends)}
        for config in [c for c in self._backends if c not in wanted]:
            self._backends.pop(config).close()
            self.failures.pop(config, None)

    def close_all(self) -> None:
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()


def plaintext_warning(config: RemoteConfig) -> str | None:
    """A warning for code sent unencrypted beyond this machine."""
    if config.endpoint.startswith("http://") and not is_loopback(config.endpoint):
        return (f"ghostls: the remote engine {config.describe()} is plain http: code is sent unencrypted; "
                "use https")
    return None


class KeyRedaction(logging.Filter):
    """Blanks API keys in log records, whoever logs them: pygls logs `initialize` params and, at debug
    level, every JSON-RPC message, and either may carry `apiKey` from the client's settings."""

    _FIELD = re.compile(r"""(["']api_?key["']\s*:\s*)(["'])(?:(?!\2).)*\2""", re.IGNORECASE)

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._FIELD.sub(r"\1\2[redacted]\2", message)
        for secret in self.secrets:
            redacted = redacted.replace(secret, "[redacted]")
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


REDACTION = KeyRedaction()


def redact_logs() -> None:
    """Puts the redaction on every handler of the root logger (the CLI has configured them by now)."""
    for handler in logging.getLogger().handlers:
        if REDACTION not in handler.filters:
            handler.addFilter(REDACTION)
