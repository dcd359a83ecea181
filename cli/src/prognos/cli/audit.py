"""``prognos audit``: verify every service's chain against its anchor; export and check copies.

``verify`` asks each running service to walk its chain (``AuditService.VerifyChain``) and
compares the result with the latest head anchored on the ``AUDIT`` stream and the latest
signed checkpoint, so a database cut short or rewritten is caught as well as an edited,
deleted or reordered entry. ``checkpoint`` exports a service's chain with a freshly signed
checkpoint to a JSON file that ``verify-offline`` checks with the public key alone.

Export format (``prognos-audit-copy/1``)::

    {"format": "prognos-audit-copy/1",
     "service": "ingest",
     "checkpoint": {"service", "seq", "hash", "at", "algorithm", "key_id",
                    "signature": <base64>},
     "entries": [{"seq", "entry_id", "at", "actor", "action", "subject", "reason",
                  "trace_id", "details", "prev_hash", "hash"}, ...]}

An entry's ``hash`` is the SHA-256 of the canonical JSON (sorted keys, no spaces, UTF-8) of
its other fields; the signature is Ed25519 over the canonical JSON of the checkpoint's
``service``, ``seq``, ``hash`` and ``at``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import grpc
import grpc.aio
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from prognos.api.common.v1 import audit_pb2, audit_pb2_grpc
from prognos.cli._tables import AsJson, Column, echo_json, listing
from prognos.cli.client import ServiceNotRunningError, open_channel, read_run_info, secrets_of
from prognos.cli.launcher import RunInfo
from prognos.core import anchoring, audit, bus, busauth
from prognos.core.audit_api import entry_from_proto
from prognos.core.auth import load_public_key
from prognos.core.config import Settings

__all__ = [
    "COPY_FORMAT",
    "OfflineVerdict",
    "ServiceVerdict",
    "app",
    "export_copy",
    "verify_copy",
    "verify_running",
]

COPY_FORMAT = "prognos-audit-copy/1"
_ROLE = "auditor"
_TIMEOUT_S = 30.0

app = typer.Typer(help="Check and export the audit chains.", no_args_is_help=True)
_DATA_DIR_HELP = "Data directory (default: $PROGNOS_DATA_DIR, else .prognos)."


# --- verifying a running system ---------------------------------------------------------


@dataclass
class ServiceVerdict:
    """What ``verify`` found for one service."""

    service: str
    ok: bool = True
    entries: int = 0
    head_seq: int = 0
    anchored_seq: int | None = None
    checkpoint_seq: int | None = None
    broken_seq: int | None = None
    broken_entry_id: str | None = None
    problems: list[str] = field(default_factory=list)

    def fail(self, problem: str, seq: int | None = None, entry_id: str | None = None) -> None:
        """Record a problem; the first one that names an entry is the one reported."""
        self.ok = False
        self.problems.append(problem)
        if seq is not None and self.broken_seq is None:
            self.broken_seq, self.broken_entry_id = seq, entry_id


async def _entry_at(stub: audit_pb2_grpc.AuditServiceStub, seq: int) -> audit.AuditEntry | None:
    reply = await stub.ListEntries(
        audit_pb2.ListEntriesRequest(after_seq=seq - 1, limit=1), timeout=_TIMEOUT_S
    )
    if not reply.entries or reply.entries[0].seq != seq:
        return None
    return entry_from_proto(reply.entries[0])


async def _verify_service(info: RunInfo, service: str, js: Any) -> ServiceVerdict:
    try:
        return await _ask_service(info, service, js)
    except grpc.aio.AioRpcError as error:
        verdict = ServiceVerdict(service)
        verdict.fail(f"could not ask it: {error.code().name}: {error.details()}")
        return verdict


async def _ask_service(info: RunInfo, service: str, js: Any) -> ServiceVerdict:
    verdict = ServiceVerdict(service)
    async with open_channel(info, service, role=_ROLE) as channel:
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        walked = await stub.VerifyChain(audit_pb2.VerifyChainRequest(), timeout=_TIMEOUT_S)
        verdict.entries, verdict.head_seq = walked.entries, walked.head.seq
        if not walked.ok:
            verdict.fail(walked.problem, walked.broken_seq, walked.broken_entry_id)
        anchor = await anchoring.latest_anchor(js, service)
        last_seq = walked.head.seq if walked.ok else None
        if anchor is not None:
            verdict.anchored_seq = anchor.seq
            await _compare(verdict, stub, "anchored", anchor.seq, anchor.hash, last_seq)
        checkpoint = await anchoring.latest_checkpoint(js, service)
        if checkpoint is not None:
            verdict.checkpoint_seq = checkpoint.head.seq
            key_path = secrets_of(info).checkpoint_public_key(service)
            if key_path.is_file():
                try:
                    anchoring.verify_checkpoint(load_public_key(key_path), checkpoint)
                except anchoring.CheckpointSignatureError as error:
                    verdict.fail(f"the latest checkpoint: {error}")
            head = checkpoint.head
            await _compare(verdict, stub, "checkpointed", head.seq, head.hash, last_seq)
    return verdict


async def _compare(
    verdict: ServiceVerdict,
    stub: audit_pb2_grpc.AuditServiceStub,
    what: str,
    seq: int,
    expected_hash: str,
    last_seq: int | None,
) -> None:
    """Check that the database still holds entry ``seq`` with the hash anchored for it."""
    if seq == 0:
        return
    if last_seq is not None and last_seq < seq:
        verdict.fail(
            f"the database ends at entry {last_seq} but entry {seq} was {what}: "
            "entries were removed",
            last_seq + 1,
        )
        return
    entry = await _entry_at(stub, seq)
    if entry is None:
        verdict.fail(f"entry {seq} was {what} but is missing from the database", seq)
    elif entry.hash != expected_hash:
        verdict.fail(
            f"entry {seq} differs from its {what} hash: the chain was rewritten",
            seq,
            entry.entry_id,
        )


async def verify_running(info: RunInfo, services: list[str] | None = None) -> list[ServiceVerdict]:
    """Verify the chains of the services ``info`` describes against their anchors.

    Args:
        info: What `prognos up` started.
        services: Only these (default: every running service).

    Returns:
        One verdict per service, in the run file's order.
    """
    names = services or [record.name for record in info.services]
    settings = Settings.load("cli", nats_url=info.nats_url, data_dir=Path(info.data_dir))
    if settings.nats_nkey_seed_file is None:
        # The command line's own, read-only bus identity, made by `prognos up`.
        seed = busauth.seed_path(busauth.identity_dir(settings.secrets_dir), busauth.CLI_IDENTITY)
        if seed.is_file():
            settings = settings.model_copy(update={"nats_nkey_seed_file": seed})
    nc = await bus.connect(settings, name="prognos-audit")
    try:
        js = nc.jetstream()
        return list(await asyncio.gather(*(_verify_service(info, name, js) for name in names)))
    finally:
        await nc.drain()


_VERDICT_COLUMNS = (
    Column("Service", ident=True),
    Column("Entries", justify="right"),
    Column("Head", justify="right"),
    Column("Anchored", justify="right"),
    Column("Checkpoint", justify="right"),
    Column("Result"),
)


def _verdict_table(verdicts: list[ServiceVerdict], width: int | None = None) -> Table:
    rows = []
    for v in verdicts:
        if v.ok:
            result = Text("verified", "green")
        elif v.broken_seq is None:
            result = Text("FAILED", "bold red")
        else:
            ident = f" ({v.broken_entry_id})" if v.broken_entry_id else ""
            result = Text(f"BROKEN at entry {v.broken_seq}{ident}", "bold red")
        rows.append(
            (
                v.service,
                str(v.entries),
                str(v.head_seq),
                "-" if v.anchored_seq is None else str(v.anchored_seq),
                "-" if v.checkpoint_seq is None else str(v.checkpoint_seq),
                result,
            )
        )
    return listing("Audit chains", _VERDICT_COLUMNS, rows, width=width)


def _run_info(console: Console, data_dir: Path | None) -> RunInfo:
    settings = Settings.load("cli", **({"data_dir": data_dir} if data_dir else {}))
    try:
        return read_run_info(settings.data_dir.resolve())
    except ServiceNotRunningError as error:
        console.print(Text(f"error: {error}", "red"), highlight=False)
        raise typer.Exit(1) from None


@app.command("verify")
def verify(
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)] = None,
    service: Annotated[
        list[str] | None, typer.Option(help="Only this service; repeat. Default: all.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Check every service's chain end to end and against its anchor; exit 1 on any break."""
    console = Console()
    info = _run_info(console, data_dir)
    verdicts = asyncio.run(verify_running(info, service))
    ok = all(v.ok for v in verdicts)
    if as_json:
        echo_json({"ok": ok, "services": [asdict(v) for v in verdicts]})
        raise typer.Exit(0 if ok else 1)
    console.print(_verdict_table(verdicts, console.width))
    for v in verdicts:
        for problem in v.problems:
            where = f" entry {v.broken_seq}" if v.broken_seq is not None else ""
            ident = f" ({v.broken_entry_id})" if v.broken_entry_id else ""
            console.print(Text(f"{v.service}{where}{ident}: {problem}", "red"), highlight=False)
    raise typer.Exit(0 if ok else 1)


# --- copies for offline checks ----------------------------------------------------------


def _entry_document(entry: audit.AuditEntry) -> dict[str, Any]:
    return {**entry.content(), "hash": entry.hash}


def _entry_of(document: dict[str, Any]) -> audit.AuditEntry:
    at = datetime.fromisoformat(document["at"])
    return audit.AuditEntry(
        seq=int(document["seq"]),
        entry_id=str(document["entry_id"]),
        at=at if at.tzinfo else at.replace(tzinfo=UTC),
        actor=str(document["actor"]),
        action=str(document["action"]),
        subject=str(document["subject"]),
        reason=str(document["reason"]),
        trace_id=str(document["trace_id"]),
        details=dict(document["details"]),
        prev_hash=str(document["prev_hash"]),
        hash=str(document["hash"]),
    )


async def export_copy(info: RunInfo, service: str) -> dict[str, Any]:
    """Have ``service`` sign a checkpoint of its chain now, and copy the chain up to it.

    Returns:
        The export document (see the module docstring).
    """
    async with open_channel(info, service, role=_ROLE) as channel:
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        reply = await stub.CreateCheckpoint(audit_pb2.CreateCheckpointRequest(), timeout=_TIMEOUT_S)
        checkpoint = reply.checkpoint
        entries: list[audit.AuditEntry] = []
        after = 0
        while after < checkpoint.head.seq:
            page = await stub.ListEntries(
                audit_pb2.ListEntriesRequest(after_seq=after), timeout=_TIMEOUT_S
            )
            if not page.entries:
                break
            entries.extend(
                entry_from_proto(e) for e in page.entries if e.seq <= checkpoint.head.seq
            )
            after = page.entries[-1].seq
    head = anchoring.ChainHead.from_proto(checkpoint.head)
    return {
        "format": COPY_FORMAT,
        "service": service,
        "checkpoint": {
            **json.loads(anchoring.signing_payload(head)),
            "algorithm": checkpoint.algorithm,
            "key_id": checkpoint.key_id,
            "signature": base64.b64encode(checkpoint.signature).decode(),
        },
        "entries": [_entry_document(e) for e in entries],
    }


@dataclass(frozen=True)
class OfflineVerdict:
    """What ``verify-offline`` found: ``ok``, or the first problem and the entry it names."""

    ok: bool
    service: str
    entries: int
    checkpoint_seq: int
    problem: str = ""
    broken_seq: int | None = None
    broken_entry_id: str | None = None


def verify_copy(document: dict[str, Any], public_key_path: Path) -> OfflineVerdict:
    """Check an exported copy: the checkpoint's signature, then every entry up to it.

    Args:
        document: The export (see the module docstring).
        public_key_path: The service's checkpoint public key (PEM), obtained independently.

    Returns:
        The verdict; never raises for a tampered copy.
    """
    try:
        service = str(document["service"])
        signed = document["checkpoint"]
        head = anchoring.ChainHead(
            service=str(signed["service"]),
            seq=int(signed["seq"]),
            hash=str(signed["hash"]),
            at=datetime.fromisoformat(signed["at"]),
        )
        checkpoint = audit_pb2.Checkpoint(
            head=head.to_proto(),
            algorithm=str(signed["algorithm"]),
            key_id=str(signed.get("key_id", "")),
            signature=base64.b64decode(signed["signature"]),
        )
        entries = [_entry_of(e) for e in document["entries"]]
    except (KeyError, TypeError, ValueError) as error:
        return OfflineVerdict(
            False, str(document.get("service", "?")), 0, 0, f"unreadable: {error}"
        )
    verdict = OfflineVerdict(True, service, len(entries), head.seq)
    try:
        anchoring.verify_checkpoint(load_public_key(public_key_path), checkpoint)
    except anchoring.CheckpointSignatureError as error:
        return _broken(verdict, f"checkpoint: {error}")
    if head.service != service:
        return _broken(verdict, f"the checkpoint is of {head.service}, not {service}")
    walked = audit.verify_entries(entries)
    if not walked.ok:
        return _broken(
            verdict, walked.problem or "broken", walked.broken_seq, walked.broken_entry_id
        )
    if walked.head_seq != head.seq or walked.head_hash != head.hash:
        return _broken(
            verdict,
            f"the copy ends at entry {walked.head_seq} with another hash than the signed "
            f"head {head.seq}: entries were removed or rewritten",
            min(walked.head_seq, head.seq) or None,
        )
    return verdict


def _broken(
    verdict: OfflineVerdict, problem: str, seq: int | None = None, entry_id: str | None = None
) -> OfflineVerdict:
    return OfflineVerdict(
        False, verdict.service, verdict.entries, verdict.checkpoint_seq, problem, seq, entry_id
    )


@app.command("checkpoint")
def checkpoint(
    service: Annotated[str, typer.Option(help="The service whose chain to export.")],
    out: Annotated[Path, typer.Option(help="The JSON file to write.")],
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)] = None,
) -> None:
    """Export a service's chain with a freshly signed checkpoint, for offline checks."""
    info = _run_info(Console(), data_dir)
    document = asyncio.run(export_copy(info, service))
    out.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    signed = document["checkpoint"]
    Console().print(
        f"{service}: {len(document['entries'])} entries, checkpoint at entry {signed['seq']} "
        f"signed by key {signed['key_id']} -> {out}",
        highlight=False,
    )


@app.command("verify-offline")
def verify_offline(
    file: Annotated[Path, typer.Argument(help="A copy written by `prognos audit checkpoint`.")],
    public_key: Annotated[Path, typer.Option(help="The service's checkpoint public key (PEM).")],
) -> None:
    """Check an exported chain against its signed checkpoint; exit 1 if anything is off."""
    console = Console()
    try:
        document = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        console.print(Text(f"cannot read {file}: {error}", "red"))
        raise typer.Exit(1) from None
    verdict = verify_copy(document, public_key)
    if verdict.ok:
        console.print(
            Text(
                f"{verdict.service}: {verdict.entries} entries verified against the checkpoint "
                f"at entry {verdict.checkpoint_seq}",
                "green",
            )
        )
        raise typer.Exit(0)
    where = f" entry {verdict.broken_seq}" if verdict.broken_seq is not None else ""
    ident = f" ({verdict.broken_entry_id})" if verdict.broken_entry_id else ""
    console.print(
        Text(f"{verdict.service}{where}{ident}: {verdict.problem}", "bold red"), highlight=False
    )
    raise typer.Exit(1)


# --- the trail of a work order ------------------------------------------------------------


@app.command("trail")
def trail(
    work_order: Annotated[str, typer.Argument(help="The work order's id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the trail as JSON.")] = False,
    html_file: Annotated[
        Path | None, typer.Option("--html", help="Also write the report as an HTML page.")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)] = None,
) -> None:
    """Everything that led to a work order and followed it, in one call to the scheduler.

    Exit 1 if a chain does not verify or a service gave no part, 2 for an unknown work order.
    """
    from prognos.cli.trail import collect_trail, render_html, render_trail

    console = Console()
    info = _run_info(console, data_dir)
    try:
        found = asyncio.run(collect_trail(info, work_order))
    except grpc.aio.AioRpcError as error:
        errors = Console(stderr=True)
        if error.code() == grpc.StatusCode.NOT_FOUND:
            errors.print(Text(f"error: no work order {work_order}", "red"), highlight=False)
            raise typer.Exit(2) from None
        errors.print(Text(f"error: {error.code().name}: {error.details()}", "red"), highlight=False)
        raise typer.Exit(1) from None
    if html_file is not None:
        html_file.write_text(render_html(found))
    if as_json:
        print(json.dumps(found.to_dict(), indent=1, ensure_ascii=False))
    else:
        console.print(render_trail(found))
    raise typer.Exit(0 if found.verified else 1)


# --- erasure of personal data -------------------------------------------------------------


async def erase_person(info: RunInfo, person: str, reason: str) -> dict[str, list[str]]:
    """Have every running service erase ``person``'s name; the references erased, by service.

    Args:
        info: What `prognos up` started.
        person: The name as recorded, or ``person/<id>``.
        reason: Why (audited with each erasure).
    """

    async def one(service: str) -> tuple[str, list[str]]:
        async with open_channel(info, service, role="admin") as channel:
            reply = await audit_pb2_grpc.AuditServiceStub(channel).ErasePerson(
                audit_pb2.ErasePersonRequest(person=person, reason=reason), timeout=_TIMEOUT_S
            )
        return service, list(reply.erased)

    names = [record.name for record in info.services]
    return dict(await asyncio.gather(*(one(name) for name in names)))


@app.command("erase")
def erase(
    person: Annotated[str, typer.Argument(help="The person's name as recorded, or person/<id>.")],
    reason: Annotated[str, typer.Option(help="Why (e.g. the request's number); audited.")] = "",
    as_json: AsJson = False,
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)] = None,
) -> None:
    """Erase a person's name from every trail that shows it; the chains keep verifying."""
    console = Console(stderr=as_json)
    info = _run_info(console, data_dir)
    erased = asyncio.run(erase_person(info, person, reason))
    if as_json:
        echo_json({"erased": erased})
    else:
        rows = [(service, "\n".join(refs) or "-") for service, refs in erased.items()]
        columns = (Column("Service"), Column("Erased", ident=True))
        console.print(listing("Erasure", columns, rows, width=console.width))
    if not any(erased.values()):
        console.print(Text("no service knew that person", "yellow"))
        raise typer.Exit(1)
