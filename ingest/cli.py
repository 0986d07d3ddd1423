"""``carecall`` console command: serve, migrate, and the feature tools."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from ingest.settings import Settings, get_settings

log = logging.getLogger("carecall")


def _setup_logging(level: str, *, tag: str = "") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s",
    )


async def _serve(settings: Settings, *, role: str = "server", socket: str | None = None) -> int:
    import uvicorn  # noqa: PLC0415 - keeps `carecall news2` and friends light

    from ingest.features import FEATURES, WORKER_FEATURES  # noqa: PLC0415
    from ingest.http import create_app  # noqa: PLC0415
    from ingest.service import run_ingest  # noqa: PLC0415
    from ingest.worker import PARENT_ENV, run_server, watch_parent  # noqa: PLC0415

    watchers: list[asyncio.Task[None]] = []
    if role == "worker":
        # The front's child: its own features, HTTP for /metrics and /readyz only.
        runs = [f.run for f in FEATURES if f.run is not None and f.name in WORKER_FEATURES]
        if settings.worker_nice:
            os.nice(settings.worker_nice)
        server_cm = run_ingest(settings, features=runs, role="worker")
        shown = []
        parent = os.environ.get(PARENT_ENV)
        if parent:
            watchers.append(asyncio.create_task(watch_parent(int(parent))))
    else:
        runs = [f.run for f in FEATURES if f.run is not None]
        server_cm = run_server(settings, features=runs)
        shown = FEATURES
    async with server_cm as rt:
        app = create_app(rt, shown)
        # The worker answers its server only, on the Unix socket the server chose for it.
        where: dict[str, Any] = (
            {"uds": socket} if socket else {"host": settings.http_host, "port": settings.http_port}
        )
        config = uvicorn.Config(
            app,
            **where,
            log_config=None,
            lifespan="off",
            access_log=role != "worker",  # the worker's HTTP is polled by the front each second
        )
        server = uvicorn.Server(config)
        http = asyncio.create_task(server.serve(), name="ingest.http.serve")
        failed = asyncio.create_task(rt.failed.wait(), name="ingest.service.failed")
        log.info(
            "CareCall %s is up: %s (metrics /metrics, readiness /readyz); broker %s:%d",
            "ingest worker" if role == "worker" else "server",
            socket or f"http://{settings.http_host}:{settings.http_port}",
            rt.mqtt_host,
            rt.mqtt_port,
        )
        await asyncio.wait({http, failed, *watchers}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await http
        failed.cancel()
        orphaned = any(w.done() for w in watchers)
        for w in watchers:
            w.cancel()
    if socket:
        # The server removes the socket's directory; if it is gone (killed), nobody else will.
        with contextlib.suppress(OSError):
            os.unlink(socket)
            if orphaned:
                os.rmdir(os.path.dirname(socket))
    return 1 if rt.failed.is_set() else 0


async def _migrate(settings: Settings) -> int:
    from ingest.migrate import migrate  # noqa: PLC0415
    from ingest.service import resolve_database  # noqa: PLC0415
    from ingest.storage import layout_for  # noqa: PLC0415

    async with contextlib.AsyncExitStack() as stack:
        conninfo, _ = await resolve_database(settings, stack)
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            mode, applied = await migrate(conn, prefer=settings.storage)
            await layout_for(
                mode,
                retention_days=settings.retention_days,
                ahead_days=settings.partitions_ahead_days,
                compress_after_days=settings.compress_after_days,
            ).maintain(conn)
    print(f"storage: {mode}; applied {len(applied)} migration(s)")
    for name in applied:
        print(f"  {name}")
    return 0


def _delegate(module: str, func: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        import importlib  # noqa: PLC0415

        fn = getattr(importlib.import_module(module), func)
        result: int = fn(argv)
        return result

    return run


def _broker_config(argv: list[str]) -> int:
    from devices.broker_acl import broker_config_main  # noqa: PLC0415

    s = get_settings()
    return broker_config_main(
        argv,
        database_url=s.database_url or s.default_database_url,
        topic_root=s.topic_root,
        bridge_username=s.mqtt_username,
        bridge_password=s.mqtt_password.get_secret_value() if s.mqtt_password else None,
    )


# Tools owned by other features; they parse their own arguments.
TOOLS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "fall-eval": (
        "score the fall detector on a recording file (.npz)",
        _delegate("alerts.rules.fall_eval", "fall_eval_main"),
    ),
    "news2": (
        "compute NEWS2 for rows of a CSV file",
        _delegate("alerts.rules.cli", "news2_main"),
    ),
    "import-residents": (
        "import residents (and their contacts) from a CSV file",
        _delegate("devices.importer", "import_residents_main"),
    ),
    "import-devices": (
        "import devices from a CSV file",
        _delegate("devices.importer", "import_devices_main"),
    ),
    "simulate": (
        "play a simulated town over MQTT (--report: score the incidents raised)",
        _delegate("simulator.cli", "simulate_main"),
    ),
    "demo": (
        "the server, a demo town in the registry and the simulator playing it (development)",
        _delegate("ingest.demo", "demo_main"),
    ),
    "create-staff": (
        "create (or reset) a staff user, e.g. the first admin",
        _delegate("devices.bootstrap", "create_staff_main"),
    ),
    "broker-config": (
        "write Mosquitto's password and ACL files from the registry (--reload: SIGHUP it)",
        _broker_config,
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in and args_in[0] in TOOLS:
        return TOOLS[args_in[0]][1](args_in[1:])
    parser = argparse.ArgumentParser(prog="carecall", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server (ingest bridge + HTTP)")
    serve.add_argument(
        "--role",
        choices=("server", "worker"),
        default="server",
        help="worker: the ingest worker a server starts itself (settings as JSON on stdin)",
    )
    serve.add_argument("--socket", help=argparse.SUPPRESS)  # the worker's HTTP, set by its server
    sub.add_parser("migrate", help="apply database migrations and storage policies")
    for name, (help_text, _) in TOOLS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    args, rest = parser.parse_known_args(args_in)
    if args.command in TOOLS:
        return TOOLS[args.command][1](rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    worker = args.command == "serve" and args.role == "worker"
    _setup_logging(args.log_level, tag="[worker] " if worker else "")
    try:
        # The worker's settings come from its server on stdin (secrets never touch disk).
        settings = Settings(**json.loads(sys.stdin.read())) if worker else get_settings()
    except ValueError as exc:
        print(f"carecall: invalid settings: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        try:
            return asyncio.run(_serve(settings, role=args.role, socket=args.socket))
        except KeyboardInterrupt:
            return 0
    return asyncio.run(_migrate(settings))


if __name__ == "__main__":
    sys.exit(main())
