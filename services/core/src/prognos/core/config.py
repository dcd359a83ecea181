"""Settings for every Prognos process: environment first, then an optional TOML file.

This is the only module that reads the environment. A service builds its settings once in
``main`` and passes the frozen object down.

Precedence, highest first:

1. ``PROGNOS_<SERVICE>_<FIELD>`` (for example ``PROGNOS_INGEST_GRPC_PORT``),
2. ``PROGNOS_<FIELD>`` (shared by all services, for example ``PROGNOS_NATS_URL``),
3. the ``[<service>]`` table, then the top level, of the TOML file named by ``PROGNOS_CONFIG``,
4. the defaults below.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Self

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

SERVICES = ("ingest", "registry", "inference", "scheduler")


class _LayeredSource(PydanticBaseSettingsSource):
    """Reads ``PROGNOS_<SERVICE>_*`` over ``PROGNOS_*`` over the TOML file."""

    def __init__(self, settings_cls: type[BaseSettings], service: str) -> None:
        super().__init__(settings_cls)
        self._service = service

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ is overridden

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        config_file = os.environ.get("PROGNOS_CONFIG")
        if config_file:
            with open(config_file, "rb") as fh:
                document = tomllib.load(fh)
            values.update({k: v for k, v in document.items() if not isinstance(v, dict)})
            values.update(document.get(self._service, {}))
        fields = self.settings_cls.model_fields
        for prefix in ("PROGNOS_", f"PROGNOS_{self._service.upper()}_"):
            for name in fields:
                raw = os.environ.get(prefix + name.upper())
                if raw is not None:
                    values[name] = raw
        return values


class Settings(BaseSettings):
    """Settings shared by every Prognos process.

    A field left at ``None`` means "not configured": for ``nats_url`` the launcher starts an
    embedded nats-server, for ``database_url`` a SQLite file under ``data_dir`` is used, for
    ``otlp_endpoint`` spans are written locally under ``data_dir/spans``.
    """

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    service: str = "prognos"
    data_dir: Path = Path(".prognos")
    database_url: str | None = None
    db_schema: str | None = Field(
        default=None, description="PostgreSQL schema owned by this service (default: its name)"
    )
    nats_url: str | None = None
    nats_user: str | None = None
    nats_password: str | None = None
    nats_nkey_seed_file: Path | None = Field(
        default=None,
        description="This process's NATS nkey seed (one line, owner-only); the bus identity",
    )
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 0
    otlp_endpoint: str | None = None
    log_level: str = "INFO"
    shutdown_grace_s: float = 5.0
    # gRPC server limits (every service): concurrent streams per connection (more calls wait
    # on the client), the largest request message, how long a connection lives before the
    # server asks the client to reconnect (GOAWAY) and how long its calls may then finish,
    # how often an idle connection is pinged and how long an answer may take, and how often
    # a client may ping without data before it is told off (two strikes close it).
    grpc_max_concurrent_streams: int = 256
    grpc_max_receive_message_bytes: int = 4 << 20
    grpc_max_connection_age_s: float = 3600.0
    grpc_max_connection_age_grace_s: float = 300.0
    grpc_keepalive_time_s: float = 60.0
    grpc_keepalive_timeout_s: float = 20.0
    grpc_min_ping_interval_s: float = 30.0
    grpc_max_ping_strikes: int = 2
    # Every request is checked against the limits its contract declares (protovalidate);
    # turning it off is for measuring what the check costs, never for production.
    request_validation: bool = True
    relay_batch_size: int = 500
    relay_poll_s: float = 2.0
    consumer_batch_size: int = 100
    consumer_max_deliver: int = 10
    request_timeout_s: float = 10.0
    # Where each service is reached by the others (host:port), e.g. the scheduler asking
    # every service for its part of a work order's trail. `prognos up` sets them.
    ingest_address: str | None = Field(default=None, description="host:port of ingest")
    registry_address: str | None = Field(default=None, description="host:port of the registry")
    inference_address: str | None = Field(
        default=None, description="host:port of inference (any replica)"
    )
    scheduler_address: str | None = Field(default=None, description="host:port of the scheduler")
    # Access control. A service refuses to start without TLS files and a token key unless
    # insecure_development is set (loopback only, with a WARNING); `prognos up` creates
    # development keys and certificates and sets these.
    auth_public_key_file: Path | None = Field(
        default=None, description="Ed25519 public key (PEM) that verifies callers' tokens"
    )
    auth_issuer: str = "prognos"
    tls_ca_file: Path | None = Field(
        default=None, description="CA certificate (PEM) that peers' certificates must chain to"
    )
    tls_cert_file: Path | None = Field(
        default=None, description="This process's certificate chain (PEM), server and client"
    )
    tls_key_file: Path | None = Field(default=None, description="Private key of tls_cert_file")
    insecure_development: bool = Field(
        default=False,
        description="Serve without TLS or token checks, on loopback only; never in production",
    )
    # Audit anchoring: chain heads go to the immutable AUDIT stream after audited writes and
    # at least every anchor_interval_s; signed checkpoints every checkpoint_interval_s.
    audit_signing_key_file: Path | None = Field(
        default=None, description="Ed25519 private key (PEM) that signs audit checkpoints"
    )
    anchor_interval_s: float = 5.0
    checkpoint_interval_s: float = 3600.0
    # Retention. Services never delete audit entries; these say how long operators must
    # keep them (and the local span files, which `prognos trace prune` trims) at least.
    audit_retention_days: int = 180
    trace_retention_days: int = 180
    # Scheduler planning: a change is planned this long after it (changes arriving meanwhile
    # are planned together, but none waits longer than schedule_max_delay_s); the plan is
    # redone every schedule_interval_s anyway; the solver stops after schedule_time_limit_s
    # with its best plan; a scheduled work order is released to the ERP once its slot
    # starts within schedule_release_horizon_h.
    schedule_debounce_s: float = 0.5
    schedule_max_delay_s: float = 5.0
    schedule_interval_s: float = 60.0
    schedule_time_limit_s: float = 10.0
    schedule_release_horizon_h: float = 168.0
    # Scheduler policy decisions: those that open nothing are audited as a digest of the
    # decisions table, at most every decision_audit_interval_s.
    decision_audit_interval_s: float = 60.0
    # Scheduler idempotency keys are remembered this long.
    idempotency_retention_h: float = 168.0
    # A WatchWorkOrders stream wakes on every commit; it also looks every watch_poll_s, for
    # changes another replica made when no notice of them reached this one.
    watch_poll_s: float = 1.0
    # Scheduler webhooks: each endpoint's shared secret is the file named after it in
    # webhook_secrets_dir (default data_dir/secrets/webhooks); a POST times out after
    # webhook_timeout_s; failed deliveries wait at most webhook_max_backoff_s between tries.
    webhook_secrets_dir: Path | None = Field(
        default=None, description="Directory of webhook shared secrets, one file per endpoint"
    )
    webhook_timeout_s: float = 10.0
    webhook_max_backoff_s: float = 300.0
    webhook_poll_s: float = 1.0
    # Telemetry intake (ingest): how late and how far ahead a reading may be, the largest
    # batch, how many batches one stream keeps in flight to JetStream, how long a stalled
    # JetStream is waited for before the stream fails with UNAVAILABLE, and how often open
    # streams write their audit rollup.
    telemetry_max_lateness_s: float = 3600.0
    telemetry_max_future_s: float = 300.0
    telemetry_max_rows: int = 50_000
    telemetry_window: int = 64
    telemetry_stall_timeout_s: float = 10.0
    telemetry_audit_interval_s: float = 60.0
    # File uploads (ingest): the longest line and the most lines of one uploaded file, the
    # most distinct assets it may hold, how many uploads one caller may run at once, and how
    # long an upload may wait for its next message before it is ended.
    upload_max_line_bytes: int = 64 << 10
    upload_max_lines: int = 20_000_000
    upload_max_assets: int = 10_000
    upload_max_concurrent: int = 4
    upload_idle_timeout_s: float = 30.0
    # Telemetry archive (ingest): Parquet files under archive_dir (default data_dir/archive),
    # written when this many rows are buffered or the oldest buffered batch is this old.
    archive_enabled: bool = True
    archive_dir: Path | None = None
    archive_flush_rows: int = 1_000_000
    archive_flush_interval_s: float = 60.0
    # Registry: model files and uploads live in a content-addressed store under artifact_dir
    # (default data_dir/artifacts); training runs in worker processes, at most
    # training_workers at a time, each stopped after training_timeout_s. Every asset type
    # with training data is retrained every retrain_period_s (0 turns the schedule off) when
    # newer data exists; a drift alert retrains at once, but at most once per
    # drift_retrain_min_interval_s per asset type. A type whose data holds fewer than
    # supervised_min_failures confirmed failures gets a health model (anomaly score) trained
    # on its normal operation; from that many on, the supervised model. A run's
    # hyper-parameters default to training_hyperparameters (names as `prognos train
    # --param` takes them; in the environment a JSON object), then to the trainer's own.
    artifact_dir: Path | None = Field(
        default=None, description="Root of the registry's content-addressed artifact store"
    )
    training_workers: int = 1
    training_timeout_s: float = 3600.0
    retrain_period_s: float = 86400.0
    drift_retrain_min_interval_s: float = 3600.0
    supervised_min_failures: int = 5
    training_hyperparameters: dict[str, str] = Field(default_factory=dict)
    # Inference live scoring: each asset keeps its newest inference_history_rows readings
    # (at least the model's window); assets whose window changed are scored together in a
    # micro-batch that closes at inference_batch_size assets or inference_batch_deadline_s
    # after its first asset; models run on inference_threads worker threads. A champion
    # prediction at or above inference_alert_threshold is explained (top sensors, by
    # occlusion) when it is also at or above inference_attribution_threshold (default: the
    # alert threshold; 0 explains every prediction), and an upward crossing is audited. A
    # health model's prediction is explained from anomaly score
    # inference_anomaly_attribution_threshold on.
    inference_replica_id: str | None = Field(
        default=None, description="Id of this inference replica (default <hostname>-<pid>)"
    )
    inference_history_rows: int = 64
    inference_batch_size: int = 256
    inference_batch_deadline_s: float = 0.005
    inference_threads: int = 2
    inference_alert_threshold: float = 0.5
    inference_attribution_threshold: float | None = None
    inference_anomaly_attribution_threshold: float = 0.99
    # Inference replicas: each announces itself in a KV bucket every heartbeat; one unheard
    # of for inference_member_ttl_s is gone, and its assets move to the others, which
    # rebuild their windows from the telemetry stream of the last
    # inference_rebuild_lookback_s.
    inference_heartbeat_s: float = 1.0
    inference_member_ttl_s: float = 5.0
    inference_rebuild_lookback_s: float = 900.0
    # Inference drift: every inference_drift_interval_s, the newest
    # inference_drift_sample_rows live rows of each asset type (at least
    # inference_drift_min_samples) are compared per feature with the champion's training
    # reference; a feature drifts when its PSI reaches inference_drift_psi_threshold and
    # its KS p-value is below inference_drift_ks_alpha.
    inference_drift_interval_s: float = 300.0
    inference_drift_sample_rows: int = 5_000
    inference_drift_min_samples: int = 500
    inference_drift_psi_threshold: float = 0.2
    inference_drift_ks_alpha: float = 0.01
    # Fault injection for crash tests: "<point>:<n>" makes the relay SIGKILL itself at the
    # n-th pass through <point> ("after_commit" or "after_publish"). Never set in production.
    relay_crash_at: str | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        service = init_settings.init_kwargs.get("service", "prognos")  # type: ignore[attr-defined]
        return (init_settings, _LayeredSource(settings_cls, service))

    @field_validator("training_hyperparameters", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        # The environment holds text; a TOML file or a caller, a table.
        return json.loads(value) if isinstance(value, str) else value

    @classmethod
    def load(cls, service: str, **overrides: Any) -> Self:
        """Build the settings of ``service`` from the environment, the file and ``overrides``."""
        return cls(service=service, **overrides)

    @property
    def effective_database_url(self) -> str:
        """The SQLAlchemy URL of this service's database (async driver)."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / f'{self.service}.db').resolve()}"

    @property
    def effective_db_schema(self) -> str | None:
        """The PostgreSQL schema of this service; ``None`` on SQLite."""
        if not self.effective_database_url.startswith("postgresql"):
            return None
        return self.db_schema or self.service

    @property
    def effective_webhook_secrets_dir(self) -> Path:
        """Where the scheduler finds each webhook endpoint's shared secret file."""
        return self.webhook_secrets_dir or self.data_dir / "secrets" / "webhooks"

    @property
    def effective_archive_dir(self) -> Path:
        """Where the telemetry archive's Parquet files live."""
        return self.archive_dir or self.data_dir / "archive"

    def address_of(self, service: str) -> str | None:
        """Where ``service`` is reached (``<service>_address``); ``None`` when not configured."""
        if service not in SERVICES:
            raise ValueError(f"no such service: {service!r}")
        address: str | None = getattr(self, f"{service}_address")
        return address or None

    @property
    def tls_enabled(self) -> bool:
        """Whether this process serves and calls over mutual TLS."""
        return bool(self.tls_cert_file and self.tls_key_file and self.tls_ca_file)

    @property
    def missing_security(self) -> list[str]:
        """The security settings a serving process lacks, as their environment variables."""
        wanted = {
            "PROGNOS_TLS_CERT_FILE": self.tls_cert_file,
            "PROGNOS_TLS_KEY_FILE": self.tls_key_file,
            "PROGNOS_TLS_CA_FILE": self.tls_ca_file,
            "PROGNOS_AUTH_PUBLIC_KEY_FILE": self.auth_public_key_file,
        }
        return [name for name, value in wanted.items() if not value]

    @property
    def listens_on_loopback(self) -> bool:
        """Whether ``grpc_host`` is a loopback address (127.0.0.0/8, ``::1``, ``localhost``)."""
        host = self.grpc_host.strip("[]")
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def secrets_dir(self) -> Path:
        """Where `prognos up` keeps the development CA, certificates and keys."""
        return self.data_dir / "secrets"

    @property
    def effective_artifact_dir(self) -> Path:
        """Where the registry's content-addressed artifact store lives."""
        return self.artifact_dir or self.data_dir / "artifacts"

    @property
    def spans_dir(self) -> Path:
        """Where spans are written when no OTLP endpoint is configured."""
        return self.data_dir / "spans"


def environment_snapshot(prefix: str = "PROGNOS_") -> dict[str, str]:
    """The ``PROGNOS_*`` variables, for a launcher that passes them on to child processes."""
    return {k: v for k, v in os.environ.items() if k.startswith(prefix)}
