"""The remote engines this server talks to: one RemoteBackend (one keep-alive pool) per configured engine.

Lives on the event loop. A backend is created on the first request that needs it and closed once no setting
names it any more; nothing here ever sends a byte unless the user configured that engine.
"""

from __future__ import annotations

import logging

from ghostls.inference.remote import RemoteBackend, RemoteConfig, is_loopback

from .config import Settings

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
