"""``prognos train``, ``prognos evaluate`` and ``prognos training watch|cancel|list``.

Training and evaluation run in the registry's worker processes; this command line only
uploads files, starts the work and follows it (a progress bar fed by ``WatchTrainingRun``).
Ctrl-C while following a run cancels it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from prognos.api.registry.v1 import registry_pb2
from prognos.cli._tables import AsJson, Column, Wide, echo_json, listing, print_table
from prognos.cli.models import VERSION_HELP, Stub, registry_call, upload_artifact

__all__ = ["evaluate", "parse_params", "runs_table", "train", "training_app"]

_DATA_DIR_HELP = "Data directory of `prognos up` (default: $PROGNOS_DATA_DIR, else .prognos)."
_TOKEN_HELP = "Act as the principal of this token (from `prognos token issue`)."

DataDir = Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)]
TokenFile = Annotated[
    Path | None, typer.Option(help=_TOKEN_HELP, exists=True, dir_okay=False, readable=True)
]

training_app = typer.Typer(help="Follow, cancel and list training runs.", no_args_is_help=True)


def parse_params(items: list[str]) -> dict[str, str]:
    """``NAME=VALUE`` hyper-parameters.

    Raises:
        typer.BadParameter: an item is not of that form.
    """
    params: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise typer.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint="--param")
        params[name.strip()] = value.strip()
    return params


def _state(value: int) -> str:
    return registry_pb2.TrainingRunState.Name(value).removeprefix("TRAINING_RUN_STATE_").lower()  # type: ignore[arg-type]


def _detail(run: registry_pb2.TrainingRun) -> str:
    parts = []
    if run.total_epochs:
        parts.append(f"epoch {run.epoch}/{run.total_epochs}")
    if "loss" in run.metrics:
        parts.append(f"loss {run.metrics['loss']:.4f}")
    if "rmse" in run.metrics:
        parts.append(f"held-out RMSE {run.metrics['rmse']:.2f}")
    return "  ".join(parts)


async def _follow(stub: Stub, run_id: str, console: Console) -> registry_pb2.TrainingRun:
    """Show a run's progress until it finishes; returns its last state."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<12}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
    )
    last = registry_pb2.TrainingRun()
    with progress:
        task = progress.add_task("queued", total=100.0, detail="")
        async for reply in stub.WatchTrainingRun(
            registry_pb2.WatchTrainingRunRequest(run_id=run_id), timeout=24 * 3600
        ):
            last = reply.run
            description = last.phase or _state(last.state)
            progress.update(
                task, completed=100.0 * last.progress, description=description, detail=_detail(last)
            )
    return last


def _outcome(
    stub_call: Any, run: registry_pb2.TrainingRun, console: Console, as_json: bool
) -> None:
    if run.state != registry_pb2.TRAINING_RUN_STATE_SUCCEEDED:
        message = run.error_message or run.reason
        console.print(Text(f"run {run.id} {_state(run.state)}: {message}", style="bold red"))
        raise typer.Exit(1)
    version = stub_call(run.model_version_id)
    if as_json:
        typer.echo(json.dumps(MessageToDict(version, preserving_proto_field_name=True), indent=2))
        return
    table = Table(title=f"{version.id} registered (candidate)", show_header=False)
    table.add_column()
    table.add_column(overflow="fold")
    for name in ("rmse", "phm08_score", "precision", "recall", "f1", "units"):
        if name in version.metrics:
            table.add_row(f"held-out {name}", f"{version.metrics[name]:.4g}")
    seconds = version.lineage.training_metrics.get("train_seconds")
    if seconds is not None:
        table.add_row("training seconds", f"{seconds:.1f}")
    table.add_row("run", run.id)
    table.add_row("dataset", version.lineage.dataset_snapshot_id or version.lineage.source_uri)
    table.add_row("code", version.lineage.code_version)
    Console().print(table)


def train(
    asset_type: Annotated[str, typer.Option(help="Asset type to train a model for.")],
    cmapss: Annotated[
        Path | None,
        typer.Option(
            help="Train on this C-MAPSS training file (uploaded) instead of a dataset snapshot.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    snapshot: Annotated[
        str, typer.Option(help="Dataset snapshot id or name (default: the newest).")
    ] = "",
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: the tuned value).")] = None,
    param: Annotated[
        list[str] | None, typer.Option(help="NAME=VALUE hyper-parameter; repeat.")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why; kept with the run.")] = "",
    detach: Annotated[bool, typer.Option(help="Print the run id and return at once.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the new version as JSON.")] = False,
    data_dir: DataDir = None,
    token_file: TokenFile = None,
) -> None:
    """Train a model in the registry's worker, with a progress bar; Ctrl-C cancels the run."""
    if cmapss is not None and snapshot:
        raise typer.BadParameter("give --cmapss or --snapshot, not both", param_hint="--cmapss")
    hyperparameters = parse_params(param or [])
    if epochs is not None:
        hyperparameters["epochs"] = str(epochs)
    console = Console(stderr=True)
    started_at = time.monotonic()

    async def start(stub: Stub) -> registry_pb2.TrainingRun:
        request = registry_pb2.StartTrainingRequest(
            asset_type=asset_type,
            dataset_snapshot_id=snapshot,
            hyperparameters=hyperparameters,
            reason=reason,
        )
        if cmapss is not None:
            uploaded = await upload_artifact(stub, cmapss)
            request.source_content_hash = uploaded.content_hash
            request.source_name = cmapss.name
        reply: registry_pb2.StartTrainingResponse = await stub.StartTraining(request, timeout=60)
        return reply.run

    run = registry_call(data_dir, "ml-engineer", token_file, start, console=console)
    console.print(f"training run {run.id} queued", highlight=False)
    if detach:
        typer.echo(run.id)
        return
    _watch(run.id, data_dir, token_file, console, as_json, started_at)


def _watch(
    run_id: str,
    data_dir: Path | None,
    token_file: Path | None,
    console: Console,
    as_json: bool,
    started_at: float,
) -> None:
    try:
        run = registry_call(
            data_dir, "ml-engineer", token_file, lambda stub: _follow(stub, run_id, console)
        )
    except KeyboardInterrupt:
        console.print(f"cancelling run {run_id} ...", highlight=False)
        request = registry_pb2.CancelTrainingRequest(run_id=run_id, reason="interrupted (Ctrl-C)")
        registry_call(
            data_dir,
            "ml-engineer",
            token_file,
            lambda stub: stub.CancelTraining(request, timeout=30),
        )
        raise typer.Exit(130) from None
    console.print(f"finished in {time.monotonic() - started_at:.1f}s", highlight=False)

    def version(model_version_id: str) -> registry_pb2.ModelVersion:
        request = registry_pb2.GetModelVersionRequest(model_version_id=model_version_id)
        reply = registry_call(
            data_dir,
            "ml-engineer",
            token_file,
            lambda stub: stub.GetModelVersion(request, timeout=30),
        )
        return reply.model_version

    _outcome(version, run, console, as_json)


def evaluate(
    model: Annotated[str, typer.Option(help=VERSION_HELP, show_default=False)],
    cmapss_test: Annotated[
        Path,
        typer.Option(
            help="Test file in the NASA layout.", exists=True, dir_okay=False, readable=True
        ),
    ],
    cmapss_truth: Annotated[
        Path,
        typer.Option(
            help="Truth file: one true RUL per test unit.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    report: Annotated[
        Path | None,
        typer.Option(help="Where to write the PNG (default: evaluation-<version id>.png)."),
    ] = None,
    data_dir: DataDir = None,
    token_file: TokenFile = None,
) -> None:
    """Evaluate a model version by the C-MAPSS last-cycle protocol; print JSON, write a PNG.

    --model champion evaluates the version serving now; the JSON names its id.
    """

    async def call(stub: Stub) -> registry_pb2.EvaluateModelVersionResponse:
        test = await upload_artifact(stub, cmapss_test)
        truth = await upload_artifact(stub, cmapss_truth)
        reply: registry_pb2.EvaluateModelVersionResponse = await stub.EvaluateModelVersion(
            registry_pb2.EvaluateModelVersionRequest(
                model_version_id=model,
                test_content_hash=test.content_hash,
                truth_content_hash=truth.content_hash,
            ),
            timeout=1800,
        )
        return reply

    console = Console(stderr=True)
    with console.status(f"evaluating {model} on {cmapss_test.name}"):
        reply = registry_call(data_dir, "ml-engineer", token_file, call, console=console)
    version_id = reply.model_version_id or model
    out = report or Path(f"evaluation-{version_id}.png")
    out.write_bytes(reply.report_png)
    evaluation = json.loads(reply.evaluation_json)
    typer.echo(
        json.dumps({"model_version": version_id, "report": str(out), **evaluation}, indent=2)
    )
    console.print(f"report written to {out}", highlight=False)


@training_app.command("watch")
def watch(
    run_id: Annotated[str, typer.Argument(help="Training run id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the new version as JSON.")] = False,
    data_dir: DataDir = None,
    token_file: TokenFile = None,
) -> None:
    """Follow a training run with a progress bar; Ctrl-C cancels it."""
    _watch(run_id, data_dir, token_file, Console(stderr=True), as_json, time.monotonic())


@training_app.command("cancel")
def cancel(
    run_id: Annotated[str, typer.Argument(help="Training run id.")],
    reason: Annotated[str, typer.Option(help="Why; kept with the run.")] = "",
    data_dir: DataDir = None,
    token_file: TokenFile = None,
) -> None:
    """Cancel a queued or running training run."""
    request = registry_pb2.CancelTrainingRequest(run_id=run_id, reason=reason)
    reply = registry_call(
        data_dir, "ml-engineer", token_file, lambda stub: stub.CancelTraining(request, timeout=30)
    )
    Console().print(f"run {reply.run.id} {_state(reply.run.state)}", highlight=False)


@training_app.command("list")
def list_runs(
    asset_type: Annotated[str, typer.Option(help="Only this asset type.")] = "",
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 20,
    as_json: AsJson = False,
    wide: Wide = False,
    data_dir: DataDir = None,
    token_file: TokenFile = None,
) -> None:
    """List training runs, newest first (--wide: asset type, trigger and who asked too)."""
    request = registry_pb2.ListTrainingRunsRequest(asset_type=asset_type, page_size=limit)
    reply = registry_call(
        data_dir, "ml-engineer", token_file, lambda stub: stub.ListTrainingRuns(request, timeout=30)
    )
    if as_json:
        echo_json(reply)
        return
    console = Console()
    print_table(console, runs_table(reply.runs, wide, console.width), wide=wide)


_RUN_COLUMNS = (
    Column("run", ident=True),
    Column("asset type", wide=True),
    Column("state"),
    Column("trigger", wide=True),
    Column("progress", justify="right"),
    Column("version", ident=True),
    Column("by", wide=True),
    Column("why"),
)


def runs_table(
    runs: Iterable[registry_pb2.TrainingRun], wide: bool = False, width: int | None = None
) -> Table:
    """Training runs, one a row: the run's id and the version it registered, whole."""
    rows = []
    for run in runs:
        trigger = registry_pb2.TrainingTrigger.Name(run.trigger).removeprefix("TRAINING_TRIGGER_")  # type: ignore[arg-type]
        rows.append(
            (
                run.id,
                run.asset_type,
                _state(run.state),
                trigger.lower(),
                f"{100 * run.progress:.0f}%",
                run.model_version_id,
                run.requested_by,
                run.reason or run.error_message,
            )
        )
    return listing("training runs", _RUN_COLUMNS, rows, wide=wide, width=width)
