"""The drift check: on a schedule, each asset type's live inputs against its training reference.

Scoring hands every new input row of a champion to ``DriftMonitor.add``; each check
compares the newest rows (enough of them) with the champion's reference on a worker
thread. Drifting features raise a ``DriftDetected`` event through the outbox, with an
audit entry, in one transaction. Replicas each check the assets they hold (a hash-chosen,
representative share of the fleet) and the first to alert in a period wins: the drift
alerts table lets one alert per asset type, model version and period through.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import UTC, datetime

import numpy as np

from prognos.api.inference.v1 import events_pb2
from prognos.core.config import Settings
from prognos.core.store import EventStore
from prognos.inference import adapters
from prognos.inference.drift import FeatureDriftResult, LiveSample, evaluate
from prognos.inference.models import ServingModel, ServingModels
from prognos.inference.publisher import ACTOR

log = logging.getLogger(__name__)

_NAMESPACE = uuid.UUID("0b8f3c52-5f5e-4d0b-8a8b-1f7e2f9a4c31")
_US = 1_000_000

ChannelNamer = Callable[[str, ServingModel, str], str]


class DriftMonitor:
    """Live samples per asset type and the scheduled drift check.

    Args:
        settings: Uses the ``inference_drift_*`` settings.
        store: Where alerts are recorded, audited and queued for publishing.
        models: The served models (the champion's reference is compared).
        executor: Where the statistics are computed.
        replica_id: This replica, named in the alerts.
        channel_of: Telemetry channel of a model feature (for the alert), given the asset
            type, model and feature.
    """

    def __init__(
        self,
        settings: Settings,
        store: EventStore,
        models: ServingModels,
        executor: Executor,
        replica_id: str,
        channel_of: ChannelNamer | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._models = models
        self._executor = executor
        self._replica_id = replica_id
        self._channel_of = channel_of or (lambda _type, _model, feature: feature)
        self._samples: dict[str, LiveSample] = {}
        self.alerts: list[events_pb2.DriftDetected] = []
        #: Checks that compared enough samples, per asset type.
        self.checks: dict[str, int] = {}

    def add(
        self, asset_type: str, model: ServingModel, rows: np.ndarray, times_us: np.ndarray
    ) -> None:
        """Keep the champion's new input rows (``(n, features)``) for the next check."""
        if len(rows) == 0:
            return
        sample = self._samples.get(asset_type)
        if sample is None or sample.model_version != model.version:
            sample = LiveSample(
                model.version, rows.shape[1], self._settings.inference_drift_sample_rows
            )
            self._samples[asset_type] = sample
        sample.add(rows, times_us)

    def sample_size(self, asset_type: str) -> int:
        """Rows kept for ``asset_type``."""
        sample = self._samples.get(asset_type)
        return len(sample) if sample else 0

    async def run(self) -> None:
        """Check every asset type on the schedule, until cancelled."""
        interval = self._settings.inference_drift_interval_s
        while True:
            await asyncio.sleep(interval)
            for asset_type in list(self._samples):
                try:
                    await self.check(asset_type)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("drift check of %s failed", asset_type)

    async def check(self, asset_type: str) -> events_pb2.DriftDetected | None:
        """Compare ``asset_type``'s live sample with its champion's reference now.

        Returns:
            The alert, when features drifted and this replica was the first to say so
            in this period; otherwise None.
        """
        settings = self._settings
        model = self._models.pair(asset_type).champion
        sample = self._samples.get(asset_type)
        if model is None or model.reference is None or sample is None:
            return None
        if sample.model_version != model.version:
            return None
        if len(sample) < settings.inference_drift_min_samples:
            return None
        rows, start_us, end_us = sample.snapshot()
        self.checks[asset_type] = self.checks.get(asset_type, 0) + 1
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(
            self._executor,
            lambda: evaluate(
                model.reference,  # type: ignore[arg-type]
                model.preprocessing.features,
                rows,
                psi_threshold=settings.inference_drift_psi_threshold,
                ks_alpha=settings.inference_drift_ks_alpha,
            ),
        )
        if not any(r.drifted for r in results):
            return None
        return await self._alert(asset_type, model, results, len(rows), start_us, end_us)

    async def _alert(
        self,
        asset_type: str,
        model: ServingModel,
        results: list[FeatureDriftResult],
        samples: int,
        start_us: int,
        end_us: int,
    ) -> events_pb2.DriftDetected | None:
        interval = max(self._settings.inference_drift_interval_s, 1e-3)
        period = int(time.time() // interval * interval)
        message_id = str(uuid.uuid5(_NAMESPACE, f"{asset_type}\0{model.version}\0{period}"))
        event = events_pb2.DriftDetected(
            asset_type=asset_type,
            model_version=model.version,
            sample_count=samples,
            replica_id=self._replica_id,
        )
        for r in results:
            event.features.add(
                feature=self._channel_of(asset_type, model, r.feature),
                psi=r.psi,
                ks_statistic=r.ks_statistic,
                ks_pvalue=r.ks_pvalue,
                wasserstein=r.wasserstein,
                drifted=r.drifted,
            )
        event.window_start.FromMicroseconds(start_us)
        event.window_end.FromMicroseconds(end_us + 1)
        drifted = [f for f in event.features if f.drifted]
        summary = [
            {"feature": f.feature, "psi": round(f.psi, 4), "ks_pvalue": f.ks_pvalue}
            for f in drifted
        ]
        async with self._store.transaction(actor=ACTOR) as uow:
            claimed = await adapters.claim_drift_alert(
                uow.conn,
                asset_type=asset_type,
                model_version=model.version,
                period_start=period,
                replica_id=self._replica_id,
                detected_at=datetime.now(UTC),
                message_id=message_id,
                features=summary,
            )
            if not claimed:
                return None
            await uow.audit(
                "drift.detected",
                f"asset_type/{asset_type}",
                reason=f"{len(drifted)} feature(s) drifted: "
                + ", ".join(f["feature"] for f in summary),
                details={
                    "model_version": model.version,
                    "features": summary,
                    "sample_count": samples,
                    "replica_id": self._replica_id,
                },
            )
            uow.publish(event, message_id=message_id)
        log.warning(
            "drift in %s (model %s): %s",
            asset_type,
            model.version,
            ", ".join(f["feature"] for f in summary),
        )
        self.alerts.append(event)
        return event
