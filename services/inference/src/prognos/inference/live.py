"""Live scoring: telemetry in, windows updated, changed assets scored in micro-batches.

Every replica follows the whole TELEMETRY stream with an ordered consumer (no acks: the
windows are memory, rebuilt from the stream whenever needed) and keeps only the assets
it owns (``membership``): a message of another replica's asset costs a subject lookup.
An owned asset's batch is merged into its window; if the window changed, the asset is
marked for scoring. Marked assets are scored together: a micro-batch closes when it holds
``inference_batch_size`` assets or ``inference_batch_deadline_s`` after its first one,
runs on a worker thread (at most ``inference_threads`` batches at once, and an asset is
never in two of them), and its predictions are published as soon as it is done. Each
prediction carries the trace context of the telemetry message that last changed its
asset's window, so the telemetry's trace goes on into whoever acts on the prediction; the
batch's span links the traces of the telemetry it scored.

When the member set changes, assets this replica gained are rebuilt by replaying the
stream from ``inference_rebuild_lookback_s`` back, while the live consumer goes on;
merges are idempotent, so the two may overlap. Those assets are scored once their
rebuild is done, never on a partial window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from nats.js import api

from prognos.api import wire
from prognos.api.inference.v1 import inference_pb2
from prognos.api.ingest.v1 import ingest_pb2
from prognos.core import bus
from prognos.core.config import Settings
from prognos.core.telemetry import current_traceparent, links_to, tracer
from prognos.inference.consumers import AssetDirectory
from prognos.inference.membership import Membership, owner
from prognos.inference.models import ModelPair, ModelRunner, ServingModel, ServingModels
from prognos.inference.monitoring import DriftMonitor
from prognos.inference.preprocessing import MissingChannelError
from prognos.inference.publisher import (
    Alert,
    AlertAuditor,
    OutgoingMessage,
    PredictionPublisher,
    encode_prediction,
)
from prognos.inference.scoring import AssetInfo, Scores, predictions, score
from prognos.inference.windows import WindowTable

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

log = logging.getLogger(__name__)
_tracer = tracer("prognos.inference.live")

TELEMETRY_STREAM = wire.stream_of(ingest_pb2.TelemetryBatch)
TELEMETRY_SUBJECTS = wire.streams()[TELEMETRY_STREAM].subjects[0]


@dataclass
class _Rebuild:
    """Assets gained in one change of the member set, while their windows are replayed."""

    me: str
    old: tuple[str, ...]
    new: tuple[str, ...]
    covers_cache: dict[str, bool] = field(default_factory=dict)
    done: bool = False

    def covers(self, asset_id: str) -> bool:
        hit = self.covers_cache.get(asset_id)
        if hit is None:
            hit = owner(self.new, asset_id) == self.me and owner(self.old, asset_id) != self.me
            self.covers_cache[asset_id] = hit
        return hit


@dataclass(frozen=True)
class _Job:
    """One asset type's share of a micro-batch, as handed to a worker thread."""

    asset_type: str
    pair: ModelPair
    assets: list[AssetInfo]
    raw: np.ndarray
    channels: tuple[str, ...]
    start_us: np.ndarray
    end_us: np.ndarray
    new_rows: np.ndarray
    causes: list[str]
    traces: list[str]
    previous: list[float | None]
    traceparent: str


@dataclass
class _Outcome:
    messages: list[OutgoingMessage]
    probability: np.ndarray
    alerts: list[Alert]
    drift_rows: np.ndarray
    drift_times: np.ndarray
    shadow: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None


@dataclass
class ShadowStats:
    """Running comparison of a challenger with the champion."""

    champion: str
    challenger: str
    pairs: int = 0
    probability_diff: float = 0.0
    rul_diff: float = 0.0
    agreements: int = 0

    def add(
        self,
        champion: tuple[np.ndarray, np.ndarray],
        challenger: tuple[np.ndarray, np.ndarray],
        threshold: float,
    ) -> None:
        rul_a, p_a = champion
        rul_b, p_b = challenger
        self.pairs += len(p_a)
        self.probability_diff += float(np.abs(p_a - p_b).sum())
        self.rul_diff += float(np.abs(rul_a - rul_b).sum())
        self.agreements += int(np.count_nonzero((p_a >= threshold) == (p_b >= threshold)))

    def to_proto(self) -> inference_pb2.ShadowComparison:
        n = max(self.pairs, 1)
        return inference_pb2.ShadowComparison(
            pairs=self.pairs,
            mean_abs_probability_diff=self.probability_diff / n,
            mean_abs_rul_diff=self.rul_diff / n,
            alert_agreement=self.agreements / n if self.pairs else 0.0,
        )


class LiveScorer:
    """Windows of the owned assets, the telemetry consumer, and the micro-batch scorer.

    Args:
        settings: The ``inference_*`` settings.
        js: JetStream context.
        models: The served models.
        directory: Registered assets (plants, horizons).
        membership: The replicas sharing the stream.
        publisher: Where predictions go.
        auditor: Where alerts are audited.
        drift: Where the champion's inputs are sampled for drift checks.
        executor: The worker threads that score.
        runner: Per-thread model runner.
    """

    def __init__(
        self,
        settings: Settings,
        js: JetStreamContext,
        models: ServingModels,
        directory: AssetDirectory,
        membership: Membership,
        publisher: PredictionPublisher,
        auditor: AlertAuditor,
        drift: DriftMonitor,
        executor: Executor,
        runner: ModelRunner,
    ) -> None:
        self._settings = settings
        self._js = js
        self._models = models
        self._directory = directory
        self._membership = membership
        self._publisher = publisher
        self._auditor = auditor
        self._drift = drift
        self._executor = executor
        self._runner = runner
        self.replica_id = membership.replica_id
        self.tables: dict[str, WindowTable] = {}
        self._asset_of_token: dict[str, str] = {}
        self._owned: dict[str, bool] = {}
        self._view: tuple[str, ...] = ()
        self._dirty: dict[str, dict[str, None]] = {}
        self._dirty_count = 0
        self._in_flight: set[str] = set()
        self._rebuilds: list[_Rebuild] = []
        self._last_probability: dict[str, float] = {}
        self._opening_floor: dict[str, float] = {}
        self._anomaly_floor: dict[str, float] = {}
        self._kick = asyncio.Event()
        self._full = asyncio.Event()
        self._slots = asyncio.Semaphore(max(1, settings.inference_threads))
        self._tasks: set[asyncio.Task[Any]] = set()
        self._subscription: Any = None
        self._stopping = False
        self.shadow_stats: dict[str, ShadowStats] = {}
        self.scored = 0
        self.messages = 0
        self.rebuilt_messages = 0
        membership.on_change(self._on_view)

    @property
    def alert_threshold(self) -> float:
        return self._settings.inference_alert_threshold

    @property
    def attribution_threshold(self) -> float:
        configured = self._settings.inference_attribution_threshold
        return self.alert_threshold if configured is None else configured

    def explain_threshold(self, asset_type: str, *, health: bool = False) -> float:
        """Predictions of ``asset_type``, live or asked for, at or above this are explained.

        The attribution threshold, lowered to where the scheduler's policy for the asset
        type opens work orders: a prediction that can open one carries its top sensors.
        For a health model's predictions, the same on the anomaly score
        (``inference_anomaly_attribution_threshold`` and the policy's anomaly rule).
        """
        if health:
            floor = self._anomaly_floor.get(asset_type)
            threshold = self._settings.inference_anomaly_attribution_threshold
        else:
            floor = self._opening_floor.get(asset_type)
            threshold = self.attribution_threshold
        return threshold if floor is None else min(threshold, floor)

    def opens_at(self, asset_type: str, floor: float, anomaly_floor: float | None = None) -> None:
        """The scheduler opens work orders for ``asset_type`` from probability ``floor``
        (and inspections from anomaly score ``anomaly_floor``, ``None`` when it does not)."""
        self._opening_floor[asset_type] = floor
        if anomaly_floor is None:
            self._anomaly_floor.pop(asset_type, None)
        else:
            self._anomaly_floor[asset_type] = anomaly_floor

    # -- ownership ------------------------------------------------------------------------

    def owns(self, asset_id: str) -> bool:
        """Whether this replica holds ``asset_id``'s window in the current view."""
        hit = self._owned.get(asset_id)
        if hit is None:
            hit = owner(self._view, asset_id) == self.replica_id
            self._owned[asset_id] = hit
        return hit

    def rebuilding(self, asset_id: str) -> bool:
        """Whether ``asset_id``'s window is being replayed from the stream."""
        return any(not r.done and r.covers(asset_id) for r in self._rebuilds)

    def _on_view(self, old: tuple[str, ...], new: tuple[str, ...]) -> None:
        self._view = new
        self._owned.clear()
        for table in self.tables.values():
            for asset_id in table.asset_ids:
                if not self.owns(asset_id):
                    table.drop(asset_id)
                    self._last_probability.pop(asset_id, None)
                    dirty = self._dirty.get(table.asset_type)
                    if dirty is not None and dirty.pop(asset_id, 0) is None:
                        self._dirty_count -= 1
        if self.replica_id not in new or self._stopping:
            return
        if self.replica_id in old and set(old) <= set(new):
            return  # only members joined: they take assets from this replica, never give
        rebuild = _Rebuild(self.replica_id, old, new)
        self._rebuilds.append(rebuild)
        self._spawn(self._rebuild(rebuild))

    # -- consuming ------------------------------------------------------------------------

    async def start(self) -> None:
        """Follow the telemetry stream (new messages; windows are rebuilt separately)."""
        await bus.ensure_stream(self._js, TELEMETRY_STREAM)
        self._subscription = await self._js.subscribe(
            TELEMETRY_SUBJECTS,
            stream=TELEMETRY_STREAM,
            cb=self._on_message,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.NEW,
            pending_msgs_limit=1_000_000,
        )
        self._spawn(self._batcher())

    async def stop(self) -> None:
        """Stop consuming, finish the batches in flight and their acknowledgements."""
        self._stopping = True
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
        for _ in range(max(1, self._settings.inference_threads)):
            await self._slots.acquire()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._publisher.drain()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _on_message(self, msg: Msg) -> None:
        try:
            self.messages += 1
            self.apply_message(msg, None)
        except Exception:
            log.exception("telemetry message on %s could not be applied", msg.subject)

    def _asset(self, token: str) -> str:
        asset_id = self._asset_of_token.get(token)
        if asset_id is None:
            asset_id = wire.decode_subject_token(token)
            self._asset_of_token[token] = asset_id
        return asset_id

    def apply_message(self, msg: Msg, rebuild: _Rebuild | None) -> None:
        """Merge one telemetry message into its asset's window if this replica owns it."""
        asset_type, token = wire.parse_telemetry_subject(msg.subject)
        asset_id = self._asset(token)
        if not self.owns(asset_id):
            return
        if rebuild is not None and not rebuild.covers(asset_id):
            return
        batch = ingest_pb2.TelemetryBatch.FromString(msg.data)
        times, names, values = wire.batch_columns(batch)
        table = self._table(asset_type)
        headers = msg.headers or {}
        changed = table.apply(
            asset_id,
            times,
            names,
            values,
            message_id=headers.get(wire.MSG_ID_HEADER, ""),
            traceparent=headers.get(wire.TRACEPARENT_HEADER, ""),
        )
        if changed and rebuild is None and not self.rebuilding(asset_id):
            self._mark(asset_type, asset_id)

    def _table(self, asset_type: str) -> WindowTable:
        table = self.tables.get(asset_type)
        if table is None:
            table = WindowTable(asset_type, self._capacity(asset_type))
            self.tables[asset_type] = table
        return table

    def _capacity(self, asset_type: str) -> int:
        pair = self._models.pair(asset_type)
        windows = [m.window for m in (pair.champion, pair.challenger) if m is not None]
        return max([self._settings.inference_history_rows, *windows])

    def models_changed(self, asset_type: str) -> None:
        """A model of ``asset_type`` was swapped: keep enough rows, rescore every asset."""
        table = self.tables.get(asset_type)
        if table is None:
            return
        table.ensure_capacity(self._capacity(asset_type))
        self._last_probability = {a: p for a, p in self._last_probability.items() if a not in table}
        for asset_id in table.asset_ids:
            if not self.rebuilding(asset_id):
                self._mark(asset_type, asset_id)

    async def _rebuild(self, rebuild: _Rebuild) -> None:
        """Replay the stream for the assets gained in one change of the member set."""
        started = time.monotonic()
        replayed = 0
        try:
            info = await self._js.stream_info(TELEMETRY_STREAM)
            end = info.state.last_seq
            config = self._replay_from(rebuild)
            if end and (config.opt_start_seq or 0) <= end:
                replayed = await self._replay(rebuild, config, end)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("rebuilding windows failed; assets are scored from live data only")
        finally:
            rebuild.done = True
            self._rebuilds.remove(rebuild)
        gained = 0
        for table in self.tables.values():
            for asset_id in table.asset_ids:
                if rebuild.covers_cache.get(asset_id) and self.owns(asset_id):
                    gained += 1
                    self._mark(table.asset_type, asset_id)
        log.info(
            "rebuilt %d windows from %d telemetry messages in %.2fs",
            gained,
            replayed,
            time.monotonic() - started,
        )

    def _replay_from(self, rebuild: _Rebuild) -> api.ConsumerConfig:
        # From inference_rebuild_lookback_s back: the windows of assets active in that
        # time, whoever held them before.
        since = datetime.now(UTC) - timedelta(seconds=self._settings.inference_rebuild_lookback_s)
        return api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_TIME, opt_start_time=since
        )

    async def _replay(self, rebuild: _Rebuild, config: api.ConsumerConfig, end: int) -> int:
        done = asyncio.get_running_loop().create_future()
        count = 0

        async def on_message(msg: Msg) -> None:
            nonlocal count
            if done.done():
                return
            count += 1
            try:
                self.apply_message(msg, rebuild)
            except Exception:
                log.exception("replayed telemetry on %s could not be applied", msg.subject)
            meta = msg.metadata
            if meta.sequence.stream >= end or meta.num_pending == 0:
                done.set_result(None)

        sub = await self._js.subscribe(
            TELEMETRY_SUBJECTS,
            stream=TELEMETRY_STREAM,
            cb=on_message,
            ordered_consumer=True,
            config=config,
            pending_msgs_limit=1_000_000,
        )
        try:
            while not done.done():
                # A range with nothing in it (all older than the start) delivers nothing.
                info = await sub.consumer_info()
                if info.num_pending == 0 and count >= info.delivered.consumer_seq:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(done), 1.0)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self.rebuilt_messages += count
        return count

    # -- micro-batches --------------------------------------------------------------------

    def _mark(self, asset_type: str, asset_id: str) -> None:
        dirty = self._dirty.setdefault(asset_type, {})
        if asset_id in dirty:
            return
        dirty[asset_id] = None
        self._dirty_count += 1
        self._kick.set()
        if self._dirty_count >= self._settings.inference_batch_size:
            self._full.set()

    def _take(self, limit: int) -> dict[str, list[str]]:
        taken: dict[str, list[str]] = {}
        n = 0
        for asset_type, dirty in self._dirty.items():
            for asset_id in list(dirty):
                if n >= limit:
                    return taken
                if asset_id in self._in_flight:
                    continue
                del dirty[asset_id]
                self._dirty_count -= 1
                taken.setdefault(asset_type, []).append(asset_id)
                n += 1
        return taken

    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        size = self._settings.inference_batch_size
        deadline_s = self._settings.inference_batch_deadline_s
        while not self._stopping:
            await self._kick.wait()
            self._kick.clear()
            deadline = loop.time() + deadline_s
            while self._dirty_count < size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), remaining)
            await self._slots.acquire()
            batch = self._take(size)
            if not batch:
                self._slots.release()
                if self._dirty_count:
                    # Only assets already in flight are due: try again when a slot frees.
                    await asyncio.sleep(deadline_s)
                    self._kick.set()
                continue
            task = self._spawn(self._flush(batch))
            task.add_done_callback(lambda _: self._slots.release())
            if self._dirty_count:
                self._kick.set()

    async def _flush(self, batch: dict[str, list[str]]) -> None:
        for asset_type, asset_ids in batch.items():
            self._in_flight.update(asset_ids)
            try:
                await self._score_live(asset_type, asset_ids)
            except asyncio.CancelledError:
                raise
            except MissingChannelError as e:
                log.warning("cannot score %s: %s", asset_type, e)
            except Exception:
                log.exception("scoring %d assets of %s failed", len(asset_ids), asset_type)
            finally:
                self._in_flight.difference_update(asset_ids)

    async def _score_live(self, asset_type: str, asset_ids: list[str]) -> None:
        pair = self._models.pair(asset_type)
        table = self.tables.get(asset_type)
        if pair.champion is None or table is None:
            return  # scored when a champion arrives (models_changed)
        slots, kept = [], []
        for asset_id in asset_ids:
            slot = table.slot_of(asset_id)
            if slot is not None and table.count(slot) > 0:
                slots.append(slot)
                kept.append(asset_id)
        if not slots:
            return
        length = max(m.window for m in (pair.champion, pair.challenger) if m is not None)
        table.ensure_capacity(length)
        raw, start_us, end_us = table.windows(slots, length)
        traces = [table.last_trace[s] for s in slots]
        # Fan-in: the batch span links the telemetry it scored; each asset's prediction
        # continues the trace of the telemetry message that changed its window.
        with _tracer.start_as_current_span("inference score batch", links=links_to(traces)) as span:
            span.set_attribute("prognos.asset_type", asset_type)
            span.set_attribute("prognos.batch_size", len(slots))
            traceparent, _ = current_traceparent()
            job = _Job(
                asset_type=asset_type,
                pair=pair,
                assets=[self._directory.info(a, asset_type) for a in kept],
                raw=raw,
                channels=tuple(table.channels),
                start_us=start_us,
                end_us=end_us,
                new_rows=table.take_new_rows(np.asarray(slots)),
                causes=[table.last_message[s] for s in slots],
                traces=traces,
                previous=[self._last_probability.get(a) for a in kept],
                traceparent=traceparent,
            )
            loop = asyncio.get_running_loop()
            outcome = await loop.run_in_executor(self._executor, self._compute, job)
            await self._publisher.publish(outcome.messages)
        self.scored += len(kept)
        for asset_id, probability in zip(kept, outcome.probability, strict=True):
            if asset_id in table:
                self._last_probability[asset_id] = float(probability)
        self._auditor.submit(outcome.alerts)
        assert pair.champion is not None
        self._drift.add(asset_type, pair.champion, outcome.drift_rows, outcome.drift_times)
        if outcome.shadow is not None and pair.challenger is not None:
            stats = self.shadow_stats.get(asset_type)
            if (
                stats is None
                or stats.champion != pair.champion.version
                or stats.challenger != pair.challenger.version
            ):
                stats = ShadowStats(pair.champion.version, pair.challenger.version)
                self.shadow_stats[asset_type] = stats
            a_rul, a_p, b_rul, b_p = outcome.shadow
            stats.add((a_rul, a_p), (b_rul, b_p), self.alert_threshold)

    def _compute(self, job: _Job) -> _Outcome:
        """Score one job with the champion (and the challenger in shadow); worker thread."""
        champion = job.pair.champion
        assert champion is not None
        scores = score(
            self._runner,
            champion,
            job.raw,
            job.channels,
            explain_at=self.explain_threshold(job.asset_type, health=champion.health),
        )
        made = predictions(scores, job.assets, job.start_us, job.end_us)
        traces = [trace or job.traceparent for trace in job.traces]
        messages = [
            encode_prediction(p, causation_id=cause, traceparent=trace)
            for p, cause, trace in zip(made, job.causes, traces, strict=True)
        ]
        threshold = self.alert_threshold
        alerts = [
            Alert(p, previous, threshold, trace)
            for p, previous, trace in zip(made, job.previous, traces, strict=True)
            if p.failure_probability >= threshold and (previous is None or previous < threshold)
        ]
        shadow = None
        challenger = job.pair.challenger
        if challenger is not None:
            try:
                shadow_scores = score(
                    self._runner, challenger, job.raw, job.channels, explain_at=None
                )
            except MissingChannelError as e:
                log.warning("challenger %s cannot score: %s", challenger.version, e)
            else:
                shadow_made = predictions(
                    shadow_scores, job.assets, job.start_us, job.end_us, shadow=True
                )
                messages.extend(
                    encode_prediction(p, causation_id=cause, traceparent=trace)
                    for p, cause, trace in zip(shadow_made, job.causes, traces, strict=True)
                )
                shadow = (
                    scores.rul,
                    scores.probability,
                    shadow_scores.rul,
                    shadow_scores.probability,
                )
        rows, times = _new_input_rows(scores, job.new_rows, job.end_us)
        return _Outcome(messages, scores.probability, alerts, rows, times, shadow)

    # -- on request -----------------------------------------------------------------------

    def live_windows(
        self, asset_type: str, asset_ids: Sequence[str], length: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...], list[str]]:
        """Raw windows of held assets: ``(raw, start_us, end_us, channels, missing ids)``."""
        table = self.tables.get(asset_type)
        slots, missing = [], []
        for asset_id in asset_ids:
            slot = table.slot_of(asset_id) if table is not None else None
            if slot is None or table is None or table.count(slot) == 0:
                missing.append(asset_id)
            else:
                slots.append(slot)
        if table is None or not slots:
            return (
                np.zeros((0, length, 0), np.float32),
                np.zeros(0, np.int64),
                np.zeros(0, np.int64),
                (),
                missing,
            )
        table.ensure_capacity(length)
        raw, start_us, end_us = table.windows(slots, length)
        return raw, start_us, end_us, tuple(table.channels), missing

    def asset_type_of(self, asset_id: str) -> str | None:
        """The asset type of a held asset, or of a registered one."""
        for table in self.tables.values():
            if asset_id in table:
                return table.asset_type
        return self._directory.asset_type_of(asset_id)


def _new_input_rows(
    scores: Scores, new_rows: np.ndarray, end_us: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The model-input rows that are new since the asset's previous scoring (for drift)."""
    window = scores.inputs.shape[1]
    parts, times = [], []
    for i, n in enumerate(new_rows):
        n = int(min(n, window))
        if n > 0:
            parts.append(scores.inputs[i, window - n :])
            times.append(np.full(n, end_us[i], np.int64))
    if not parts:
        return np.zeros((0, scores.inputs.shape[2]), np.float32), np.zeros(0, np.int64)
    return np.concatenate(parts), np.concatenate(times)


def score_windows(
    runner: ModelRunner,
    model: ServingModel,
    raw: np.ndarray,
    channels: Sequence[str],
    assets: Sequence[AssetInfo],
    start_us: np.ndarray,
    end_us: np.ndarray,
    *,
    explain_at: float | None,
) -> list[inference_pb2.Prediction]:
    """Predictions of ``model`` for raw windows (worker thread; nothing is published)."""
    scores = score(runner, model, raw, channels, explain_at=explain_at)
    return predictions(scores, assets, start_us, end_us)
