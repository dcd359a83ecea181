"""Training, evaluation and export checks in worker processes, driven from the event loop.

``TrainingRunner`` is a background job of the registry: it claims queued runs (at most
``training_workers`` at a time), starts ``python -m prognos.registry.worker train`` for each,
turns the worker's progress lines into ``TrainingRunProgressed`` events, stores the trained
files in the artifact store and registers the model version with its lineage, in the same
transaction that closes the run. A cancelled run's worker gets SIGTERM (SIGKILL if it does
not stop); a run whose registry process died is failed when the registry starts again.

``evaluate_model_version`` and ``verify_serving`` run the other two worker commands for the
gRPC API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prognos.api.ingest.v1 import ingest_pb2
from prognos.api.registry.v1 import registry_pb2
from prognos.core.errors import ConcurrencyError
from prognos.core.natsserver import die_with_parent
from prognos.core.service import package_version
from prognos.core.store import utcnow
from prognos.registry import adapters, handlers
from prognos.registry.artifacts import ArtifactStore
from prognos.registry.domain import Artifact, Lineage, RunState, TrainingRun
from prognos.registry.translate import source_text
from prognos.registry.worker import BUNDLE_FILES, EXIT_CANCELLED

if TYPE_CHECKING:
    from prognos.core.config import Settings
    from prognos.core.store import EventStore

log = logging.getLogger(__name__)

_KILL_AFTER_S = 10.0
_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_POLL_S = 1.0


class WorkerFailedError(RuntimeError):
    """A worker process ended without a result; the message says why."""


class WorkerCancelledError(RuntimeError):
    """A worker process stopped because it was asked to."""


ProgressHandler = Callable[[dict[str, Any]], Awaitable[None]]


async def run_worker(
    command: str,
    spec: dict[str, Any],
    work: Path,
    *,
    on_progress: ProgressHandler | None = None,
    stop: asyncio.Event | None = None,
    timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """Run one worker command in a child process and return its result message.

    Args:
        command: ``train``, ``evaluate`` or ``verify``.
        spec: The command's JSON spec.
        work: Directory for the spec and the worker's log (``<command>.log``).
        on_progress: Awaited for each progress message, in order.
        stop: When set, the worker is asked to stop (SIGTERM, then SIGKILL).
        timeout_s: The worker is killed after this long.

    Raises:
        WorkerCancelledError: ``stop`` was set, or the worker reported it was cancelled.
        WorkerFailedError: the worker reported an error, died, or ran out of time.
    """
    spec_path = await asyncio.to_thread(
        _write, work / f"{command}.json", json.dumps(spec, indent=2)
    )
    log_path = work / f"{command}.log"
    argv = die_with_parent(
        [sys.executable, "-m", "prognos.registry.worker", command, str(spec_path)]
    )
    with open(log_path, "ab") as log_file:  # noqa: ASYNC230 - opening is not reading
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
        )
    outcome: dict[str, Any] = {}

    async def read() -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            try:
                message = json.loads(raw)
            except json.JSONDecodeError:
                log.warning("worker %s printed a non-protocol line: %r", command, raw[:200])
                continue
            if message.get("type") == "progress":
                if on_progress is not None:
                    await on_progress(message)
            else:
                outcome.update(message)

    reader = asyncio.create_task(read())
    stopper = asyncio.create_task(stop.wait()) if stop is not None else None
    try:
        waiting = {reader} | ({stopper} if stopper else set())
        done, _ = await asyncio.wait(waiting, timeout=timeout_s, return_when="FIRST_COMPLETED")
        if reader not in done:
            await _terminate(process)
            if stopper is not None and stopper in done:
                raise WorkerCancelledError(f"{command} worker stopped on request")
            raise WorkerFailedError(f"{command} worker ran longer than {timeout_s:g}s")
        await reader
        code = await process.wait()
    finally:
        for task in (reader, stopper):
            if task is not None and not task.done():
                task.cancel()
        if process.returncode is None:
            await _terminate(process)
    if outcome.get("type") == "result" and code == 0:
        return outcome
    if outcome.get("type") == "cancelled" or code == EXIT_CANCELLED:
        raise WorkerCancelledError(f"{command} worker was cancelled")
    if outcome.get("type") == "error":
        raise WorkerFailedError(str(outcome.get("message")))
    raise WorkerFailedError(f"{command} worker exited with code {code}: {_tail(log_path)}")


async def _terminate(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), _KILL_AFTER_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


def _write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data + "\n")
    else:
        path.write_bytes(data)
    return path


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(text[-lines:]) or "no output"


async def code_version() -> str:
    """The registry's package version, and its git commit when run from a checkout."""
    text = f"prognos-registry {package_version('prognos-registry')}"
    commit = await _git(_PACKAGE_DIR, "rev-parse", "HEAD")
    if commit:
        dirty = await _git(_PACKAGE_DIR, "status", "--porcelain", "--untracked-files=no", "--", ".")
        text += f" git {commit}{'-dirty' if dirty else ''}"
    return text


async def _git(directory: str, *args: str) -> str:
    git = shutil.which("git")
    if git is None:
        return ""
    try:
        process = await asyncio.create_subprocess_exec(
            git, "-C", directory, *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(process.communicate(), 10.0)
    except (OSError, TimeoutError):
        return ""
    return out.decode().strip() if process.returncode == 0 else ""


class RunChanges:
    """Wakes the watchers of training runs after a commit in this process."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout_s: float) -> None:
        """Return after the next change, or after ``timeout_s`` (changes in other replicas)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout_s)


@dataclass
class _Prepared:
    spec: dict[str, Any]
    champion_id: str


class TrainingRunner:
    """Runs queued training runs in worker processes; a background job of the service."""

    def __init__(
        self, store: EventStore, artifacts: ArtifactStore, settings: Settings, changes: RunChanges
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._settings = settings
        self._changes = changes
        self._work_root = (settings.data_dir / "training").resolve()
        self._wake = asyncio.Event()
        self._stops: dict[str, asyncio.Event] = {}
        self.owner = f"{socket.gethostname()}:{os.getpid()}"

    def wake(self) -> None:
        """A run may have been queued: look for work now."""
        self._wake.set()

    def stop_worker(self, run_id: str) -> None:
        """A run was cancelled: stop its worker if this process runs it."""
        stop = self._stops.get(run_id)
        if stop is not None:
            stop.set()

    @property
    def retrain_at(self) -> datetime | None:
        """When a type that just got a model is next retrained by the schedule."""
        period = self._settings.retrain_period_s
        return utcnow() + timedelta(seconds=period) if period > 0 else None

    async def run(self) -> None:
        """Claim and run queued runs until cancelled."""
        if self._settings.training_workers < 1:
            log.info("training_workers is 0: this registry process trains nothing")
            return
        await self.recover_interrupted()
        active: set[asyncio.Task[None]] = set()
        try:
            while True:
                self._wake.clear()
                while len(active) < self._settings.training_workers:
                    try:
                        run_id = await self._claim_next()
                    except Exception:
                        log.warning("claiming a training run failed", exc_info=True)
                        break
                    if run_id is None:
                        break
                    task = asyncio.create_task(self._execute(run_id), name=f"training-{run_id}")
                    active.add(task)
                    task.add_done_callback(lambda t: (active.discard(t), self._wake.set()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _POLL_S)
        finally:
            for task in active:
                task.cancel()
            await asyncio.gather(*active, return_exceptions=True)

    async def recover_interrupted(self) -> None:
        """Fail the runs that a registry process on this host left running when it died."""
        host = self.owner.rsplit(":", 1)[0]
        async with self._store.reader() as conn:
            running = await adapters.runs_in_state(conn, str(RunState.RUNNING))
        for run_id, owner in running:
            owner_host, _, pid = owner.rpartition(":")
            if owner_host != host or (pid.isdigit() and _pid_alive(int(pid))):
                continue
            await self._fail(run_id, f"interrupted: the registry process {owner} stopped")

    async def _claim_next(self) -> str | None:
        async with self._store.reader() as conn:
            queued = await adapters.runs_in_state(conn, str(RunState.QUEUED))
        for run_id, _ in queued:
            try:
                async with self._store.transaction() as uow:
                    run = await handlers.claim_training_run(uow, run_id, self.owner)
            except ConcurrencyError:
                continue  # another replica took it
            self._changes.notify()
            if run is not None:
                return run_id
        return None

    async def _execute(self, run_id: str) -> None:
        work = self._work_root / run_id
        stop = asyncio.Event()
        self._stops[run_id] = stop
        poller = asyncio.create_task(self._watch_cancel(run_id, stop))
        keep_work = False
        try:
            stored = await self._store.read_stream(handlers.training_run_stream(run_id))
            run = TrainingRun.replay([e.event for e in stored])
            prepared = await self._prepare(run, work)
            result = await run_worker(
                "train",
                prepared.spec,
                work,
                on_progress=lambda message: self._progress(run_id, message, stop),
                stop=stop,
                timeout_s=self._settings.training_timeout_s,
            )
            await self._progress(
                run_id,
                {"phase": "registering", "progress": 0.97, "metrics": result["metrics"]},
                stop,
            )
            artifacts = await self._store_files(Path(result["bundle"]), result["artifacts"])
            registration = handlers.RegisterModelVersion(
                asset_type=run.asset_type,
                metrics={k: float(v) for k, v in result["metrics"].items()},
                lineage=Lineage(
                    dataset_snapshot_id=run.source.dataset_snapshot_id,
                    dataset_content_hash=run.source.dataset_content_hash,
                    source_uri=source_text(run.source),
                    label_set=result["label_set"],
                    code_version=await code_version(),
                    hyperparameters=dict(result["hyperparameters"]),
                    training_run_id=run.id,
                    training_metrics={k: float(v) for k, v in result["training_metrics"].items()},
                ),
                artifacts=artifacts,
                trained_by=run.requested_by,
                description=run.reason or f"{run.trigger} training run {run.id}",
                idempotency_key=f"training-run:{run.id}",
                compared_with_model_version_id=prepared.champion_id,
                champion_metrics={k: float(v) for k, v in result["champion_metrics"].items()},
                evaluated_here=True,
            )
            async with self._store.transaction(actor=run.requested_by) as uow:
                await handlers.succeed_training_run(uow, run_id, registration, self.retrain_at)
        except WorkerCancelledError:
            log.info("training run %s was cancelled", run_id)
        except WorkerFailedError as error:
            keep_work = True
            await self._fail(run_id, str(error))
        except asyncio.CancelledError:
            keep_work = True
            await self._fail(run_id, "interrupted: the registry was shut down during the run")
            raise
        except Exception as error:
            keep_work = True
            log.exception("training run %s failed", run_id)
            await self._fail(run_id, f"{type(error).__name__}: {error}")
        finally:
            poller.cancel()
            self._stops.pop(run_id, None)
            self._changes.notify()
            _clean(work, keep_logs=keep_work)

    async def _watch_cancel(self, run_id: str, stop: asyncio.Event) -> None:
        """Stop the worker when the run is cancelled, also by another replica."""
        while not stop.is_set():
            await asyncio.sleep(_POLL_S)
            async with self._store.reader() as conn:
                data = await adapters.get_training_run(conn, run_id)
            if data is not None:
                state = registry_pb2.TrainingRun.FromString(data).state
                if state == registry_pb2.TRAINING_RUN_STATE_CANCELLED:
                    stop.set()

    async def _progress(self, run_id: str, message: dict[str, Any], stop: asyncio.Event) -> None:
        metrics = {
            k: float(v) for k, v in message.get("metrics", {}).items() if isinstance(v, int | float)
        }
        async with self._store.transaction() as uow:
            run = await handlers.report_training_progress(
                uow,
                run_id,
                phase=str(message.get("phase", "")),
                progress=float(message.get("progress", 0.0)),
                epoch=int(message.get("epoch", 0)),
                total_epochs=int(message.get("total_epochs", 0)),
                metrics=metrics,
            )
        self._changes.notify()
        if run.state is not RunState.RUNNING:
            stop.set()

    async def _fail(self, run_id: str, error: str) -> None:
        try:
            async with self._store.transaction() as uow:
                await handlers.fail_training_run(uow, run_id, error)
        except Exception:
            log.exception("could not record the failure of training run %s", run_id)
        self._changes.notify()

    async def _prepare(self, run: TrainingRun, work: Path) -> _Prepared:
        horizon = None
        async with self._store.reader() as conn:
            definition = await adapters.asset_type_definition(conn, run.asset_type)
            snapshot_data = (
                await adapters.get_dataset_snapshot(conn, run.source.dataset_snapshot_id)
                if run.source.dataset_snapshot_id
                else None
            )
            champion_id = (await adapters.alias_holders_of(conn, run.asset_type)).get(
                "champion", ""
            )
            champion = await adapters.get_model_version(conn, champion_id) if champion_id else None
        asset_type_file = ""
        if definition is not None:
            asset_type = ingest_pb2.AssetType.FromString(definition)
            if asset_type.horizon.WhichOneof("horizon") == "cycles":
                horizon = float(asset_type.horizon.cycles)
            # The worker assembles training data from the type's own channels and time base.
            asset_type_file = str(
                await asyncio.to_thread(_write, work / "asset_type.pb", definition)
            )
        if run.source.dataset_snapshot_id:
            if snapshot_data is None:
                raise WorkerFailedError(
                    f"dataset snapshot {run.source.dataset_snapshot_id} is unknown"
                )
            snapshot_file = await asyncio.to_thread(_write, work / "snapshot.pb", snapshot_data)
            source: dict[str, Any] = {"kind": "snapshot", "snapshot_file": str(snapshot_file)}
        else:
            name = Path(run.source.source_name or "training.txt").name
            path = await self._artifacts.fetch(
                run.source.dataset_content_hash, work / "source" / name
            )
            source = {
                "kind": "cmapss",
                "path": str(path),
                "content_hash": run.source.dataset_content_hash,
            }
        champion_bundle = ""
        if champion is not None:
            try:
                champion_bundle = str(
                    await self.materialise(
                        registry_pb2.ModelVersion.FromString(champion[0]), work / "champion"
                    )
                )
            except Exception:
                log.warning("champion %s cannot be compared with", champion_id, exc_info=True)
                champion_id = ""
        spec = {
            "run_id": run.id,
            "asset_type": run.asset_type,
            "hyperparameters": {**self._settings.training_hyperparameters, **run.hyperparameters},
            "horizon_cycles": horizon,
            "asset_type_file": asset_type_file,
            "source": source,
            "champion_bundle": champion_bundle,
            "out": str(work / "bundle"),
            "supervised_min_failures": self._settings.supervised_min_failures,
        }
        return _Prepared(spec, champion_id if champion_bundle else "")

    async def materialise(self, version: registry_pb2.ModelVersion, directory: Path) -> Path:
        """Fetch the files ``TrainedModel.load`` needs into ``directory``."""
        by_name = {a.name: a for a in version.artifacts}
        missing = [name for name in BUNDLE_FILES if name not in by_name]
        if missing:
            raise WorkerFailedError(f"{version.id} lacks {', '.join(missing)}")
        for name in BUNDLE_FILES:
            await self._artifacts.fetch(by_name[name].content_hash, directory / name)
        return directory

    async def _store_files(self, bundle: Path, names: list[str]) -> tuple[Artifact, ...]:
        stored = []
        for name in names:
            blob = await self._artifacts.put_file(bundle / name)
            stored.append(Artifact(name, blob.uri, blob.content_hash, blob.size_bytes))
        return tuple(stored)


def _clean(work: Path, *, keep_logs: bool) -> None:
    """Remove a run's scratch files; keep the worker's log of a run that failed."""
    if not work.exists():
        return
    if not keep_logs:
        shutil.rmtree(work, ignore_errors=True)
        return
    for child in work.iterdir():
        if child.is_file() and child.suffix in (".log", ".json"):
            continue
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ModelTasks:
    """Evaluation and export checks of stored versions, one worker process at a time."""

    def __init__(
        self, artifacts: ArtifactStore, runner: TrainingRunner, settings: Settings
    ) -> None:
        self._artifacts = artifacts
        self._runner = runner
        self._scratch = (settings.data_dir / "scratch").resolve()
        self._timeout = settings.training_timeout_s
        self._slots = asyncio.Semaphore(1)

    async def evaluate(
        self, version: registry_pb2.ModelVersion, test_hash: str, truth_hash: str
    ) -> tuple[dict[str, float], str, bytes]:
        """Metrics, the evaluation as JSON, and the PNG report."""
        self._scratch.mkdir(parents=True, exist_ok=True)
        async with self._slots:
            with _scratch_dir(self._scratch, "evaluate-") as work:
                bundle = await self._runner.materialise(version, work / "bundle")
                test = await self._artifacts.fetch(test_hash, work / "test.txt")
                truth = await self._artifacts.fetch(truth_hash, work / "truth.txt")
                report = work / "report.png"
                result = await run_worker(
                    "evaluate",
                    {
                        "bundle": str(bundle),
                        "test": str(test),
                        "truth": str(truth),
                        "report": str(report),
                        "title": f"{version.id} ({version.asset_type})",
                    },
                    work,
                    timeout_s=self._timeout,
                )
                png = await asyncio.to_thread(report.read_bytes)
        metrics = {k: float(v) for k, v in result["metrics"].items()}
        return metrics, json.dumps(result["evaluation"]), png

    async def verify_serving(self, artifacts: dict[str, str]) -> dict[str, float]:
        """Check the LiteRT copy against the SavedModel; ``artifacts`` maps name to hash.

        Raises:
            WorkerFailedError: the outputs differ beyond the tolerance (or cannot be run).
        """
        self._scratch.mkdir(parents=True, exist_ok=True)
        async with self._slots:
            with _scratch_dir(self._scratch, "verify-") as work:
                paths = {
                    name: await self._artifacts.fetch(artifacts[name], work / name)
                    for name in ("saved_model.tar", "model.tflite", "verification_windows.npy")
                }
                result = await run_worker(
                    "verify",
                    {
                        "saved_model_tar": str(paths["saved_model.tar"]),
                        "tflite": str(paths["model.tflite"]),
                        "windows": str(paths["verification_windows.npy"]),
                        "work": str(work),
                    },
                    work,
                    timeout_s=self._timeout,
                )
        return {k: float(v) for k, v in result["metrics"].items()}


@contextlib.contextmanager
def _scratch_dir(parent: Path, prefix: str) -> Any:
    import tempfile

    with tempfile.TemporaryDirectory(prefix=prefix, dir=parent) as name:
        yield Path(name)
