"""Node-RED as a measured peer: the same QoS 1 vitals into the same `vitals` table.

Node-RED (from npm, installed into bench/nodered/node_modules on first use) subscribes with its
MQTT-in node (QoS 1, parsed JSON; MQTT.js acknowledges on receipt, so this peer is NOT
durable), and a function node batches rows (1000 rows or 5 ms) into one
``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING`` per batch through node-postgres.
Used by bench/ingest.py (phase d); runnable alone:

    python bench/nodered_peer.py --messages 100000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HERE = Path(__file__).resolve().parent / "nodered"


def available() -> bool:
    return shutil.which("node") is not None and shutil.which("npm") is not None


def ensure_installed() -> None:
    if (HERE / "node_modules" / "node-red" / "red.js").exists():
        return
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=HERE,
        check=True,
        timeout=600,
    )


def flows(broker_port: int, root: str) -> list[dict[str, Any]]:
    return [
        {"id": "tab1", "type": "tab", "label": "carecall-peer"},
        {
            "id": "broker1",
            "type": "mqtt-broker",
            "name": "mosquitto",
            "broker": "127.0.0.1",
            "port": str(broker_port),
            "clientid": "nodered-peer",
            "autoConnect": True,
            "usetls": False,
            "protocolVersion": "4",
            "keepalive": "60",
            "cleansession": True,
        },
        {
            "id": "in1",
            "type": "mqtt in",
            "z": "tab1",
            "name": "vitals",
            "topic": f"{root}/+/vitals",
            "qos": "1",
            "datatype": "json",
            "broker": "broker1",
            "nl": False,
            "rap": False,
            "inputs": 0,
            "x": 100,
            "y": 100,
            "wires": [["fn1"]],
        },
        {
            "id": "fn1",
            "type": "function",
            "z": "tab1",
            "name": "batch insert",
            "func": (HERE / "batch.js").read_text(),
            "outputs": 0,
            "x": 300,
            "y": 100,
            "wires": [],
        },
    ]


def run(
    broker_port: int, db_url: str, n: int, publishers: int, root: str = "bench-nr/carecall/v1"
) -> dict[str, Any]:
    """Start Node-RED, feed it ``n`` messages, return its rate. Raises if it cannot start."""
    from bench.ingest import run_publishers  # noqa: PLC0415

    ensure_installed()
    with tempfile.TemporaryDirectory() as tmp:
        flow_file = Path(tmp) / "flows.json"
        flow_file.write_text(json.dumps(flows(broker_port, root)))
        info = psycopg.conninfo.conninfo_to_dict(db_url)  # node-postgres wants a URI
        db_uri = (
            f"postgresql://{info.get('user', 'postgres')}@{info.get('host', '127.0.0.1')}:"
            f"{info.get('port', 5432)}/{info['dbname']}"
        )
        env = dict(
            os.environ,
            NR_FLOWS=str(flow_file),
            NR_USERDIR=tmp,
            PEER_DB_URL=db_uri,
            NR_PORT=str(_free_port()),
        )
        log = Path(tmp) / "nodered.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    "node",
                    str(HERE / "node_modules/node-red/red.js"),
                    "--settings",
                    str(HERE / "settings.js"),
                ],
                cwd=HERE,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 60
            while "Connected to broker" not in log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("Node-RED did not start:\n" + log.read_text()[-2000:])
                time.sleep(0.2)
            time.sleep(0.5)
            ps = run_publishers(broker_port, root, n, publishers)
            done_at = None
            deadline = time.monotonic() + max(60.0, n / 500)
            with psycopg.connect(db_url, autocommit=True) as conn:
                while time.monotonic() < deadline:
                    row = conn.execute(
                        "SELECT count(*), extract(epoch FROM min(received_at)) "
                        "FROM vitals WHERE device_id LIKE 'bench-%%'"
                    ).fetchone()
                    assert row is not None
                    if row[0] >= n:
                        done_at = time.time()
                        first = float(row[1])
                        break
                    time.sleep(0.05)
            for p in ps:
                p.join()
            if done_at is None:
                raise RuntimeError(
                    "Node-RED did not store every message in time:\n"
                    + log.read_text(errors="replace")[-3000:]
                )
            return {"msgs_per_s": n / (done_at - first), "durable_ack": False}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    from ingest.migrate import migrate  # noqa: PLC0415
    from tests.fixtures.services import Mosquitto, scratch_database  # noqa: PLC0415

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--publishers", type=int, default=2)
    args = ap.parse_args()
    if not available():
        print(json.dumps({"nodered": "node/npm not available"}))
        return 0
    import asyncio  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp, scratch_database("carecall_nr") as db_url:

        async def _migrate() -> None:
            async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
                await migrate(c)

        asyncio.run(_migrate())
        broker = Mosquitto(Path(tmp) / "mosquitto")
        broker.start()
        try:
            result = run(broker.port, db_url, args.messages, args.publishers)
        finally:
            broker.kill()
    print(json.dumps({"nodered_msgs_per_s": round(result["msgs_per_s"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
