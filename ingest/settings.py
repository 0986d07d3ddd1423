"""One frozen settings object, read from ``CARECALL_*`` environment variables (and ``.env``)."""

from __future__ import annotations

import functools
import zoneinfo
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The development placeholder: refused in production. 32+ bytes, as HS256 keys should be.
DEV_SECRET = "change-me-development-only-not-a-secret"  # noqa: S105


class Settings(BaseSettings):
    """Everything the server reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="CARECALL_", env_file=".env", frozen=True, extra="ignore"
    )

    environment: Literal["development", "test", "production"] = "development"

    # PostgreSQL. None: try the default local server, else start an embedded one.
    database_url: str | None = None
    default_database_url: str = "postgresql://postgres@127.0.0.1:5432/carecall"
    db_connect_timeout_s: float = 3.0
    db_write_timeout_s: float = 5.0
    db_pool_size: int = Field(default=8, ge=1)

    # MQTT. None: try 127.0.0.1:1883, else start an embedded broker (demo only: see README).
    mqtt_host: str | None = None
    mqtt_port: int = 1883
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_client_id: str = "carecall-ingest"
    mqtt_session_expiry_s: int = 7 * 24 * 3600
    mqtt_receive_maximum: int = Field(default=2000, ge=1, le=65535)
    topic_root: str = "carecall/v1"

    http_host: str = "127.0.0.1"
    http_port: int = 8080

    # The ingest worker (docs/ingest.md, "Two processes"): the bridge and the rule engine run
    # in a child process so that the HTTP side, the urgent lane and the dispatcher consoles
    # keep their own core when telemetry saturates the bridge. The worker serves /metrics and
    # /readyz on a private Unix socket of the server's; the server merges them into its own.
    # Not used with the embedded broker (the demo's fallback), which lives in the server.
    ingest_worker: bool = True
    # The worker's CPU niceness (added to the server's): under overload the scheduler then
    # favours the front (consoles, urgent lane) and the broker over bulk telemetry.
    worker_nice: int = Field(default=5, ge=0, le=19)

    # Pipeline bounds.
    batch_max_rows: int = Field(default=2000, ge=1)
    batch_max_delay_ms: float = Field(default=5.0, ge=0)
    max_pending_messages: int = Field(default=20_000, ge=10)
    # Refused messages kept as dead letters per device (or bad topic) per minute; the rest
    # are counted only, so a flooding device cannot fill the database.
    dead_letters_per_device_per_min: float = Field(default=120.0, gt=0)
    max_payload_bytes: int = 64 * 1024
    max_future_skew_s: float = 300.0
    spool_dir: Path = Path("var/spool")

    # Storage. auto: TimescaleDB when the extension can be created, else native partitions.
    storage: Literal["auto", "native", "timescale"] = "auto"
    retention_days: int = Field(default=90, ge=1)
    partitions_ahead_days: int = Field(default=7, ge=1)
    compress_after_days: int = Field(default=7, ge=1)

    # Alarm on broker drops: any drop in the last minute raises the alarm gauge.
    broker_drop_alarm_per_min: float = 0.0

    secret_key: SecretStr = SecretStr(DEV_SECRET)
    access_token_ttl_s: int = Field(default=15 * 60, ge=30)

    embedded_dir: Path = Path("var/embedded")

    # Alerts (docs/alerts.md). None for a URL: that channel is off.
    alerts_rules_path: Path | None = None  # None: alerts/rules/default_rules.yaml
    alerts_cancel_window_s: float = Field(default=60.0, ge=0)
    alerts_tick_interval_s: float = Field(default=5.0, gt=0)
    alerts_escalation_interval_s: float = Field(default=1.0, gt=0)
    alerts_queue_size: int = Field(default=50_000, ge=100)
    alerts_channel_timeout_s: float = Field(default=30.0, gt=0)
    # A second MQTT subscription for SOS and home alarms only, so a telemetry backlog never
    # delays showing them (docs/alerts.md, "Urgent lane").
    alerts_urgent_lane: bool = True
    alerts_webhook_url: str | None = None
    alerts_webhook_secret: SecretStr | None = None
    alerts_gateway_url: str | None = None
    alerts_gateway_api_key: SecretStr | None = None
    alerts_gateway_callback_secret: SecretStr | None = None
    alerts_public_url: str = "http://127.0.0.1:8080"  # where the gateway posts call results
    # KPIs roll up per local day of the hotline: an IANA zone name.
    alerts_timezone: str = "Asia/Shanghai"

    # Failed logins (devices/login.py): after login_free_failures failures within
    # login_failure_window_s, a username or source IP is locked out for login_lockout_base_s,
    # doubling with every further failure up to login_lockout_max_s.
    login_free_failures: int = Field(default=5, ge=1)
    login_failure_window_s: float = Field(default=15 * 60, gt=0)
    login_lockout_base_s: float = Field(default=2.0, gt=0)
    login_lockout_max_s: float = Field(default=15 * 60, gt=0)
    login_throttle_max_keys: int = Field(default=100_000, ge=100)  # rows kept, oldest go first

    # Sessions (devices/auth.py, docs/registry.md): a token may be refreshed until this long
    # after its sign-in (a 12-hour shift and the handover); each process re-reads the staff
    # table this often besides following its NOTIFY.
    session_max_s: int = Field(default=13 * 3600, ge=60)
    staff_refresh_s: float = Field(default=30.0, gt=0)
    # Identical list reads (a console refreshing its queue, a device or resident listing) by
    # one user within this span are audited once with a count; 0 audits every read.
    audit_coalesce_s: float = Field(default=600.0, ge=0)

    # Presence (devices/presence.py): a device is offline after presence_missed_heartbeats
    # heartbeat periods of silence, or at once on its offline will.
    presence_heartbeat_s: float = Field(default=60.0, gt=0)
    presence_missed_heartbeats: int = Field(default=3, ge=1)
    presence_check_interval_s: float = Field(default=5.0, gt=0)
    # Low battery below battery_low_pct; back to normal only at battery_low_pct + hysteresis,
    # so a reading wobbling around the threshold does not flap.
    battery_low_pct: float = Field(default=20.0, ge=0, le=100)
    battery_hysteresis_pct: float = Field(default=5.0, ge=0, le=50)

    @field_validator("alerts_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"unknown time zone {value!r} (an IANA name, e.g. Asia/Shanghai)"
            ) from exc
        return value

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if self.environment == "production" and self.secret_key.get_secret_value() == DEV_SECRET:
            raise ValueError(
                "CARECALL_SECRET_KEY is the development placeholder;"
                " set a real secret in production"
            )
        return self

    @property
    def max_age_s(self) -> float:
        """Oldest device time accepted: older rows would land in already-dropped partitions."""
        return self.retention_days * 86400.0


@functools.cache
def get_settings() -> Settings:
    return Settings()
