"""Alembic environment of the inference service's database."""

from prognos.core.migrate import run_env
from prognos.core.store import metadata as core_metadata
from prognos.inference.bootstrap import metadata

run_env([core_metadata, metadata])
