"""``carecall demo``: the server, a small town in the registry, and the simulator playing it.

One command for a fresh machine (``make demo``): the server starts with embedded defaults when
no database or broker is configured or reachable, a demo city with two districts is put into
the registry through the REST API (like an installer would), staff users with known demo
passwords are created, and two simulated districts of residents with wearables and home
sensors talk to the server over MQTT. Ctrl-C stops the simulator, then the server, cleanly.
Refused outside ``CARECALL_ENVIRONMENT=development`` (the demo passwords are public).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import sys
import threading
from pathlib import Path
from typing import Any

from ingest.settings import Settings, get_settings

log = logging.getLogger("carecall.demo")

CITY = "demo"
DISTRICTS = (("demo_a", "East"), ("demo_b", "West"))  # the simulator adds " district"
# (username, password, role, scope, full name); public by design: development only.
STAFF = (
    ("admin", "carecall-admin", "admin", CITY, "Demo administrator"),
    ("supervisor", "carecall-supervisor", "supervisor", CITY, "City supervisor"),
    ("operator", "carecall-operator", "operator", CITY, "Platform operator"),
    ("dispatcher-east", "carecall-east", "dispatcher", f"{CITY}.demo_a_dist", "Dispatcher East"),
    ("dispatcher-west", "carecall-west", "dispatcher", f"{CITY}.demo_b_dist", "Dispatcher West"),
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="carecall demo", description=__doc__)
    p.add_argument("--residents", type=int, default=100, help="per district (two districts)")
    p.add_argument("--speed", type=float, default=120.0, help="simulated seconds per second")
    p.add_argument("--days", type=float, default=30.0, help="simulated days before it stops")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--data-dir", type=Path, default=None, help="fall recordings (.npz)")
    return p


async def _bootstrap_staff(pool: Any) -> None:
    from devices.bootstrap import create_staff  # noqa: PLC0415

    async with pool.connection() as conn:
        for username, password, role, scope, name in STAFF:
            await create_staff(
                conn,
                username=username,
                password=password,
                role=role,
                scope_path=scope,
                full_name=name,
                on_duty=role in ("dispatcher", "supervisor"),
            )


def _provision(api_url: str, towns: list[Any]) -> None:
    from simulator.provision import provision_rest  # noqa: PLC0415

    for town in towns:
        result = provision_rest(town, api_url, "admin", "carecall-admin", with_credentials=False)
        if result.problems:
            log.warning(
                "demo provisioning: %d problems (first: %s)",
                len(result.problems),
                result.problems[0],
            )


async def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn  # noqa: PLC0415

    from ingest.features import FEATURES  # noqa: PLC0415
    from ingest.http import create_app  # noqa: PLC0415
    from ingest.worker import run_server  # noqa: PLC0415
    from simulator.publisher import BrokerAddress  # noqa: PLC0415
    from simulator.recordings import DEFAULT_DATA_DIR  # noqa: PLC0415
    from simulator.simulation import Simulation  # noqa: PLC0415

    runs = [f.run for f in FEATURES if f.run is not None]
    # As `carecall serve` runs: front + ingest worker, or one process on the embedded broker.
    async with run_server(settings, features=runs) as rt:
        app = create_app(rt, FEATURES)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=settings.http_host,
                port=settings.http_port,
                log_config=None,
                lifespan="off",
            )
        )
        http = asyncio.create_task(server.serve(), name="ingest.http.serve")
        while not server.started and not http.done():  # noqa: ASYNC110 - uvicorn has only a flag
            await asyncio.sleep(0.05)
        if http.done():
            return 1
        await _bootstrap_staff(rt.pool)
        api_url = f"http://{settings.http_host}:{settings.http_port}"
        sims = [
            Simulation(
                residents=args.residents,
                days=args.days,
                speed=args.speed,
                seed=args.seed + i,
                broker=BrokerAddress(rt.mqtt_host, rt.mqtt_port),
                topic_root=settings.topic_root,
                prefix=district,
                anchor="wall",
                data_dir=args.data_dir or DEFAULT_DATA_DIR,
            )
            for i, (district, _) in enumerate(DISTRICTS)
        ]
        # One city, two districts: each simulated town is a district of the demo city.
        towns = [
            dataclasses.replace(sim.town, city_id=CITY, name=name)
            for sim, (_, name) in zip(sims, DISTRICTS, strict=True)
        ]
        await asyncio.to_thread(_provision, api_url, towns)
        await asyncio.sleep(1.5)  # the bridge reloads its device list on the registry's NOTIFY
        threads = [
            threading.Thread(target=sim.run, name=f"simulator.{d}", daemon=True)
            for sim, (d, _) in zip(sims, DISTRICTS, strict=True)
        ]
        for t in threads:
            t.start()
        logins = "\n".join(f"    {u:16} {p:22} {r} of {s}" for u, p, r, s, _ in STAFF)
        print(
            f"\nCareCall demo is running ({2 * args.residents} residents, "
            f"{sum(len(s.town.devices) for s in sims)} devices, speed x{args.speed:g}).\n"
            f"  Dispatcher console:   {api_url}/console\n"
            f"  Operator dashboard:   {api_url}/ops\n"
            f"  API documentation:    {api_url}/docs\n"
            f"  Metrics:              {api_url}/metrics\n"
            f"  Logins (username / password / role):\n{logins}\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait(
                {http, asyncio.create_task(rt.failed.wait())},
                return_when=asyncio.FIRST_COMPLETED,
            )
        for sim in sims:
            sim.stop()
        for t in threads:
            await asyncio.to_thread(t.join, 10)
        server.should_exit = True
        await http
    return 1 if rt.failed.is_set() else 0


def demo_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = get_settings()
    if settings.environment != "development":
        print(
            "carecall demo: refused outside CARECALL_ENVIRONMENT=development "
            "(its passwords are public)",
            file=sys.stderr,
        )
        return 2
    try:
        return asyncio.run(run_demo(settings, args))
    except KeyboardInterrupt:
        return 0
