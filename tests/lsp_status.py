"""`ghostls/status` notifications seen by a pytest-lsp client, kept from the start of the session.

pytest-lsp's `wait_for_notification` waits for the *next* notification of a method: one that arrived before the
test asked (a missing model is reported within milliseconds of `initialized`) is missed, and the wait never ends.
Record them from the start instead, and wait with a deadline.
"""

from __future__ import annotations

import asyncio
import time

from pytest_lsp import LanguageClient

STATUS = "ghostls/status"


def record_statuses(client: LanguageClient) -> None:
    """Keep every `ghostls/status` in `client.statuses`; call before `initialize_session`."""
    client.statuses = []

    @client.feature(STATUS)
    def on_status(params):
        client.statuses.append(params)


async def next_status(client: LanguageClient, *states: str, timeout: float = 60.0):
    """The first recorded status in one of `states` that this test has not looked at yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for i, status in enumerate(client.statuses):
            if status.state in states:
                del client.statuses[: i + 1]
                return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"no ghostls/status in {states}; saw {client.statuses}")
