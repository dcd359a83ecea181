"""The ModelRegistry servicer: requests -> commands, results and errors -> responses."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import grpc

from prognos.api.ingest.v1 import ingest_pb2
from prognos.api.registry.v1 import registry_pb2, registry_pb2_grpc
from prognos.core.context import current_actor
from prognos.core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from prognos.registry import adapters, handlers
from prognos.registry.artifacts import ArtifactMismatchError, ArtifactNotFoundError, parse_hash
from prognos.registry.domain import (
    Alias,
    AliasTrack,
    Artifact,
    PromotionPolicy,
    RegistryRuleError,
    TrainingSource,
    Trigger,
)
from prognos.registry.runner import WorkerFailedError
from prognos.registry.translate import (
    ALIAS_FROM_PROTO,
    STATE_FROM_PROTO,
    STATUS_FROM_PROTO,
    alias_change_to_proto,
    artifact_from_proto,
    from_timestamp,
    lineage_from_proto,
    policy_to_proto,
    training_run_to_proto,
)
from prognos.registry.worker import BUNDLE_FILES

if TYPE_CHECKING:
    from prognos.core.store import EventStore
    from prognos.registry.artifacts import ArtifactStore
    from prognos.registry.runner import ModelTasks, RunChanges, TrainingRunner

DEFAULT_PAGE = 100
MAX_PAGE = 1000
MAX_UPLOAD_BYTES = 2 << 30
#: What a model version registered from outside must bring: the files evaluation and the
#: champion comparison load, and the two serving forms whose agreement is checked.
REQUIRED_ARTIFACTS = (*BUNDLE_FILES, "saved_model.tar", "model.tflite")
_WATCH_POLL_S = 1.0


def _actor() -> str:
    return current_actor() or "anonymous"


def _page(page_size: int, page_token: str) -> tuple[int, int]:
    size = min(page_size or DEFAULT_PAGE, MAX_PAGE)
    if not page_token:
        return 0, size
    if not page_token.isdigit():
        raise InvalidArgumentError([("page_token", "not a token from a previous response")])
    return int(page_token), size


def _next_token(offset: int, size: int, returned: int) -> str:
    return str(offset + size) if returned == size else ""


def _alias(value: int, field_name: str = "alias") -> Alias:
    alias = ALIAS_FROM_PROTO.get(value)  # type: ignore[call-overload]
    if alias is None:
        raise InvalidArgumentError([(field_name, "MODEL_ALIAS_CHAMPION or MODEL_ALIAS_CHALLENGER")])
    return alias


class RegistryServicer(registry_pb2_grpc.ModelRegistryServicer):
    """Model versions, aliases, promotion policies and training runs."""

    def __init__(
        self,
        store: EventStore,
        artifacts: ArtifactStore,
        runner: TrainingRunner,
        tasks: ModelTasks,
        changes: RunChanges,
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._runner = runner
        self._tasks = tasks
        self._changes = changes

    @contextlib.asynccontextmanager
    async def _refusal_audited(
        self, action: str, subject: str, details: dict[str, Any]
    ) -> AsyncIterator[None]:
        """Write an audit entry for a refused command, in a transaction of its own."""
        try:
            yield
        except RegistryRuleError as error:
            async with self._store.transaction() as uow:
                await uow.audit(
                    f"{action}.refused",
                    subject,
                    reason=str(error),
                    actor=_actor(),
                    details={"rule": error.reason, **details},
                )
            raise

    async def _resolve(self, reference: str, field_name: str = "model_version_id") -> str:
        """The version id a request's reference names (see ``handlers.resolve_version``)."""
        async with self._store.reader() as conn:
            return await handlers.resolve_version(conn, reference, field_name)

    # --- reads ---------------------------------------------------------------------------

    async def _version_proto(self, model_version_id: str) -> tuple[registry_pb2.ModelVersion, int]:
        async with self._store.reader() as conn:
            found = await adapters.get_model_version(conn, model_version_id)
            if found is None:
                raise NotFoundError("model_version", model_version_id)
            aliases = await adapters.aliases_of_version(conn, model_version_id)
        version = registry_pb2.ModelVersion.FromString(found[0])
        version.aliases.extend(
            registry_pb2.ModelAlias.Value(f"MODEL_ALIAS_{a.upper()}") for a in aliases
        )
        return version, found[1]

    async def _policy(self, asset_type: str) -> PromotionPolicy:
        stored = await self._store.read_stream(handlers.policy_stream(asset_type))
        return PromotionPolicy.replay(asset_type, [e.event for e in stored])

    async def ListAssetTypes(
        self, request: registry_pb2.ListAssetTypesRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListAssetTypesResponse:
        size = min(request.page_size or DEFAULT_PAGE, MAX_PAGE)
        async with self._store.reader() as conn:
            rows = await adapters.list_asset_types(conn, after=request.page_token, limit=size)
            holders = {name: await adapters.alias_holders_of(conn, name) for name, _, _ in rows}
        types = []
        for name, version, definition in rows:
            policy = await self._policy(name)
            types.append(
                registry_pb2.RegisteredAssetType(
                    asset_type=ingest_pb2.AssetType.FromString(definition),
                    asset_type_version=version,
                    champion_model_version_id=holders[name].get("champion", ""),
                    challenger_model_version_id=holders[name].get("challenger", ""),
                    promotion_policy=policy_to_proto(policy),
                )
            )
        return registry_pb2.ListAssetTypesResponse(
            asset_types=types, next_page_token=rows[-1][0] if len(rows) == size else ""
        )

    async def GetModelVersion(
        self, request: registry_pb2.GetModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.GetModelVersionResponse:
        version_id = await self._resolve(request.model_version_id)
        version, stream_version = await self._version_proto(version_id)
        return registry_pb2.GetModelVersionResponse(model_version=version, version=stream_version)

    async def ListModelVersions(
        self, request: registry_pb2.ListModelVersionsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListModelVersionsResponse:
        offset, size = _page(request.page_size, request.page_token)
        status = STATUS_FROM_PROTO.get(request.status)  # type: ignore[call-overload]
        async with self._store.reader() as conn:
            rows = await adapters.list_model_versions(
                conn,
                asset_type=request.asset_type,
                status=str(status) if status else "",
                offset=offset,
                limit=size,
            )
            versions = []
            for data in rows:
                version = registry_pb2.ModelVersion.FromString(data)
                for alias in await adapters.aliases_of_version(conn, version.id):
                    version.aliases.append(
                        registry_pb2.ModelAlias.Value(f"MODEL_ALIAS_{alias.upper()}")
                    )
                versions.append(version)
        return registry_pb2.ListModelVersionsResponse(
            model_versions=versions, next_page_token=_next_token(offset, size, len(rows))
        )

    async def GetAliasHistory(
        self, request: registry_pb2.GetAliasHistoryRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.GetAliasHistoryResponse:
        handlers.check_asset_type_name(request.asset_type)
        aliases = (
            [_alias(request.alias)]
            if request.alias != registry_pb2.MODEL_ALIAS_UNSPECIFIED
            else list(Alias)
        )
        moves = []
        for alias in aliases:
            stored = await self._store.read_stream(handlers.alias_stream(request.asset_type, alias))
            track = AliasTrack.replay(request.asset_type, alias, [e.event for e in stored])
            if request.HasField("at"):
                effective = track.at(from_timestamp(request.at))
                moves.extend([effective] if effective else [])
            else:
                moves.extend(track.moves)
        moves.sort(key=lambda m: m.moved_at, reverse=True)
        return registry_pb2.GetAliasHistoryResponse(
            changes=[alias_change_to_proto(m) for m in moves]
        )

    # --- model versions ------------------------------------------------------------------

    async def RegisterModelVersion(
        self, request: registry_pb2.RegisterModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.RegisterModelVersionResponse:
        handlers.check_asset_type_name(request.asset_type)
        if request.idempotency_key:
            async with self._store.reader() as conn:
                existing = await adapters.model_version_by_key(conn, request.idempotency_key)
            if existing is not None:
                version, stream_version = await self._version_proto(existing)
                return registry_pb2.RegisterModelVersionResponse(
                    model_version=version, version=stream_version
                )
        artifacts = await self._stored_artifacts(request.artifacts)
        missing = [name for name in REQUIRED_ARTIFACTS if name not in artifacts]
        if missing:
            raise InvalidArgumentError(
                [("artifacts", f"missing {', '.join(missing)} (upload them with UploadArtifact)")]
            )
        try:
            checks = await self._tasks.verify_serving(
                {n: a.content_hash for n, a in artifacts.items()}
            )
        except WorkerFailedError as error:
            raise FailedPreconditionError(
                [("EXPORT", "artifacts/model.tflite", str(error))],
                f"the LiteRT model does not match the SavedModel: {error}",
                reason="EXPORT_MISMATCH",
            ) from None
        metrics = dict(request.metrics)
        metrics.update(checks)
        lineage = lineage_from_proto(request.lineage)
        async with self._store.transaction() as uow:
            version = await handlers.register_model_version(
                uow,
                handlers.RegisterModelVersion(
                    asset_type=request.asset_type,
                    metrics=metrics,
                    lineage=lineage,
                    artifacts=tuple(artifacts.values()),
                    trained_by=_actor(),
                    description=request.description,
                    idempotency_key=request.idempotency_key,
                ),
            )
        proto, stream_version = await self._version_proto(version.id)
        return registry_pb2.RegisterModelVersionResponse(
            model_version=proto, version=stream_version
        )

    async def _stored_artifacts(self, artifacts: Any) -> dict[str, Artifact]:
        """Each named artifact as the store holds it (its URI is the store's)."""
        found: dict[str, Artifact] = {}
        for i, message in enumerate(artifacts):
            artifact = artifact_from_proto(message)
            where = f"artifacts[{i}]"
            if not artifact.name or "/" in artifact.name:
                raise InvalidArgumentError([(f"{where}.name", "a file name, without '/'")])
            if artifact.name in found:
                raise InvalidArgumentError([(f"{where}.name", f"{artifact.name} appears twice")])
            try:
                parse_hash(artifact.content_hash)
                blob = await self._artifacts.stat(artifact.content_hash)
            except ArtifactMismatchError as error:
                raise InvalidArgumentError([(f"{where}.content_hash", str(error))]) from None
            except ArtifactNotFoundError:
                raise NotFoundError(
                    "artifact", artifact.content_hash, f"{artifact.name} was not uploaded"
                ) from None
            found[artifact.name] = Artifact(
                artifact.name, blob.uri, blob.content_hash, blob.size_bytes
            )
        return found

    async def ApproveModelVersion(
        self, request: registry_pb2.ApproveModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ApproveModelVersionResponse:
        version_id = await self._resolve(request.model_version_id)
        subject = f"model_version/{version_id}"
        async with self._refusal_audited("model_version.approve", subject, {}):
            async with self._store.transaction() as uow:
                version = await handlers.approve_model_version(
                    uow,
                    version_id,
                    _actor(),
                    request.comment,
                    request.expected_version,
                )
        proto, stream_version = await self._version_proto(version.id)
        return registry_pb2.ApproveModelVersionResponse(model_version=proto, version=stream_version)

    async def PromoteModelVersion(
        self, request: registry_pb2.PromoteModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.PromoteModelVersionResponse:
        alias = _alias(request.alias)
        version_id = await self._resolve(request.model_version_id)
        subject = f"model_version/{version_id}"
        async with self._refusal_audited("alias.promote", subject, {"alias": str(alias)}):
            async with self._store.transaction() as uow:
                move = await handlers.promote_model_version(
                    uow, version_id, alias, _actor(), request.reason
                )
        return registry_pb2.PromoteModelVersionResponse(change=alias_change_to_proto(move))

    async def RollbackAlias(
        self, request: registry_pb2.RollbackAliasRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.RollbackAliasResponse:
        alias = _alias(request.alias)
        handlers.check_asset_type_name(request.asset_type)
        to = (
            await self._resolve(request.to_model_version_id, "to_model_version_id")
            if request.to_model_version_id
            else ""
        )
        subject = f"alias/{request.asset_type}/{alias}"
        details = {"to": to}
        async with self._refusal_audited("alias.rollback", subject, details):
            async with self._store.transaction() as uow:
                move = await handlers.rollback_alias(
                    uow,
                    request.asset_type,
                    alias,
                    to,
                    _actor(),
                    request.reason,
                )
        return registry_pb2.RollbackAliasResponse(change=alias_change_to_proto(move))

    async def SetPromotionPolicy(
        self, request: registry_pb2.SetPromotionPolicyRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.SetPromotionPolicyResponse:
        async with self._store.transaction() as uow:
            policy = await handlers.set_promotion_policy(
                uow,
                request.asset_type,
                auto_promote=request.policy.auto_promote,
                metric=request.policy.metric,
                margin=request.policy.margin,
                manual_challenger=request.policy.manual_challenger,
                actor=_actor(),
                reason=request.reason,
            )
        return registry_pb2.SetPromotionPolicyResponse(policy=policy_to_proto(policy))

    # --- artifacts and evaluation --------------------------------------------------------

    async def UploadArtifact(
        self,
        request_iterator: AsyncIterator[registry_pb2.UploadArtifactRequest],
        context: grpc.aio.ServicerContext,
    ) -> registry_pb2.UploadArtifactResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("header"):
            raise InvalidArgumentError([("header", "the first message must carry the header")])
        header = first.header
        if not header.name or "/" in header.name:
            raise InvalidArgumentError([("header.name", "a file name, without '/'")])

        async def chunks() -> AsyncIterator[bytes]:
            size = 0
            async for message in request_iterator:
                if message.HasField("header"):
                    raise InvalidArgumentError([("header", "only the first message may carry it")])
                size += len(message.chunk)
                if size > MAX_UPLOAD_BYTES:
                    raise InvalidArgumentError([("chunk", f"larger than {MAX_UPLOAD_BYTES} bytes")])
                yield message.chunk

        try:
            blob = await self._artifacts.put_stream(
                chunks(), size_bytes=header.size_bytes, content_hash=header.content_hash
            )
        except ArtifactMismatchError as error:
            raise InvalidArgumentError([("chunk", str(error))]) from None
        async with self._store.transaction() as uow:
            await uow.audit(
                "artifact.uploaded",
                f"artifact/{blob.content_hash}",
                reason=header.name,
                actor=_actor(),
                details={"name": header.name, "size_bytes": blob.size_bytes},
            )
        return registry_pb2.UploadArtifactResponse(
            artifact=registry_pb2.ModelArtifact(
                name=header.name,
                uri=blob.uri,
                content_hash=blob.content_hash,
                size_bytes=blob.size_bytes,
            )
        )

    async def EvaluateModelVersion(
        self, request: registry_pb2.EvaluateModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.EvaluateModelVersionResponse:
        version, _ = await self._version_proto(await self._resolve(request.model_version_id))
        for field_name in ("test_content_hash", "truth_content_hash"):
            value = getattr(request, field_name)
            try:
                await self._artifacts.stat(value)
            except ArtifactMismatchError as error:
                raise InvalidArgumentError([(field_name, str(error))]) from None
            except ArtifactNotFoundError:
                raise NotFoundError("artifact", value, f"{field_name} was not uploaded") from None
        try:
            metrics, evaluation, png = await self._tasks.evaluate(
                version, request.test_content_hash, request.truth_content_hash
            )
        except WorkerFailedError as error:
            raise InvalidArgumentError(
                [("test_content_hash", f"the evaluation failed: {error}")]
            ) from None
        return registry_pb2.EvaluateModelVersionResponse(
            metrics=metrics, evaluation_json=evaluation, report_png=png, model_version_id=version.id
        )

    # --- training ------------------------------------------------------------------------

    async def _run_proto(self, run_id: str) -> registry_pb2.TrainingRun:
        async with self._store.reader() as conn:
            data = await adapters.get_training_run(conn, run_id)
        if data is None:
            raise NotFoundError("training_run", run_id)
        return registry_pb2.TrainingRun.FromString(data)

    async def _training_source(self, request: registry_pb2.StartTrainingRequest) -> TrainingSource:
        if request.dataset_snapshot_id and request.source_content_hash:
            raise InvalidArgumentError(
                [("source_content_hash", "name a dataset snapshot or a file, not both")]
            )
        if request.source_content_hash:
            try:
                blob = await self._artifacts.stat(request.source_content_hash)
            except ArtifactMismatchError as error:
                raise InvalidArgumentError([("source_content_hash", str(error))]) from None
            except ArtifactNotFoundError:
                raise NotFoundError(
                    "artifact", request.source_content_hash, "the training file was not uploaded"
                ) from None
            return TrainingSource(
                dataset_content_hash=blob.content_hash,
                source_name=request.source_name or "upload",
                source_uri=blob.uri,
            )
        async with self._store.reader() as conn:
            data = (
                await adapters.get_dataset_snapshot(conn, request.dataset_snapshot_id)
                if request.dataset_snapshot_id
                else await adapters.newest_dataset_snapshot(conn, request.asset_type)
            )
        if data is None:
            if request.dataset_snapshot_id:
                raise NotFoundError("dataset_snapshot", request.dataset_snapshot_id)
            raise InvalidArgumentError(
                [
                    (
                        "dataset_snapshot_id",
                        f"no snapshot of {request.asset_type} is known: name one, or upload a "
                        "C-MAPSS file and pass its source_content_hash",
                    )
                ]
            )
        snapshot = ingest_pb2.DatasetSnapshot.FromString(data)
        if snapshot.asset_type != request.asset_type:
            raise InvalidArgumentError(
                [("dataset_snapshot_id", f"{snapshot.name} holds {snapshot.asset_type} data")]
            )
        return handlers.snapshot_source(snapshot)

    async def StartTraining(
        self, request: registry_pb2.StartTrainingRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.StartTrainingResponse:
        handlers.check_asset_type_name(request.asset_type)
        source = await self._training_source(request)
        async with self._store.transaction() as uow:
            run = await handlers.start_training(
                uow,
                handlers.StartTraining(
                    asset_type=request.asset_type,
                    source=source,
                    hyperparameters=dict(request.hyperparameters),
                    trigger=Trigger.MANUAL,
                    requested_by=_actor(),
                    reason=request.reason,
                    idempotency_key=request.idempotency_key,
                ),
            )
        self._runner.wake()
        return registry_pb2.StartTrainingResponse(run=await self._run_proto(run.id))

    async def GetTrainingRun(
        self, request: registry_pb2.GetTrainingRunRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.GetTrainingRunResponse:
        return registry_pb2.GetTrainingRunResponse(run=await self._run_proto(request.run_id))

    async def ListTrainingRuns(
        self, request: registry_pb2.ListTrainingRunsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListTrainingRunsResponse:
        offset, size = _page(request.page_size, request.page_token)
        state = STATE_FROM_PROTO.get(request.state)  # type: ignore[call-overload]
        async with self._store.reader() as conn:
            rows = await adapters.list_training_runs(
                conn,
                asset_type=request.asset_type,
                state=str(state) if state else "",
                offset=offset,
                limit=size,
            )
        return registry_pb2.ListTrainingRunsResponse(
            runs=[registry_pb2.TrainingRun.FromString(r) for r in rows],
            next_page_token=_next_token(offset, size, len(rows)),
        )

    async def WatchTrainingRun(
        self, request: registry_pb2.WatchTrainingRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[registry_pb2.WatchTrainingRunResponse]:
        last = b""
        finished = {
            registry_pb2.TRAINING_RUN_STATE_SUCCEEDED,
            registry_pb2.TRAINING_RUN_STATE_FAILED,
            registry_pb2.TRAINING_RUN_STATE_CANCELLED,
        }
        while True:
            run = await self._run_proto(request.run_id)
            data = run.SerializeToString(deterministic=True)
            if data != last:
                last = data
                yield registry_pb2.WatchTrainingRunResponse(run=run)
            if run.state in finished:
                return
            await self._changes.wait(_WATCH_POLL_S)

    async def CancelTraining(
        self, request: registry_pb2.CancelTrainingRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.CancelTrainingResponse:
        subject = f"training_run/{request.run_id}"
        async with self._refusal_audited("training_run.cancel", subject, {}):
            async with self._store.transaction() as uow:
                run = await handlers.cancel_training_run(
                    uow, request.run_id, _actor(), request.reason
                )
        self._runner.stop_worker(run.id)
        self._changes.notify()
        return registry_pb2.CancelTrainingResponse(run=training_run_to_proto(run))


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
