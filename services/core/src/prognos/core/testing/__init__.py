"""Test support shared by every Prognos test suite: waiting helpers and fixtures."""

from prognos.core.natsserver import free_port
from prognos.core.testing.waiting import assert_eventually, wait_until

__all__ = ["assert_eventually", "free_port", "wait_until"]
