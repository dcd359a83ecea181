"""Root test configuration: shared fixture plugins for every suite."""

pytest_plugins = ["prognos.core.testing.fixtures"]
