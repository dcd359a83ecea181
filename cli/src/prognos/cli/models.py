"""``prognos models``: list, show, register, approve, promote, roll back, history and policy.

Wherever a command takes a version it takes a reference too: a version id (``turbofan-v3``),
``turbofan@champion`` or ``turbofan@challenger``, or a bare ``champion`` or ``challenger``
when one asset type has that alias. The registry resolves it and answers with the id.

Every command calls the registry's ``ModelRegistry`` service as the local user with the role
the command needs (``ml-engineer`` to register, ``approver`` to approve, promote and roll
back). ``--token-file`` acts as someone else: a token issued with ``prognos token issue``,
for example for the second principal whose approval a promotion needs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.text import Text

from prognos.api.registry.v1 import registry_pb2, registry_pb2_grpc
from prognos.cli._tables import AsJson, Column, Wide, listing, minute, print_table
from prognos.cli.client import (
    ServiceNotRunningError,
    open_channel,
    open_channel_with_token,
    read_run_info,
)
from prognos.core.config import Settings
from prognos.core.errors import FailedPreconditionError, InvalidArgumentError, from_grpc_error

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "VERSION_HELP",
    "app",
    "approve",
    "history",
    "history_table",
    "list_versions",
    "parse_time",
    "policy",
    "promote",
    "register",
    "registry_call",
    "rollback",
    "show",
    "upload_artifact",
    "versions_table",
]

CHUNK_BYTES = 1 << 20
_DATA_DIR_HELP = "Data directory of `prognos up` (default: $PROGNOS_DATA_DIR, else .prognos)."
_TOKEN_HELP = "Act as the principal of this token (from `prognos token issue`)."
VERSION_HELP = (
    "Model version: an id (turbofan-v3), turbofan@champion, turbofan@challenger, "
    "or champion or challenger when one asset type has it."
)
_ALIASES = {
    "champion": registry_pb2.MODEL_ALIAS_CHAMPION,
    "challenger": registry_pb2.MODEL_ALIAS_CHALLENGER,
}
_STATUSES = {
    "candidate": registry_pb2.MODEL_VERSION_STATUS_CANDIDATE,
    "approved": registry_pb2.MODEL_VERSION_STATUS_APPROVED,
}

T = TypeVar("T")
Stub = registry_pb2_grpc.ModelRegistryStub

app = typer.Typer(
    help="Model versions: approval, promotion, rollback, history.", no_args_is_help=True
)

DataDir = Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)]
TokenFile = Annotated[
    Path | None, typer.Option(help=_TOKEN_HELP, exists=True, dir_okay=False, readable=True)
]
Version = Annotated[str, typer.Argument(help=VERSION_HELP, show_default=False)]


def _fail(console: Console, error: grpc.aio.AioRpcError) -> typer.Exit:
    typed = from_grpc_error(error)
    console.print(
        Text(f"error: {error.code().name} ({typed.reason}): {typed.message}", style="bold red")
    )
    if isinstance(typed, InvalidArgumentError):
        for field, description in typed.violations:
            console.print(f"  {field}: {description}", markup=False, highlight=False)
    if isinstance(typed, FailedPreconditionError):
        for _, subject, description in typed.violations:
            console.print(f"  {subject}: {description}", markup=False, highlight=False)
    return typer.Exit(1)


def registry_call(
    data_dir: Path | None,
    role: str,
    token_file: Path | None,
    call: Callable[[Stub], Awaitable[T]],
    *,
    console: Console | None = None,
) -> T:
    """Run ``call`` with a registry stub; a failed call prints its status and exits 1."""
    console = console or Console(stderr=True)
    overrides: dict[str, Any] = {"data_dir": data_dir} if data_dir is not None else {}
    try:
        info = read_run_info(Settings.load("prognos", **overrides).data_dir.resolve())
    except ServiceNotRunningError as error:
        console.print(Text(f"error: {error}", style="bold red"))
        raise typer.Exit(1) from None

    token = token_file.read_text().strip() if token_file is not None else None

    async def go() -> T:
        channel = (
            open_channel_with_token(info, "registry", token)
            if token is not None
            else open_channel(info, "registry", role=role)
        )
        async with channel:
            return await call(registry_pb2_grpc.ModelRegistryStub(channel))

    try:
        return asyncio.run(go())
    except grpc.aio.AioRpcError as error:
        raise _fail(console, error) from None


async def upload_artifact(
    stub: Stub, path: Path, name: str | None = None
) -> registry_pb2.ModelArtifact:
    """Store a file in the registry's artifact store; returns its name, URI and hash."""
    size = await asyncio.to_thread(lambda: path.stat().st_size)

    async def requests() -> AsyncIterator[registry_pb2.UploadArtifactRequest]:
        header = registry_pb2.UploadArtifactHeader(name=name or path.name, size_bytes=size)
        yield registry_pb2.UploadArtifactRequest(header=header)
        with path.open("rb") as handle:
            while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
                yield registry_pb2.UploadArtifactRequest(chunk=chunk)

    reply: registry_pb2.UploadArtifactResponse = await stub.UploadArtifact(requests(), timeout=600)
    return reply.artifact


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; without a zone it is UTC.

    Raises:
        typer.BadParameter: not a time.
    """
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"not an ISO 8601 time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _alias(name: str) -> int:
    if name not in _ALIASES:
        raise typer.BadParameter(f"choose {' or '.join(_ALIASES)}", param_hint="--alias")
    return _ALIASES[name]


def _alias_name(value: int) -> str:
    return registry_pb2.ModelAlias.Name(value).removeprefix("MODEL_ALIAS_").lower()  # type: ignore[arg-type]


def _status_name(value: int) -> str:
    return registry_pb2.ModelVersionStatus.Name(value).removeprefix("MODEL_VERSION_STATUS_").lower()  # type: ignore[arg-type]


def _how(change: registry_pb2.AliasChange) -> str:
    rolled_back = change.kind == registry_pb2.ALIAS_CHANGE_KIND_ROLLED_BACK
    return "rollback" if rolled_back else "promotion"


def _when(stamp: Any) -> str:
    if not stamp.seconds and not stamp.nanos:
        return ""
    return stamp.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds")


def _json(message: Any) -> str:
    return json.dumps(MessageToDict(message, preserving_proto_field_name=True), indent=2)


def _print_change(change: registry_pb2.AliasChange) -> None:
    moved = "rolled back" if change.kind == registry_pb2.ALIAS_CHANGE_KIND_ROLLED_BACK else "moved"
    origin = change.from_model_version_id or "(none)"
    Console().print(
        f"{change.asset_type} {_alias_name(change.alias)} {moved}: {origin} -> "
        f"{change.to_model_version_id} by {change.actor} at {_when(change.time)}",
        markup=False,
        highlight=False,
    )


# --- commands ----------------------------------------------------------------------------


@app.command("list")
def list_versions(
    asset_type: Annotated[str, typer.Option(help="Only this asset type.")] = "",
    status: Annotated[str, typer.Option(help="Only candidate or approved versions.")] = "",
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: AsJson = False,
    wide: Wide = False,
    data_dir: DataDir = None,
    token_file: TokenFile = None,
) -> None:
    """List model versions, newest first (--wide: PHM08 score, trainer and approver too)."""
    if status and status not in _STATUSES:
        raise typer.BadParameter(f"choose {' or '.join(_STATUSES)}", param_hint="--status")
    request = registry_pb2.ListModelVersionsRequest(
        asset_type=asset_type, status=_STATUSES.get(status, 0), page_size=limit
    )
    reply = registry_call(
        data_dir,
        "ml-engineer",
        token_file,
        lambda stub: stub.ListModelVersions(request, timeout=30),
    )
    if as_json:
        typer.echo(_json(reply))
        return
    console = Console()
    print_table(console, versions_table(reply.model_versions, wide, console.width), wide=wide)


_VERSION_COLUMNS = (
    Column("version", ident=True),
    Column("status"),
    Column("aliases"),
    Column("rmse", justify="right"),
    Column("phm08", justify="right", wide=True),
    Column("trained by", wide=True),
    Column("approved by", wide=True),
    Column("created"),
)


def versions_table(
    versions: Iterable[registry_pb2.ModelVersion], wide: bool = False, width: int | None = None
) -> Table:
    """Model versions, one a row; the whole id first, for ``approve`` and ``promote``."""
    rows = [
        (
            v.id,
            _status_name(v.status),
            ", ".join(_alias_name(a) for a in v.aliases),
            f"{v.metrics['rmse']:.2f}" if "rmse" in v.metrics else "",
            f"{v.metrics['phm08_score']:.1f}" if "phm08_score" in v.metrics else "",
            v.trained_by,
            v.approved_by,
            minute(v.created_at),
        )
        for v in versions
    ]
    return listing("model versions", _VERSION_COLUMNS, rows, wide=wide, width=width)


@app.command()
def show(
    version: Version,
    data_dir: DataDir = None,
    token_file: TokenFile = None,
) -> None:
    """Print one model version as JSON: metrics, lineage, artifacts, aliases, approval."""
    request = registry_pb2.GetModelVersionRequest(model_version_id=version)
    reply = registry_call(
        data_dir, "ml-engineer", token_file, lambda stub: stub.GetModelVersion(request, timeout=30)
    )
    typer.echo(_json(reply.model_version))


@app.command()
def register(
    directory: Annotated[
        Path,
        typer.Argument(
            help="A trained model's files: TrainedModel.save and export_serving output.",
            exists=True,
            file_okay=False,
        ),
    ],
    asset_type: Annotated[str, typer.Option(help="Asset type the model is for.")],
    metric: Annotated[
        list[str] | None, typer.Option(help="NAME=VALUE evaluation metric; repeat.")
    ] = None,
    description: Annotated[str, typer.Option(help="What changed, for the record.")] = "",
    code_version: Annotated[str, typer.Option(help="Version of the code that trained it.")] = "",
    as_json: AsJson = False,
    data_dir: DataDir = None,
    token_file: TokenFile = None,
) -> None:
    """Upload a trained model's files and register it as a candidate.

    Files directly in DIRECTORY are uploaded; a ``saved_model`` directory is sent as
    ``saved_model.tar``. The registry checks the LiteRT model against the SavedModel.
    """
    metrics: dict[str, float] = {}
    for item in metric or []:
        name, sep, value = item.partition("=")
        try:
            metrics[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise typer.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint="--metric")
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != "saved_model.tar")
    saved_model = directory / "saved_model"

    async def call(stub: Stub) -> registry_pb2.RegisterModelVersionResponse:
        artifacts = [await upload_artifact(stub, path) for path in files]
        if saved_model.is_dir():
            archive = await asyncio.to_thread(_pack, saved_model)
            try:
                artifacts.append(await upload_artifact(stub, archive, "saved_model.tar"))
            finally:
                archive.unlink()
        elif (directory / "saved_model.tar").is_file():
            artifacts.append(await upload_artifact(stub, directory / "saved_model.tar"))
        request = registry_pb2.RegisterModelVersionRequest(
            asset_type=asset_type,
            metrics=metrics,
            lineage=registry_pb2.Lineage(code_version=code_version),
            artifacts=artifacts,
            description=description,
        )
        reply: registry_pb2.RegisterModelVersionResponse = await stub.RegisterModelVersion(
            request, timeout=900
        )
        return reply

    reply = registry_call(data_dir, "ml-engineer", token_file, call)
    if as_json:
        typer.echo(_json(reply.model_version))
    else:
        Console().print(f"registered {reply.model_version.id} (candidate)", highlight=False)


def _pack(directory: Path) -> Path:
    """``directory`` as a tar whose bytes depend only on the files (sorted, zeroed times)."""
    import tarfile
    import tempfile

    handle = tempfile.NamedTemporaryFile(suffix=".tar", delete=False)
    handle.close()
    archive = Path(handle.name)
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(directory.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(directory).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_file():
                with path.open("rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)
    return archive


@app.command()
def approve(
    version: Version,
    comment: Annotated[str, typer.Option(help="Why; kept in the audit trail.")] = "",
    data_dir: DataDir = None,
    token_file: TokenFile = None,
) -> None:
    """Approve a candidate (you may not approve what you trained)."""
    request = registry_pb2.ApproveModelVersionRequest(model_version_id=version, comment=comment)
    reply = registry_call(
        data_dir, "approver", token_file, lambda stub: stub.ApproveModelVersion(request, timeout=30)
    )
    Console().print(
        f"{reply.model_version.id} approved by {reply.model_version.approved_by}", highlight=False
    )


@app.command()
def promote(
    version: Version,
    alias: Annotated[str, typer.Option(help="champion or challenger.")] = "champion",
    reason: Annotated[str, typer.Option(help="Why; kept in the alias history.")] = "",
    data_dir: DataDir = None,
    token_file: TokenFile = None,
) -> None:
    """Move the champion (or challenger) alias of the version's asset type to it.

    prognos models promote turbofan@challenger makes the challenger champion.
    """
    request = registry_pb2.PromoteModelVersionRequest(
        model_version_id=version, alias=_alias(alias), reason=reason
    )
    reply = registry_call(
        data_dir, "approver", token_file, lambda stub: stub.PromoteModelVersion(request, timeout=30)
    )
    _print_change(reply.change)


@app.command()
def rollback(
    asset_type: Annotated[str, typer.Option(help="Asset type whose alias to roll back.")],
    alias: Annotated[str, typer.Option(help="champion or challenger.")] = "champion",
    to: Annotated[
        str,
        typer.Option(
            help="An earlier holder, by id or reference such as turbofan@challenger "
            "(default: the one before)."
        ),
    ] = "",
    reason: Annotated[str, typer.Option(help="Why; kept in the alias history.")] = "",
    data_dir: DataDir = None,
    token_file: TokenFile = None,
) -> None:
    """Move an alias back to the version that held it before."""
    request = registry_pb2.RollbackAliasRequest(
        asset_type=asset_type, alias=_alias(alias), to_model_version_id=to, reason=reason
    )
    reply = registry_call(
        data_dir, "approver", token_file, lambda stub: stub.RollbackAlias(request, timeout=30)
    )
    _print_change(reply.change)


@app.command()
def history(
    asset_type: Annotated[str, typer.Option(help="Asset type whose aliases to show.")],
    alias: Annotated[str, typer.Option(help="champion, challenger, or both if empty.")] = "",
    at: Annotated[
        str, typer.Option(help="Only who held each alias at this ISO 8601 time, and who set it.")
    ] = "",
    as_json: AsJson = False,
    wide: Wide = False,
    data_dir: DataDir = None,
    token_file: TokenFile = None,
) -> None:
    """Who moved which alias when, and how; with --at, the holder at that time.

    --wide shows why each move was made.
    """
    request = registry_pb2.GetAliasHistoryRequest(
        asset_type=asset_type, alias=_alias(alias) if alias else 0
    )
    if at:
        request.at.FromDatetime(parse_time(at))
    reply = registry_call(
        data_dir, "ml-engineer", token_file, lambda stub: stub.GetAliasHistory(request, timeout=30)
    )
    if as_json:
        typer.echo(_json(reply))
        return
    title = f"{asset_type} aliases" + (f" at {at}" if at else "")
    console = Console()
    print_table(console, history_table(title, reply.changes, wide, console.width), wide=wide)


_HISTORY_COLUMNS = (
    Column("time"),
    Column("alias"),
    Column("from", ident=True),
    Column("to", ident=True),
    Column("by"),
    Column("how"),
    Column("why", wide=True),
)


def history_table(
    title: str,
    changes: Iterable[registry_pb2.AliasChange],
    wide: bool = False,
    width: int | None = None,
) -> Table:
    """Alias moves, oldest first: when, which alias, from and to which version, who, how."""
    rows = [
        (
            minute(change.time),
            _alias_name(change.alias),
            change.from_model_version_id,
            change.to_model_version_id,
            change.actor,
            "rollback"
            if change.kind == registry_pb2.ALIAS_CHANGE_KIND_ROLLED_BACK
            else "promotion",
            change.reason,
        )
        for change in changes
    ]
    return listing(title, _HISTORY_COLUMNS, rows, wide=wide, width=width)


@app.command()
def policy(
    asset_type: Annotated[str, typer.Option(help="Asset type whose policy to set.")],
    auto_promote: Annotated[
        bool, typer.Option(help="Promote a candidate that beats the champion by the margin.")
    ] = False,
    margin: Annotated[float, typer.Option(help="How much better, in the metric's unit.")] = 0.0,
    metric: Annotated[str, typer.Option(help="rmse or phm08_score (lower is better).")] = "rmse",
    manual_challenger: Annotated[
        bool, typer.Option(help="Do not make new candidates the challenger.")
    ] = False,
    reason: Annotated[str, typer.Option(help="Why; kept in the audit trail.")] = "",
    data_dir: DataDir = None,
    token_file: TokenFile = None,
) -> None:
    """Set an asset type's promotion policy."""
    request = registry_pb2.SetPromotionPolicyRequest(
        asset_type=asset_type,
        policy=registry_pb2.PromotionPolicy(
            auto_promote=auto_promote,
            metric=metric,
            margin=margin,
            manual_challenger=manual_challenger,
        ),
        reason=reason,
    )
    reply = registry_call(
        data_dir, "approver", token_file, lambda stub: stub.SetPromotionPolicy(request, timeout=30)
    )
    typer.echo(_json(reply.policy))
