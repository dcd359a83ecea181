"""The InferenceService servicer: proto requests to scoring calls, results to protos.

Any replica answers for any asset. A request for an asset whose live window another
replica holds is forwarded to that replica once (with the caller's token, marked
``prognos-forwarded-by`` so it is never forwarded again); ``PredictBatch`` splits its
assets by owner and asks the owners concurrently. Scoring runs on the worker threads,
except a single window of a model fast enough that the hop to a thread would cost more
(``_INLINE_WINDOW_S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from prognos.api import wire
from prognos.api.inference.v1 import events_pb2, inference_pb2, inference_pb2_grpc
from prognos.core import messaging, telemetry, tls
from prognos.core.config import Settings
from prognos.core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PrognosError,
    ResourceExhaustedError,
    UnavailableError,
    from_grpc_error,
)
from prognos.inference.consumers import AssetDirectory
from prognos.inference.live import LiveScorer
from prognos.inference.membership import Membership
from prognos.inference.models import ModelRunner, ServingModel, ServingModels
from prognos.inference.preprocessing import MissingChannelError
from prognos.inference.scoring import explain, predictions, score
from prognos.inference.windows import VALUE_DTYPE

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

log = logging.getLogger(__name__)

FORWARDED = "prognos-forwarded-by"
_STREAM_QUEUE = 10_000
#: A model that scores one window within this (measured at load) does so on the event loop.
_INLINE_WINDOW_S = 0.0002
_PREDICTION_TYPES = {events_pb2.PredictionMade.DESCRIPTOR.full_name: events_pb2.PredictionMade}


class WindowOutOfRangeError(PrognosError):
    """The requested time range is older than the readings held: ``OUT_OF_RANGE``."""

    code = grpc.StatusCode.OUT_OF_RANGE
    default_reason = "WINDOW_NOT_HELD"


class _AssetFailedError(Exception):
    """One asset of a batch could not be scored."""

    def __init__(self, error: PrognosError) -> None:
        super().__init__(error.message)
        self.error = error


class Peers:
    """Channels to the other replicas, by address, with this process's credentials."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stubs: dict[str, inference_pb2_grpc.InferenceServiceStub] = {}
        self._channels: list[grpc.aio.Channel] = []

    def stub(self, address: str) -> inference_pb2_grpc.InferenceServiceStub:
        stub = self._stubs.get(address)
        if stub is None:
            channel = telemetry.channel(address, tls.client_credentials(self._settings))
            self._channels.append(channel)
            stub = self._stubs[address] = inference_pb2_grpc.InferenceServiceStub(channel)
        return stub

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """gRPC face of the inference service."""

    def __init__(
        self,
        settings: Settings,
        live: LiveScorer,
        models: ServingModels,
        directory: AssetDirectory,
        membership: Membership,
        executor: Executor,
        runner: ModelRunner,
        nc: Client,
        peers: Peers,
    ) -> None:
        self._settings = settings
        self._live = live
        self._models = models
        self._directory = directory
        self._membership = membership
        self._executor = executor
        self._runner = runner
        self._nc = nc
        self._peers = peers
        self._threads = max(1, settings.inference_threads)

    # -- Predict --------------------------------------------------------------------------

    async def Predict(
        self, request: inference_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.PredictResponse:
        if request.HasField("readings"):
            return inference_pb2.PredictResponse(prediction=await self._score_readings(request))
        if not request.asset_id:
            raise InvalidArgumentError([("asset_id", "name the asset to score")])
        remote = self._remote_owner(request.asset_id, context)
        if remote is not None:
            return await self._forward(remote, "Predict", request, context)
        asset_type, model = self._champion_of(request.asset_id)
        if request.HasField("window"):
            prediction = await self._score_range(request, asset_type, model)
        else:
            try:
                (prediction,) = await self._score_held(asset_type, [request.asset_id], model)
            except _AssetFailedError as failure:
                raise failure.error from None
        return inference_pb2.PredictResponse(prediction=prediction)

    def _remote_owner(self, asset_id: str, context: grpc.aio.ServicerContext) -> str | None:
        owner = self._membership.owner(asset_id)
        if owner is None or owner == self._membership.replica_id:
            return None
        if _metadata(context, FORWARDED):
            # The sender thought this replica owns it: the views differ for a moment.
            raise UnavailableError(
                f"asset {asset_id!r} is moving between replicas", retry_after_s=0.5
            )
        return owner

    async def _forward(
        self, owner: str, method: str, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        address = self._membership.address_of(owner)
        if not address:
            raise UnavailableError(f"replica {owner} has no address yet", retry_after_s=0.5)
        metadata = [(FORWARDED, self._membership.replica_id)]
        token = _metadata(context, "authorization")
        if token:
            metadata.append(("authorization", token))
        remaining = context.time_remaining()
        timeout = self._settings.request_timeout_s if remaining is None else max(remaining, 0.01)
        try:
            return await getattr(self._peers.stub(address), method)(
                request, metadata=metadata, timeout=timeout
            )
        except grpc.aio.AioRpcError as e:
            raise from_grpc_error(e) from None

    def _champion_of(self, asset_id: str) -> tuple[str, ServingModel]:
        asset_type = self._live.asset_type_of(asset_id)
        if asset_type is None:
            raise NotFoundError("asset", asset_id)
        model = self._models.pair(asset_type).champion
        if model is None:
            raise FailedPreconditionError(
                [("MODEL", f"asset_type/{asset_type}", "no champion model is served yet")],
                reason="NO_CHAMPION",
            )
        return asset_type, model

    async def _score_held(
        self, asset_type: str, asset_ids: Sequence[str], model: ServingModel
    ) -> list[inference_pb2.Prediction]:
        """Score held windows; raises ``_AssetFailedError`` for a single asset that cannot be."""
        for asset_id in asset_ids:
            if self._live.rebuilding(asset_id):
                raise _AssetFailedError(
                    UnavailableError(
                        f"the window of {asset_id!r} is being rebuilt", retry_after_s=0.5
                    )
                )
        raw, start_us, end_us, channels, missing = self._live.live_windows(
            asset_type, asset_ids, model.window
        )
        if missing:
            raise _AssetFailedError(_no_readings(missing[0]))
        assets = [self._directory.info(a, asset_type) for a in asset_ids]
        return await self._run(model, raw, channels, assets, start_us, end_us)

    async def _run(
        self,
        model: ServingModel,
        raw: np.ndarray,
        channels: Sequence[str],
        assets: Sequence[Any],
        start_us: np.ndarray,
        end_us: np.ndarray,
        *,
        into: inference_pb2.PredictBatchResponse | None = None,
    ) -> Sequence[inference_pb2.Prediction]:
        """Score on the worker threads, in parts of at least 512 windows.

        With ``into``, the predictions are added to its ``predictions`` in order (copied
        once, in C, when there are several parts) and those are returned.
        """
        # As the live path does.
        explain_at = self._live.explain_threshold(model.asset_type, health=model.health)
        if len(assets) == 1 and into is None and 0 < model.window_call_s <= _INLINE_WINDOW_S:
            # Handing one short window to a thread and back costs more than scoring it.
            # Explaining it (one more model call per feature) is left to a thread, which
            # reuses this score.
            try:
                scores = score(self._runner, model, raw, channels, explain_at=None)
            except MissingChannelError as e:
                raise _missing_channels(model, e) from None
            if scores.explained[0] >= explain_at:
                await asyncio.get_running_loop().run_in_executor(
                    self._executor, explain, self._runner, scores, raw, channels, explain_at
                )
            return predictions(scores, assets, start_us, end_us)
        loop = asyncio.get_running_loop()
        parts = max(1, min(self._threads, len(assets) // 512))
        bounds = np.linspace(0, len(assets), parts + 1).astype(int)
        direct = into is not None and parts == 1
        holders = [into if direct else inference_pb2.PredictBatchResponse() for _ in range(parts)]

        def work(a: int, b: int, holder: inference_pb2.PredictBatchResponse) -> None:
            scores = score(self._runner, model, raw[a:b], channels, explain_at=explain_at)
            predictions(scores, assets[a:b], start_us[a:b], end_us[a:b], into=holder.predictions)

        try:
            await asyncio.gather(
                *(
                    loop.run_in_executor(self._executor, work, a, b, holder)
                    for (a, b), holder in zip(itertools.pairwise(bounds), holders, strict=True)
                )
            )
        except MissingChannelError as e:
            raise _missing_channels(model, e) from None
        if into is not None:
            if not direct:
                for holder in holders:
                    into.MergeFrom(holder)
            return into.predictions
        if parts == 1:
            return holders[0].predictions
        return [p for holder in holders for p in holder.predictions]

    async def _score_range(
        self, request: inference_pb2.PredictRequest, asset_type: str, model: ServingModel
    ) -> inference_pb2.Prediction:
        table = self._live.tables.get(asset_type)
        slot = table.slot_of(request.asset_id) if table is not None else None
        if table is None or slot is None or table.count(slot) == 0:
            raise _no_readings(request.asset_id)
        start = (
            _micros(request.window.start_time) if request.window.HasField("start_time") else None
        )
        end = _micros(request.window.end_time) if request.window.HasField("end_time") else None
        found = table.window_before(slot, model.window, start, end)
        if found is None:
            held = table.oldest_time(slot)
            raise WindowOutOfRangeError(
                f"no readings of {request.asset_id!r} held in that range (the oldest held is "
                f"at {held} us)"
            )
        rows, first, last = found
        (prediction,) = await self._run(
            model,
            rows[None],
            table.channels,
            [self._directory.info(request.asset_id, asset_type)],
            np.asarray([first]),
            np.asarray([last]),
        )
        return prediction

    async def _score_readings(
        self, request: inference_pb2.PredictRequest
    ) -> inference_pb2.Prediction:
        readings = request.readings
        asset_id = request.asset_id or readings.asset_id
        asset_type = (
            request.asset_type
            or readings.asset_type
            or (self._live.asset_type_of(asset_id) if asset_id else None)
        )
        if not asset_type:
            raise InvalidArgumentError(
                [("asset_type", "give the asset type of readings for an asset not known here")]
            )
        model = self._models.pair(asset_type).champion
        if model is None:
            raise FailedPreconditionError(
                [("MODEL", f"asset_type/{asset_type}", "no champion model is served yet")],
                reason="NO_CHAMPION",
            )
        times, names, values = wire.batch_columns(readings)
        if len(times) == 0:
            raise InvalidArgumentError([("readings.timestamps_us", "no readings to score")])
        keep = min(len(times), model.window)
        rows = np.full((model.window, len(names)), np.nan, VALUE_DTYPE)
        rows[model.window - keep :] = values[-keep:]
        if keep < model.window:
            rows[: model.window - keep] = rows[model.window - keep]
        (prediction,) = await self._run(
            model,
            rows[None],
            names,
            [self._directory.info(asset_id, asset_type)],
            np.asarray([times[-keep]]),
            np.asarray([times[-1]]),
        )
        return prediction

    # -- PredictBatch ---------------------------------------------------------------------

    async def PredictBatch(
        self, request: inference_pb2.PredictBatchRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.PredictBatchResponse:
        forwarded = bool(_metadata(context, FORWARDED))
        if request.asset_ids:
            asset_ids = list(dict.fromkeys(request.asset_ids))
        else:
            asset_ids = self._select(request.plant, request.asset_type)
        groups: dict[str, list[str]] = {}
        for asset_id in asset_ids:
            owner = self._membership.owner(asset_id) or self._membership.replica_id
            if forwarded:
                owner = self._membership.replica_id
            groups.setdefault(owner, []).append(asset_id)
        results: dict[str, inference_pb2.Prediction] = {}
        errors: dict[str, inference_pb2.PredictionError] = {}

        async def local(ids: list[str], into: inference_pb2.PredictBatchResponse | None) -> None:
            found, failed = await self._score_many(ids, into=into)
            results.update(found)
            errors.update(failed)

        async def remote(owner: str, ids: list[str]) -> None:
            try:
                reply = await self._forward(
                    owner, "PredictBatch", inference_pb2.PredictBatchRequest(asset_ids=ids), context
                )
            except PrognosError as e:
                for asset_id in ids:
                    errors[asset_id] = _error(asset_id, e)
                return
            results.update({p.asset_id: p for p in reply.predictions})
            errors.update({e.asset_id: e for e in reply.errors})

        if list(groups) == [self._membership.replica_id]:
            # All held here: scored straight into the response when all of one type.
            response = inference_pb2.PredictBatchResponse()
            await local(asset_ids, response)
            if not results and not errors:
                return response
        else:
            await asyncio.gather(
                *(
                    local(ids, None) if owner == self._membership.replica_id else remote(owner, ids)
                    for owner, ids in groups.items()
                )
            )
        response = inference_pb2.PredictBatchResponse()
        response.predictions.extend(results[a] for a in asset_ids if a in results)
        response.errors.extend(errors[a] for a in asset_ids if a in errors)
        return response

    def _select(self, plant: str, asset_type: str) -> list[str]:
        selected = set(self._directory.select(plant, asset_type))
        if not plant:
            for table in self._live.tables.values():
                if not asset_type or table.asset_type == asset_type:
                    selected.update(table.asset_ids)
        return sorted(selected)

    async def _score_many(
        self, asset_ids: list[str], *, into: inference_pb2.PredictBatchResponse | None = None
    ) -> tuple[dict[str, inference_pb2.Prediction], dict[str, inference_pb2.PredictionError]]:
        """Predictions and errors by asset id.

        With ``into``, when every asset can be scored and all are of one type, their
        predictions go into ``into`` in the order given, and both dicts come back empty.
        """
        found: dict[str, inference_pb2.Prediction] = {}
        failed: dict[str, inference_pb2.PredictionError] = {}
        by_type: dict[str, list[str]] = {}
        for asset_id in asset_ids:
            asset_type = self._live.asset_type_of(asset_id)
            if asset_type is None:
                failed[asset_id] = _error(asset_id, NotFoundError("asset", asset_id))
            elif self._live.rebuilding(asset_id):
                failed[asset_id] = _error(
                    asset_id, UnavailableError("its window is being rebuilt", retry_after_s=0.5)
                )
            else:
                by_type.setdefault(asset_type, []).append(asset_id)
        for asset_type, ids in by_type.items():
            model = self._models.pair(asset_type).champion
            if model is None:
                for asset_id in ids:
                    failed[asset_id] = _error(
                        asset_id,
                        FailedPreconditionError(
                            [("MODEL", f"asset_type/{asset_type}", "no champion model")],
                            reason="NO_CHAMPION",
                        ),
                    )
                continue
            raw, start_us, end_us, channels, missing = self._live.live_windows(
                asset_type, ids, model.window
            )
            for asset_id in missing:
                failed[asset_id] = _error(asset_id, _no_readings(asset_id))
            absent = set(missing)
            held = [a for a in ids if a not in absent]
            if not held:
                continue
            assets = [self._directory.info(a, asset_type) for a in held]
            whole = into is not None and len(held) == len(asset_ids)
            try:
                made = await self._run(
                    model, raw, channels, assets, start_us, end_us, into=into if whole else None
                )
            except PrognosError as e:
                for asset_id in held:
                    failed[asset_id] = _error(asset_id, e)
                continue
            if whole:
                return {}, {}
            found.update((p.asset_id, p) for p in made)
        return found, failed

    # -- StreamPredictions ----------------------------------------------------------------

    async def StreamPredictions(
        self, request: inference_pb2.StreamPredictionsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.StreamPredictionsResponse]:
        queue: asyncio.Queue[inference_pb2.Prediction | None] = asyncio.Queue(_STREAM_QUEUE)
        overflowed = False

        async def on_message(msg: Msg) -> None:
            nonlocal overflowed
            if overflowed:
                return
            try:
                decoded = messaging.decode(msg.data, msg.subject, _PREDICTION_TYPES)
            except messaging.EventRefusedError as refused:
                log.warning("prediction on %s not streamed: %s", msg.subject, refused.reason)
                return
            if decoded is None:
                return
            p = decoded[1].prediction  # type: ignore[attr-defined]
            if request.plant and p.plant != request.plant:
                return
            if request.asset_type and p.asset_type != request.asset_type:
                return
            if p.failure_probability < request.min_failure_probability:
                return
            try:
                queue.put_nowait(p)
            except asyncio.QueueFull:
                overflowed = True
                with contextlib.suppress(asyncio.QueueFull):
                    queue.get_nowait()
                    queue.put_nowait(None)

        kinds = ["made", "shadow"] if request.include_shadow else ["made"]
        subjects = [wire.subject(events_pb2.PredictionMade, kind) for kind in kinds]
        subscriptions = [await self._nc.subscribe(s, cb=on_message) for s in subjects]
        try:
            while True:
                prediction = await queue.get()
                if prediction is None:
                    raise ResourceExhaustedError(
                        "the stream fell more than "
                        f"{_STREAM_QUEUE} predictions behind; narrow the filter or read faster",
                        reason="STREAM_TOO_SLOW",
                    )
                yield inference_pb2.StreamPredictionsResponse(prediction=prediction)
        finally:
            for subscription in subscriptions:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()

    # -- GetServingState ------------------------------------------------------------------

    async def GetServingState(
        self, request: inference_pb2.GetServingStateRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.GetServingStateResponse:
        response = inference_pb2.GetServingStateResponse(replica_id=self._membership.replica_id)
        for member in self._membership.members():
            response.replicas.add(replica_id=member.replica_id, address=member.address)
        for asset_type in self._models.asset_types():
            pair = self._models.pair(asset_type)
            served = response.models.add(asset_type=asset_type)
            if pair.champion is not None:
                served.champion_version = pair.champion.version
                served.window_length = pair.champion.window
                served.champion_loaded_at.FromNanoseconds(int(pair.champion.loaded_at * 1e9))
            if pair.challenger is not None:
                served.challenger_version = pair.challenger.version
            stats = self._live.shadow_stats.get(asset_type)
            if stats is not None and pair.challenger is not None:
                served.shadow.CopyFrom(stats.to_proto())
        total_bytes = 0
        count = 0
        for table in self._live.tables.values():
            size = table.asset_bytes()
            count += len(table)
            total_bytes += size * len(table)
            if request.include_windows:
                for stats in table.stats():
                    window = response.windows.add(
                        asset_id=stats.asset_id,
                        asset_type=stats.asset_type,
                        rows=stats.rows,
                        capacity_rows=stats.capacity_rows,
                        bytes=stats.bytes,
                        rebuilding=self._live.rebuilding(stats.asset_id),
                    )
                    if stats.last_reading_us is not None:
                        window.last_reading_time.FromMicroseconds(stats.last_reading_us)
        response.asset_count = count
        response.window_bytes = total_bytes
        return response


def _missing_channels(model: ServingModel, error: MissingChannelError) -> PrognosError:
    return FailedPreconditionError(
        [("READINGS", f"asset_type/{model.asset_type}", str(error))], reason="MISSING_CHANNELS"
    )


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return str(value)
    return ""


def _micros(timestamp: Any) -> int:
    return int(timestamp.seconds) * 1_000_000 + int(timestamp.nanos) // 1000


def _no_readings(asset_id: str) -> FailedPreconditionError:
    return FailedPreconditionError(
        [("READINGS", f"asset/{asset_id}", "no readings of the asset are held yet")],
        reason="NO_READINGS",
    )


def _error(asset_id: str, error: PrognosError) -> inference_pb2.PredictionError:
    return inference_pb2.PredictionError(
        asset_id=asset_id, code=error.code.name, message=error.message
    )
