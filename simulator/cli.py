"""``carecall simulate``: play a town over MQTT, or (``--report``) score what CareCall raised."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from simulator.groundtruth import read_ground_truth
from simulator.provision import provision_rest, register_sql
from simulator.publisher import BrokerAddress
from simulator.recordings import DEFAULT_DATA_DIR
from simulator.report import fetch_incidents, score
from simulator.scenarios import ScenarioRates
from simulator.simulation import Progress, Simulation

log = logging.getLogger("carecall.simulate")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="carecall simulate", description=__doc__)
    p.add_argument("--residents", type=int, default=10)
    p.add_argument("--days", type=float, default=1.0, help="simulated days (max 89)")
    p.add_argument("--speed", type=float, default=1440.0, help="1440: a day in a minute")
    p.add_argument("--broker", default="127.0.0.1:1883", help="host:port")
    p.add_argument("--topic-root", default="carecall/v1")
    p.add_argument("--prefix", default="sim", help="device ids start with it (lowercase)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ground-truth", type=Path, help="JSONL ground-truth log to write (or read)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="*.npz recordings")
    p.add_argument("--anchor", choices=("past", "wall"), default="past")
    p.add_argument("--busy", action="store_true", help="many events per day (short demos)")
    p.add_argument(
        "--no-accel-stream",
        action="store_true",
        help="wearables send accelerometer windows for injected falls and ADLs only",
    )
    p.add_argument("--provision", metavar="URL", help="registry API base URL (admin login)")
    p.add_argument("--register-sql", metavar="DATABASE_URL", help="insert device ids directly")
    p.add_argument(
        "--credentials",
        type=Path,
        help="JSON file of device MQTT passwords: written by --provision, read otherwise",
    )
    p.add_argument(
        "--registry-settle-s",
        type=float,
        default=3.0,
        help="wait after registering devices, until the server knows them",
    )
    p.add_argument(
        "--provision-only",
        action="store_true",
        help="provision and exit (then regenerate the broker files, and run with --credentials)",
    )
    p.add_argument("--username", default=os.environ.get("CARECALL_SIM_USERNAME"))
    p.add_argument("--password", default=os.environ.get("CARECALL_SIM_PASSWORD"))
    p.add_argument("--report", action="store_true", help="score --ground-truth against --api")
    p.add_argument("--api", metavar="URL", help="CareCall API base URL for --report")
    p.add_argument("--json", action="store_true", help="--report: print JSON")
    p.add_argument(
        "--resident-days",
        type=float,
        help="--report: residents x days simulated (default: estimated from the log)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def _progress_line(p: Progress) -> None:
    width = 30
    done = int(width * min(1.0, max(0.0, p.sim_fraction)))
    sys.stderr.write(
        f"\r[{'#' * done}{'.' * (width - done)}] {p.sim_fraction:6.1%}"
        f" | {p.wall_elapsed_s:7.1f} s | {p.published} msgs | {p.ground_truth} events"
        f" | SOS waiting {p.sos_waiting}   "
    )
    sys.stderr.flush()


def _report(args: argparse.Namespace) -> int:
    if args.ground_truth is None or args.api is None or not args.username:
        print("--report needs --ground-truth, --api, --username, --password", file=sys.stderr)
        return 2
    gt = read_ground_truth(args.ground_truth)
    incidents = fetch_incidents(
        args.api, args.username, args.password or "", device_prefix=f"{args.prefix}-"
    )
    report = score(gt, incidents, resident_days=args.resident_days)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.text())
    return 0


def simulate_main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    if args.report:
        return _report(args)
    if not 0 < args.days < 90:
        print("--days must be in (0, 90): older device times are refused", file=sys.stderr)
        return 2
    sim = Simulation(
        residents=args.residents,
        days=args.days,
        speed=args.speed,
        broker=BrokerAddress.parse(args.broker),
        seed=args.seed,
        topic_root=args.topic_root,
        prefix=args.prefix,
        ground_truth=args.ground_truth,
        data_dir=args.data_dir,
        rates=ScenarioRates.busy() if args.busy else ScenarioRates(),
        anchor=args.anchor,
        accel_stream=not args.no_accel_stream,
        progress=None if args.quiet else _progress_line,
    )
    if args.provision:
        if not (args.username and args.password):
            print("--provision needs --username and --password (an admin)", file=sys.stderr)
            return 2
        prov = provision_rest(sim.town, args.provision, args.username, args.password)
        sim.credentials = prov.credentials or None
        if args.credentials is not None:
            # Passwords are shown once by the registry: keep them, readable by us only.
            args.credentials.touch(mode=0o600)
            args.credentials.write_text(json.dumps(prov.credentials, indent=1))
        log.info(
            "provisioned %d residents, %d device credentials (%d problems); regenerate the"
            " broker files (carecall broker-config --reload) before devices can log in",
            len(prov.resident_ids), len(prov.credentials), len(prov.problems),
        )  # fmt: skip
    elif args.credentials is not None and args.credentials.exists():
        sim.credentials = json.loads(args.credentials.read_text())
    if args.provision_only:
        return 0
    if args.register_sql:
        register_sql(args.register_sql, sim.device_ids())
    if args.provision or args.register_sql:
        # The bridge reloads its device directory on a database notification (after a short
        # settle); a device talking before that is refused as unknown_device.
        time.sleep(args.registry_settle_s)
    signal.signal(signal.SIGINT, lambda *_: sim.stop())
    summary = sim.run()
    if not args.quiet:
        sys.stderr.write("\n")
    print(summary.line())
    return 0 if summary.sos_unanswered == 0 else 1
