"""Alembic environment of the ingest service's database."""

from prognos.core.migrate import run_env
from prognos.core.store import metadata as core_metadata
from prognos.ingest.adapters import metadata

run_env([core_metadata, metadata])
