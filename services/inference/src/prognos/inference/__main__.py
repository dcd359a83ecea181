"""``python -m prognos.inference migrate|serve``."""

from pathlib import Path

import prognos.core.grpc_io  # noqa: F401  (first: it sets gRPC's I/O before grpc loads)
from prognos.core.service import main, package_version
from prognos.inference.bootstrap import STREAM, build

MIGRATIONS = Path(__file__).resolve().parents[3] / "migrations"

if __name__ == "__main__":
    main(
        "inference",
        build=build,
        migrations=MIGRATIONS,
        version=package_version("prognos-inference"),
        stream=STREAM,
    )
