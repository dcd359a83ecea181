"""``python -m prognos.scheduler migrate|serve``."""

from pathlib import Path

import prognos.core.grpc_io  # noqa: F401  (first: it sets gRPC's I/O before grpc loads)
from prognos.core.service import main, package_version
from prognos.scheduler.bootstrap import STREAM, TRANSLATORS, build

MIGRATIONS = Path(__file__).resolve().parents[3] / "migrations"

if __name__ == "__main__":
    main(
        "scheduler",
        build=build,
        migrations=MIGRATIONS,
        version=package_version("prognos-scheduler"),
        stream=STREAM,
        translators=TRANSLATORS,
    )
