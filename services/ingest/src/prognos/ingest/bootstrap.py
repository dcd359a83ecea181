"""The ingest service's composition root."""

from __future__ import annotations

import asyncio
import gc
import logging

from prognos.api import wire
from prognos.api.ingest.v1 import events_pb2 as _ingest_events
from prognos.core.errors import InvalidArgumentError
from prognos.core.service import Runtime
from prognos.ingest import consumers
from prognos.ingest.archive_process import ArchiveProcess
from prognos.ingest.domain import AssetInvalidError, AssetTypeInvalidError, SnapshotInvalidError
from prognos.ingest.files import FileImporter, UploadLimits
from prognos.ingest.formats import FileFormatError
from prognos.ingest.grpc_api import SERVICE_NAME, IngestServicer, add_ingest_service
from prognos.ingest.intake import Catalog, Intake
from prognos.ingest.quarantine import QuarantineRecorder
from prognos.ingest.trail import telemetry_steps
from prognos.ingest.validation import BatchRejectedError

log = logging.getLogger(__name__)

STREAM = wire.stream_of(_ingest_events.AssetTypeRegistered)
_CATALOG_REFRESH_S = 2.0
_GC_THRESHOLDS = (20_000, 20, 20)

#: HTTP/2 flow control of telemetry streams. gRPC's bandwidth-delay probing would let a
#: client push many megabytes past a stream whose service stopped reading (JetStream slow
#: or down); a fixed 4 MiB window per stream bounds that, and still carries 80 MB/s per
#: stream over a 50 ms round trip.
SERVER_OPTIONS = (
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 4 << 20),
)


def _invalid(reason: str) -> object:
    return lambda e: InvalidArgumentError([(e.field, e.description)], reason=reason)


TRANSLATORS = {
    AssetTypeInvalidError: _invalid("ASSET_TYPE_INVALID"),
    AssetInvalidError: _invalid("ASSET_INVALID"),
    SnapshotInvalidError: _invalid("SNAPSHOT_INVALID"),
    FileFormatError: _invalid("FILE_UNREADABLE"),
    BatchRejectedError: lambda e: InvalidArgumentError(
        [(v.field, v.description) for v in e.violations], reason="BATCH_UNREADABLE"
    ),
}


async def build(runtime: Runtime) -> None:
    settings = runtime.settings
    catalog = Catalog(runtime.store)
    intake = Intake(settings, runtime.store, runtime.js, catalog)
    await intake.start(runtime.nc.max_payload)

    archive: ArchiveProcess | None = None
    if settings.archive_enabled:
        archive = ArchiveProcess(settings, runtime.nc)
        runtime.background.append(archive.run)
        runtime.server.on_shutdown(archive.stop)
    files = FileImporter(
        runtime.store,
        intake,
        settings.data_dir / "uploads",
        window=settings.telemetry_window,
        stall_timeout_s=settings.telemetry_stall_timeout_s,
        limits=UploadLimits(
            max_line_bytes=settings.upload_max_line_bytes,
            max_lines=settings.upload_max_lines,
            max_assets=settings.upload_max_assets,
        ),
    )
    recorder = QuarantineRecorder(runtime.store, runtime.js, catalog)
    runtime.background.append(recorder.run)
    runtime.trail_sources.append(telemetry_steps)
    runtime.server.on_shutdown(recorder.stop)
    for sub in consumers.subscriptions():
        runtime.subscribe(sub)

    async def refresh_catalog() -> None:
        while True:
            await asyncio.sleep(_CATALOG_REFRESH_S)
            try:
                await catalog.refresh_types()
            except Exception:
                log.warning("refreshing the asset types failed", exc_info=True)

    runtime.background.append(refresh_catalog)
    # The intake allocates many short-lived objects per batch; full collections that walk
    # every module, pint unit and SQLAlchemy construct loaded at start took a quarter of the
    # service's CPU under load. What exists now lives as long as the process: freeze it out
    # of the collector's walks, and collect the young generation less often.
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)
    runtime.server.add_service(
        add_ingest_service,
        IngestServicer(settings, runtime.store, runtime.js, intake, files, archive),
        SERVICE_NAME,
    )
