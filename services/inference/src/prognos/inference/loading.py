"""Following the registry's aliases: load each new champion or challenger and swap it in.

Alias moves only record what each asset type should serve; a loader task reads and
verifies the artifacts on a worker thread and then swaps the model pair in one
assignment. Replaying the alias history at start-up therefore loads only the versions
that hold an alias now. A version that fails to load (missing file, wrong digest) leaves
the previous model serving, and the failure is logged and audited.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from prognos.api.registry.v1 import events_pb2 as registry_events
from prognos.api.registry.v1 import registry_pb2
from prognos.core.store import EventStore
from prognos.inference.models import (
    Artifact,
    ArtifactError,
    ServingModel,
    ServingModels,
    load_model,
)
from prognos.inference.publisher import ACTOR

log = logging.getLogger(__name__)

CHAMPION = registry_pb2.MODEL_ALIAS_CHAMPION
CHALLENGER = registry_pb2.MODEL_ALIAS_CHALLENGER
_KEEP_LOADED = 6


@dataclass(frozen=True)
class _Wanted:
    version: str
    artifacts: tuple[Artifact, ...]
    cause: str


class ModelLoader:
    """Loads what the aliases say each asset type should serve.

    Args:
        models: The served models, swapped here.
        executor: Where artifacts are read and verified.
        store: Where loads and failures are audited.
        replica_id: This replica, named in the audit entries.
        on_swap: Called with the asset type after each swap.
    """

    def __init__(
        self,
        models: ServingModels,
        executor: Executor,
        store: EventStore,
        replica_id: str,
        on_swap: Callable[[str], None] | None = None,
    ) -> None:
        self._models = models
        self._executor = executor
        self._store = store
        self._replica_id = replica_id
        self._on_swap = on_swap or (lambda _: None)
        self._wanted: dict[tuple[str, int], _Wanted | None] = {}
        self._served: dict[tuple[str, int], str] = {}
        self._failed: dict[tuple[str, int], str] = {}
        self._cache: OrderedDict[tuple[str, str, str], ServingModel] = OrderedDict()
        self._wake = asyncio.Event()
        self.swaps = 0

    def apply(self, event: registry_events.AliasMoved, cause: str = "") -> None:
        """Record an alias move; the loader task acts on it."""
        if event.alias not in (CHAMPION, CHALLENGER):
            return
        key = (event.asset_type, int(event.alias))
        if not event.to_model_version_id:
            self._wanted[key] = None
        else:
            artifacts = tuple(Artifact(a.name, a.uri, a.content_hash) for a in event.artifacts)
            self._wanted[key] = _Wanted(event.to_model_version_id, artifacts, cause)
        self._wake.set()

    def serving(self, asset_type: str, alias: int) -> str:
        """Version served under ``alias`` for ``asset_type`` ("" for none)."""
        return self._served.get((asset_type, alias), "")

    async def run(self) -> None:
        """Load and swap until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            for key in list(self._wanted):
                await self._settle(key)

    async def _settle(self, key: tuple[str, int]) -> None:
        asset_type, alias = key
        wanted = self._wanted.get(key)
        version = wanted.version if wanted else ""
        if self._served.get(key, "") == version or self._failed.get(key) == version:
            return
        model = None
        if wanted is not None:
            try:
                model = await self._load(asset_type, wanted)
            except ArtifactError as e:
                self._failed[key] = version
                log.error("cannot serve %s %s: %s", asset_type, version, e)
                await self._audit("model.load_failed", asset_type, version, alias, str(e))
                return
        if alias == CHAMPION:
            self._models.set_champion(model, asset_type)
        else:
            self._models.set_challenger(model, asset_type)
        self._served[key] = version
        self.swaps += 1
        # Before any await: no window is scored by the new pair before the windows know.
        self._on_swap(asset_type)
        role = "champion" if alias == CHAMPION else "challenger"
        log.info("%s of %s is now %s", role, asset_type, version or "none")
        await self._audit("model.served", asset_type, version, alias, f"now the {role}")

    async def _load(self, asset_type: str, wanted: _Wanted) -> ServingModel:
        digest = next((a.content_hash for a in wanted.artifacts if a.name.endswith(".tflite")), "")
        cache_key = (asset_type, wanted.version, digest)
        model = self._cache.get(cache_key)
        if model is None:
            loop = asyncio.get_running_loop()
            model = await loop.run_in_executor(
                self._executor, load_model, asset_type, wanted.version, wanted.artifacts
            )
            self._cache[cache_key] = model
            while len(self._cache) > _KEEP_LOADED:
                self._cache.popitem(last=False)
        return model

    async def _audit(
        self, action: str, asset_type: str, version: str, alias: int, why: str
    ) -> None:
        try:
            async with self._store.transaction(actor=ACTOR) as uow:
                await uow.audit(
                    action,
                    f"asset_type/{asset_type}",
                    reason=why,
                    details={
                        "model_version": version,
                        "alias": registry_pb2.ModelAlias.Name(alias),
                        "replica_id": self._replica_id,
                    },
                )
        except Exception:
            log.exception("auditing %s of %s failed", action, asset_type)
