"""Alembic environment for a database that holds only the core tables (tests, benchmarks)."""

from prognos.core.migrate import run_env
from prognos.core.store import metadata

run_env([metadata])
