"""Fuzz budgets: small and fixed in CI, large locally with GHOSTLS_FUZZ=long. Examples are derandomized in CI so
a red build reproduces; locally they are random, to find new cases."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

LONG = os.environ.get("GHOSTLS_FUZZ") == "long"


def fuzz_settings(ci: int, long: int):
    return settings(max_examples=long if LONG else ci, deadline=None, derandomize=not LONG,
                    suppress_health_check=list(HealthCheck), database=None)
