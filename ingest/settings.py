"""One frozen settings object, read from ``CARECALL_*`` environment variables (and ``.env``)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "change-me-dev-only"  # noqa: S105 - the placeholder that is refused in production


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

    # Pipeline bounds.
    batch_max_rows: int = Field(default=2000, ge=1)
    batch_max_delay_ms: float = Field(default=5.0, ge=0)
    max_pending_messages: int = Field(default=20_000, ge=10)
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
