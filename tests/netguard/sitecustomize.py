"""Loaded by every Python process the tests start (PYTHONPATH): the same network guard as the test process."""

import ghostls_netguard

ghostls_netguard.install()
