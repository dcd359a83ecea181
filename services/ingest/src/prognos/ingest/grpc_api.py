"""The IngestService servicer: protobuf in, commands to handlers, protobuf out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError, Message

from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.core.context import current_actor
from prognos.core.errors import (
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from prognos.ingest import adapters, handlers
from prognos.ingest.domain import (
    AssetSpec,
    DatasetSnapshotCreated,
    SnapshotFile,
    snapshot_content_hash,
    validate_snapshot_name,
)
from prognos.ingest.failures import FailureHistoryImporter, plan_of
from prognos.ingest.intake import TELEMETRY_STREAM, Pending, now_us
from prognos.ingest.translate import (
    asset_to_proto,
    snapshot_to_proto,
    spec_from_proto,
    spec_to_proto,
)
from prognos.ingest.validation import BatchRejectedError

if TYPE_CHECKING:
    from nats.js import JetStreamContext

    from prognos.core.config import Settings
    from prognos.core.store import EventStore
    from prognos.ingest.archive_process import ArchiveProcess
    from prognos.ingest.files import FileImporter
    from prognos.ingest.intake import Intake

log = logging.getLogger(__name__)

SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
_END = object()
_DEFAULT_PAGE = 100
_MAX_PAGE = 1_000
_MAX_ASSETS = 10_000


@dataclass(frozen=True)
class Unreadable:
    """A request whose bytes are not the expected message."""

    expected: str
    error: str


def _tolerant(cls: type[Message]) -> Callable[[bytes], Message | Unreadable]:
    def parse(data: bytes) -> Message | Unreadable:
        try:
            return cls.FromString(data)
        except DecodeError as e:
            return Unreadable(cls.DESCRIPTOR.full_name, str(e) or "malformed protobuf")

    return parse


def _unreadable(request: Unreadable, where: str = "request") -> InvalidArgumentError:
    return InvalidArgumentError(
        [(where, f"not a {request.expected} message ({request.error})")],
        reason="UNREADABLE_REQUEST",
    )


def add_ingest_service(servicer: IngestServicer, server: grpc.aio.Server) -> None:
    """Serve ``servicer`` like the generated function does, but let unreadable bytes through.

    The generated deserializers raise on bytes that are not the request message, which
    gRPC reports without details; these return an ``Unreadable`` instead, which the
    servicer answers with INVALID_ARGUMENT naming the request.
    """
    handlers_by_name: dict[str, grpc.RpcMethodHandler] = {}
    for method in ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].methods:
        request_cls = getattr(ingest_pb2, method.input_type.name)
        response_cls = getattr(ingest_pb2, method.output_type.name)
        behavior = getattr(servicer, method.name)
        options: dict[str, Any] = {
            "request_deserializer": _tolerant(request_cls),
            "response_serializer": response_cls.SerializeToString,
        }
        if method.client_streaming and method.server_streaming:
            handler = grpc.stream_stream_rpc_method_handler(behavior, **options)
        elif method.client_streaming:
            handler = grpc.stream_unary_rpc_method_handler(behavior, **options)
        else:
            handler = grpc.unary_unary_rpc_method_handler(_guarded(behavior), **options)
        handlers_by_name[method.name] = handler
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers_by_name),)
    )
    server.add_registered_method_handlers(SERVICE_NAME, handlers_by_name)


def _guarded(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Unreadable):
            raise _unreadable(request)
        return await behavior(request, context)

    return guarded


async def _next_message(iterator: AsyncIterator[Any], idle_s: float) -> Any:
    """The upload's next message, or None at its end; a stalled sender is cut off."""
    try:
        return await asyncio.wait_for(anext(iterator, None), idle_s)
    except TimeoutError:
        raise ResourceExhaustedError(
            f"the upload sent nothing for {idle_s:g} s (upload_idle_timeout_s); "
            "send the file's messages without pausing",
            reason="UPLOAD_IDLE",
            violations=[("upload_idle_timeout_s", f"at most {idle_s:g} s between messages")],
            metadata={"limit": "upload_idle_timeout_s"},
        ) from None


async def _header_and_chunks(
    request_iterator: AsyncIterator[Any], idle_s: float
) -> tuple[Any, AsyncIterator[bytes]]:
    """The header of an upload (its first message) and an iterator of its chunks.

    Each message must arrive within ``idle_s`` of the one before (of the call's start for
    the header), or the upload ends with RESOURCE_EXHAUSTED naming ``upload_idle_timeout_s``.
    """
    iterator = aiter(request_iterator)
    first = await _next_message(iterator, idle_s)
    if first is None:
        raise InvalidArgumentError([("header", "send the file's header first")])
    if isinstance(first, Unreadable):
        raise _unreadable(first)
    if first.WhichOneof("content") != "header":
        raise InvalidArgumentError([("header", "the first message must hold the header")])

    async def chunks() -> AsyncIterator[bytes]:
        index = 1
        while (request := await _next_message(iterator, idle_s)) is not None:
            if isinstance(request, Unreadable):
                raise _unreadable(request, f"messages[{index}]")
            if request.WhichOneof("content") != "chunk":
                raise InvalidArgumentError(
                    [(f"messages[{index}].header", "only the first message holds the header")]
                )
            yield request.chunk
            index += 1

    return first.header, chunks()


@dataclass
class _StreamTally:
    """What one telemetry stream delivered, for its audit entries."""

    started: float = field(default_factory=time.monotonic)
    last_rollup: float = field(default_factory=time.monotonic)
    batches: int = 0
    accepted: int = 0
    quarantined: int = 0
    duplicates: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    assets: set[str] = field(default_factory=set)
    first_sequence: int = 0
    last_sequence: int = 0

    def add(self, pending: Pending, receipt: ingest_pb2.TelemetryReceipt) -> None:
        self.batches += 1
        if receipt.duplicate:
            self.duplicates += 1
            return
        self.accepted += receipt.accepted_count
        self.quarantined += receipt.quarantined_count
        for reason, count in pending.counts.items():
            name = ingest_pb2.QuarantineReason.Name(reason)  # type: ignore[arg-type]
            self.by_reason[name] = self.by_reason.get(name, 0) + count
        if len(self.assets) < 100_000:
            self.assets.add(pending.asset_id)
        if receipt.stream_sequence:
            self.first_sequence = self.first_sequence or receipt.stream_sequence
            self.last_sequence = receipt.stream_sequence

    def details(self, outcome: str) -> dict[str, Any]:
        return {
            "outcome": outcome,
            "batches": self.batches,
            "accepted_readings": self.accepted,
            "quarantined_readings": self.quarantined,
            "quarantined_by_reason": dict(sorted(self.by_reason.items())),
            "duplicate_batches": self.duplicates,
            "assets": len(self.assets),
            "first_stream_sequence": self.first_sequence,
            "last_stream_sequence": self.last_sequence,
            "seconds": round(time.monotonic() - self.started, 3),
        }

    def reset(self) -> None:
        fresh = _StreamTally()
        self.__dict__.update(fresh.__dict__)


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    """Asset types and assets, the telemetry stream, file uploads, quarantine and snapshots."""

    def __init__(
        self,
        settings: Settings,
        store: EventStore,
        js: JetStreamContext,
        intake: Intake,
        files: FileImporter,
        archiver: ArchiveProcess | None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._js = js
        self._intake = intake
        self._files = files
        self._archiver = archiver
        self._stall = settings.telemetry_stall_timeout_s
        self._window = max(1, settings.telemetry_window)
        self._background: set[asyncio.Task[None]] = set()
        self._uploads: dict[str, int] = {}  # uploads running per caller
        self._failures = FailureHistoryImporter(
            store,
            intake,
            files,
            max_future_s=settings.telemetry_max_future_s,
            stall_timeout_s=self._stall,
        )

    # -- asset types ------------------------------------------------------------------------

    async def RegisterAssetType(
        self, request: ingest_pb2.RegisterAssetTypeRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.RegisterAssetTypeResponse:
        spec = spec_from_proto(request.asset_type)
        async with self._store.transaction() as uow:
            version = await handlers.register_asset_type(uow, handlers.RegisterAssetType(spec))
        self._intake.catalog.remember_type(spec, version)
        return ingest_pb2.RegisterAssetTypeResponse(asset_type=spec_to_proto(spec), version=version)

    async def UpdateAssetType(
        self, request: ingest_pb2.UpdateAssetTypeRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.UpdateAssetTypeResponse:
        spec = spec_from_proto(request.asset_type)
        async with self._store.transaction() as uow:
            version = await handlers.update_asset_type(
                uow, handlers.UpdateAssetType(spec, request.expected_version)
            )
        self._intake.catalog.remember_type(spec, version)
        return ingest_pb2.UpdateAssetTypeResponse(asset_type=spec_to_proto(spec), version=version)

    async def GetAssetType(
        self, request: ingest_pb2.GetAssetTypeRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.GetAssetTypeResponse:
        async with self._store.transaction() as uow:
            asset_type = await handlers.get_asset_type(uow, request.name)
        return ingest_pb2.GetAssetTypeResponse(
            asset_type=spec_to_proto(asset_type.spec), version=asset_type.version
        )

    async def ListAssetTypes(
        self, request: ingest_pb2.ListAssetTypesRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.ListAssetTypesResponse:
        async with self._store.reader() as conn:
            rows = await adapters.list_asset_types(conn)
        return ingest_pb2.ListAssetTypesResponse(
            asset_types=[spec_to_proto(spec) for spec, _ in rows]
        )

    # -- assets -----------------------------------------------------------------------------

    async def RegisterAsset(
        self, request: ingest_pb2.RegisterAssetRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.RegisterAssetResponse:
        spec = AssetSpec(request.asset_id, request.plant, request.asset_type, request.erp_id)
        async with self._store.transaction() as uow:
            asset = await handlers.register_asset(uow, handlers.RegisterAsset(spec), now_us())
        self._intake.catalog.remember_asset(spec)
        return ingest_pb2.RegisterAssetResponse(
            asset=asset_to_proto(asset.spec, asset.registered_at_us), version=asset.version
        )

    async def RegisterAssets(
        self, request: ingest_pb2.RegisterAssetsRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.RegisterAssetsResponse:
        if len(request.assets) > _MAX_ASSETS:
            raise InvalidArgumentError(
                [("assets", f"{len(request.assets)} assets, at most {_MAX_ASSETS} per call")]
            )
        commands = [
            handlers.RegisterAsset(AssetSpec(a.asset_id, a.plant, a.asset_type, a.erp_id))
            for a in request.assets
        ]
        async with self._store.transaction() as uow:
            stored, created = await handlers.register_assets(uow, commands, now_us())
        for row in stored:
            self._intake.catalog.remember_asset(row.spec)
        return ingest_pb2.RegisterAssetsResponse(
            assets=[asset_to_proto(row.spec, row.registered_at_us) for row in stored],
            registered_count=created,
        )

    async def GetAsset(
        self, request: ingest_pb2.GetAssetRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.GetAssetResponse:
        async with self._store.transaction() as uow:
            asset = await handlers.get_asset(uow, request.asset_id)
        return ingest_pb2.GetAssetResponse(
            asset=asset_to_proto(asset.spec, asset.registered_at_us), version=asset.version
        )

    # -- telemetry --------------------------------------------------------------------------

    async def StreamTelemetry(
        self,
        request_iterator: AsyncIterator[ingest_pb2.StreamTelemetryRequest | Unreadable],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[ingest_pb2.StreamTelemetryResponse]:
        """Receipts in batch order; reading pauses while ``telemetry_window`` are in flight."""
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=self._window)
        tally = _StreamTally()
        actor = current_actor() or ""
        peer = context.peer() or ""

        async def read() -> None:
            index = 0
            try:
                async for request in request_iterator:
                    if isinstance(request, Unreadable):
                        raise _unreadable(request, f"batches[{index}]")
                    try:
                        pending = await self._intake.submit(request.batch)
                    except BatchRejectedError as e:
                        raise InvalidArgumentError(
                            [(f"batches[{index}].{v.field}", v.description) for v in e.violations],
                            reason="BATCH_UNREADABLE",
                            metadata={
                                "batch_id": request.batch.batch_id[:200],
                                "index": str(index),
                            },
                        ) from None
                    await queue.put(pending)
                    index += 1
                await queue.put(_END)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                await queue.put(e)

        reader = asyncio.create_task(read(), name="telemetry-stream-reader")
        outcome = "failed"
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    outcome = "completed"
                    return
                if isinstance(item, Exception):
                    outcome = f"failed: {type(item).__name__}"
                    raise item
                receipt = await item.receipt(self._stall)
                tally.add(item, receipt)
                yield ingest_pb2.StreamTelemetryResponse(receipt=receipt)
                if (
                    time.monotonic() - tally.last_rollup
                    >= self._settings.telemetry_audit_interval_s
                ):
                    self._audit_stream(tally, "open", actor, peer)
                    tally.reset()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            if tally.batches or outcome != "completed":
                self._audit_stream(tally, outcome, actor, peer)

    def _audit_stream(self, tally: _StreamTally, outcome: str, actor: str, peer: str) -> None:
        details = {**tally.details(outcome), "peer": peer}

        async def write() -> None:
            try:
                async with self._store.transaction(actor=actor or None) as uow:
                    await uow.audit(
                        "telemetry.received",
                        "telemetry/stream",
                        reason="telemetry accepted and quarantined in bulk",
                        details=details,
                    )
            except Exception:
                log.exception("could not audit a telemetry stream: %s", details)

        task = asyncio.create_task(write())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @contextlib.contextmanager
    def _upload_slot(self, context: grpc.aio.ServicerContext) -> Iterator[None]:
        """Count one upload of the caller; refuse it when the caller runs too many already."""
        caller = current_actor() or context.peer() or ""
        limit = self._settings.upload_max_concurrent
        if self._uploads.get(caller, 0) >= limit:
            raise ResourceExhaustedError(
                f"at most {limit} uploads at once per caller (upload_max_concurrent); "
                "retry when one has finished",
                reason="TOO_MANY_UPLOADS",
                retry_after_s=1.0,
                violations=[("upload_max_concurrent", f"at most {limit} uploads at once")],
                metadata={"limit": "upload_max_concurrent"},
            )
        self._uploads[caller] = self._uploads.get(caller, 0) + 1
        try:
            yield
        finally:
            self._uploads[caller] -= 1
            if not self._uploads[caller]:
                del self._uploads[caller]

    async def UploadTelemetryFile(
        self,
        request_iterator: AsyncIterator[ingest_pb2.UploadTelemetryFileRequest | Unreadable],
        context: grpc.aio.ServicerContext,
    ) -> ingest_pb2.UploadTelemetryFileResponse:
        with self._upload_slot(context):
            return await self._upload_telemetry_file(request_iterator)

    async def _upload_telemetry_file(
        self,
        request_iterator: AsyncIterator[ingest_pb2.UploadTelemetryFileRequest | Unreadable],
    ) -> ingest_pb2.UploadTelemetryFileResponse:
        header, chunks = await _header_and_chunks(
            request_iterator, self._settings.upload_idle_timeout_s
        )
        plan = self._files.plan(header)
        path, content_hash, size = await self._files.spool(chunks)
        try:
            result = await self._files.run(plan, path, content_hash)
        finally:
            path.unlink(missing_ok=True)
        async with self._store.transaction() as uow:
            await uow.audit(
                "telemetry.file_imported",
                f"telemetry/file/{content_hash}",
                reason="telemetry accepted and quarantined in bulk",
                details={
                    "file_name": header.file_name,
                    "format": ingest_pb2.TelemetryFileFormat.Name(header.format),
                    "bytes": size,
                    "rows": result.row_count,
                    "batches": result.batches,
                    "duplicate_batches": result.duplicates,
                    "accepted_readings": result.accepted_count,
                    "quarantined_readings": result.quarantined_count,
                    "assets": len(result.asset_ids),
                    "labels": result.label_count,
                },
            )
        return result.to_proto()

    async def ImportFailureHistory(
        self,
        request_iterator: AsyncIterator[ingest_pb2.ImportFailureHistoryRequest | Unreadable],
        context: grpc.aio.ServicerContext,
    ) -> ingest_pb2.ImportFailureHistoryResponse:
        with self._upload_slot(context):
            return await self._import_failure_history(request_iterator)

    async def _import_failure_history(
        self,
        request_iterator: AsyncIterator[ingest_pb2.ImportFailureHistoryRequest | Unreadable],
    ) -> ingest_pb2.ImportFailureHistoryResponse:
        header, chunks = await _header_and_chunks(
            request_iterator, self._settings.upload_idle_timeout_s
        )
        plan = plan_of(header)
        path, content_hash, size = await self._failures.spool(chunks)
        try:
            result = await self._failures.run(plan, path, content_hash)
        finally:
            path.unlink(missing_ok=True)
        async with self._store.transaction() as uow:
            await uow.audit(
                "failure_history.imported",
                f"failure_history/file/{content_hash}",
                reason="failure history recorded as labels and quarantined in bulk",
                details={
                    "file_name": header.file_name,
                    "format": ingest_pb2.FailureHistoryFormat.Name(header.format),
                    "bytes": size,
                    "rows": result.row_count,
                    "labels_recorded": result.recorded_count,
                    "labels_known_before": result.duplicate_count,
                    "quarantined_rows": result.quarantined_count,
                    "quarantined_by_reason": result.by_reason(),
                },
            )
        return result.to_proto()

    # -- quarantine -------------------------------------------------------------------------

    async def ListQuarantine(
        self, request: ingest_pb2.ListQuarantineRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.ListQuarantineResponse:
        limit = min(request.page_size or _DEFAULT_PAGE, _MAX_PAGE)
        before: int | None = None
        if request.page_token:
            try:
                before = int(request.page_token)
            except ValueError:
                raise InvalidArgumentError([("page_token", "not a token of this list")]) from None
        since = request.since.ToMicroseconds() if request.HasField("since") else None
        async with self._store.reader() as conn:
            rows = await adapters.list_quarantine(
                conn,
                asset_id=request.asset_id,
                reason=int(request.reason),
                since_us=since,
                before_id=before,
                limit=limit + 1,
            )
            totals = await adapters.quarantine_totals(
                conn, asset_id=request.asset_id, reason=int(request.reason), since_us=since
            )
        response = ingest_pb2.ListQuarantineResponse()
        for row in rows[:limit]:
            reading = response.readings.add(
                asset_id=row.asset_id,
                batch_id=row.batch_id,
                channel=row.channel,
                value=float("nan") if row.value is None else row.value,
                reason=row.reason,  # type: ignore[arg-type]
                detail=row.detail,
            )
            if row.time_us is not None:
                reading.time.FromMicroseconds(row.time_us)
            reading.quarantined_at.FromMicroseconds(row.quarantined_at_us)
        if len(rows) > limit:
            response.next_page_token = str(rows[limit - 1].id)
        for asset_id, reason, count in totals:
            response.counts.add(asset_id=asset_id, reason=reason, count=count)  # type: ignore[arg-type]
        return response

    # -- dataset snapshots ------------------------------------------------------------------

    async def CreateDatasetSnapshot(
        self, request: ingest_pb2.CreateDatasetSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.CreateDatasetSnapshotResponse:
        validate_snapshot_name(request.name)
        if self._intake.catalog.type_of(request.asset_type) is None:
            await self._intake.catalog.refresh_types()
            if self._intake.catalog.type_of(request.asset_type) is None:
                raise NotFoundError("asset_type", request.asset_type)
        start = request.start_time.ToMicroseconds() if request.HasField("start_time") else None
        end = request.end_time.ToMicroseconds() if request.HasField("end_time") else None
        if start is not None and end is not None and end <= start:
            raise InvalidArgumentError([("end_time", "must be after start_time")])
        if self._archiver is None:
            raise UnavailableError(
                "this ingest replica does not run the archive", reason="ARCHIVE_ELSEWHERE"
            )
        info = await self._js.stream_info(TELEMETRY_STREAM)
        through = int(info.state.last_seq)
        wait = max(30.0, self._stall)
        if not await self._archiver.sync(through, wait):
            raise UnavailableError(
                f"the archive has not caught up with the telemetry stream within {wait:g}s",
                retry_after_s=5.0,
                reason="ARCHIVE_CATCHING_UP",
            )
        async with self._store.reader() as conn:
            catalogued = await adapters.select_archive_files(
                conn, request.asset_type, list(request.asset_ids), start, end
            )
        files = tuple(
            SnapshotFile(
                path=f.path,
                content_hash=f.content_hash,
                row_count=f.row_count,
                size_bytes=f.size_bytes,
                kind=f.kind,
                asset_id=f.asset_id,
                min_time_us=f.min_time_us,
                max_time_us=f.max_time_us,
            )
            for f in catalogued
        )
        async with self._store.transaction() as uow:
            event = DatasetSnapshotCreated(
                snapshot_id=str(uuid.uuid4()),
                name=request.name,
                asset_type=request.asset_type,
                asset_ids=tuple(sorted(request.asset_ids)),
                start_us=start,
                end_us=end,
                files=files,
                content_hash=snapshot_content_hash(files),
                row_count=sum(f.row_count for f in files if f.kind == "telemetry"),
                root_uri=self._archiver.root_uri,
                created_at_us=now_us(),
                created_by=uow.actor,
            )
            version = await handlers.create_snapshot(uow, event)
        return ingest_pb2.CreateDatasetSnapshotResponse(
            snapshot=snapshot_to_proto(event), version=version
        )

    async def GetDatasetSnapshot(
        self, request: ingest_pb2.GetDatasetSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.GetDatasetSnapshotResponse:
        key = request.WhichOneof("key")
        if key is None:
            raise InvalidArgumentError([("key", "give snapshot_id or name")])
        async with self._store.reader() as conn:
            found = await adapters.get_snapshot(
                conn, snapshot_id=request.snapshot_id, name=request.name
            )
        if found is None:
            raise NotFoundError("dataset_snapshot", request.snapshot_id or request.name)
        return ingest_pb2.GetDatasetSnapshotResponse(snapshot=snapshot_to_proto(found))
