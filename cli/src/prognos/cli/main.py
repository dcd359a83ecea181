"""The ``prognos`` command line: one Typer app to which each module adds its commands."""

from __future__ import annotations

import prognos.core.grpc_io  # noqa: F401  (first: it sets gRPC's I/O before grpc loads)

# isort: split
import typer

from prognos.cli import ai4i, audit, buskeys, certs, failures, launcher, quarantine, tokens, traces
from prognos.cli import ingest as ingest_commands
from prognos.cli import models as model_commands
from prognos.cli import training as training_commands
from prognos.cli import workorders as work_order_commands

app = typer.Typer(
    name="prognos",
    help="Prognos: predictive maintenance from telemetry to scheduled work orders.",
    no_args_is_help=True,
    add_completion=False,
)

app.command("up")(launcher.up)
app.command("status")(launcher.status)
app.command("certs")(certs.certs)
app.command("bus-keys")(buskeys.bus_keys)
app.add_typer(tokens.app, name="token")
app.add_typer(audit.app, name="audit")
app.add_typer(traces.app, name="trace")
app.command("ingest")(ingest_commands.ingest)
ingest_commands.import_app.command("failures")(failures.import_failures)
ingest_commands.import_app.command("ai4i")(ai4i.import_ai4i)
app.add_typer(ingest_commands.import_app, name="import")
app.command("quarantine")(quarantine.quarantine)
app.add_typer(ingest_commands.snapshot_app, name="snapshot")
app.command("train")(training_commands.train)
app.command("evaluate")(training_commands.evaluate)
app.add_typer(training_commands.training_app, name="training")
app.add_typer(model_commands.app, name="models")
app.add_typer(work_order_commands.app, name="workorders")

if __name__ == "__main__":
    app()
