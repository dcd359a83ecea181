"""Alembic migrations, run one-shot with the sync driver before a service starts.

Every service database holds the core tables (events, outbox, tracking, audit log), whose
history lives in ``prognos/core/migrations`` as the Alembic branch ``core``, and the
service's own read models, whose history lives in ``services/<service>/migrations``. A
service's first revision depends on the core branch; ``upgrade`` applies all heads.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, pool, text

if TYPE_CHECKING:
    from sqlalchemy import MetaData

    from prognos.core.config import Settings

CORE_MIGRATIONS = Path(__file__).parent / "migrations"
CORE_VERSIONS = CORE_MIGRATIONS / "versions"


def sync_url(url: str) -> str:
    """The synchronous driver URL for an async one (Alembic runs synchronously)."""
    return url.replace("sqlite+aiosqlite", "sqlite").replace(
        "postgresql+asyncpg", "postgresql+psycopg"
    )


def alembic_config(settings: Settings, script_location: Path) -> Config:
    """An Alembic config for one service's database, built in code (no ini file needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    locations = dict.fromkeys([CORE_VERSIONS, script_location / "versions"])
    cfg.set_main_option("version_locations", " ".join(str(p) for p in locations))
    cfg.set_main_option("path_separator", "space")
    cfg.attributes["settings"] = settings
    return cfg


def upgrade(
    settings: Settings, script_location: Path = CORE_MIGRATIONS, revision: str = "heads"
) -> None:
    """Bring a service's database up to ``revision`` (all heads by default)."""
    if settings.effective_database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings, script_location), revision)


def run_env(target_metadata: list[MetaData]) -> None:
    """The body of every service's ``migrations/env.py`` (online mode only)."""
    from alembic import context

    settings: Settings = context.config.attributes["settings"]
    schema = settings.effective_db_schema
    connect_args: dict[str, Any] = {}
    if schema:
        connect_args["options"] = f"-csearch_path={schema}"
    engine = create_engine(
        sync_url(settings.effective_database_url),
        poolclass=pool.NullPool,
        connect_args=connect_args,
    )
    with engine.connect() as connection:
        if schema:
            connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            connection.commit()
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
