"""Alert latency benchmark: SOS publish -> dispatcher console (WebSocket) receive, under load.

One server as ``carecall serve`` runs it: its front in this process (HTTP on a real port,
consoles, urgent lane, incidents) and its ingest worker as a child process (bridge, storage,
rules); ``--one-process`` runs everything in this process instead. A private Mosquitto
(shipped limits) and a scratch database. Background publisher processes send
vitals from ``--devices`` watches at ``--rate`` messages/s in total (paced in 10 ms slices;
the rate actually reached is reported). A separate "device + console" process connects a
dispatcher's WebSocket, presses SOS ``--sos`` times (QoS 1, one every ``--sos-interval-s``)
and times each press from just before the publish to the console receiving its ``live_alarm``,
then to the ``incident_event`` "opened" (stored, routed). Timestamps of a press are taken in
one process, so the two clocks never mix. Prints a short table and one JSON line.

    python bench/alerts.py [--rate 20000] [--seconds 25] [--sos 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest.mqtt import PUBACK, encode_connect, encode_publish, split_packets
from tests.fixtures.services import Mosquitto, free_port, register_devices, scratch_database

ROOT = "bench/carecall/v1"


def background(
    port: int, worker: int, n_devices: int, rate: float, seconds: float, start: Any, out: Any
) -> None:
    """Raw MQTT 5 QoS 1 vitals at ``rate``/s, paced; reports how many the broker acked."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        encode_connect(
            client_id=f"bg-{worker}-{os.getpid()}",
            keepalive_s=60,
            clean_start=True,
            session_expiry_s=0,
            receive_maximum=100,
        )
    )
    sock.recv(64)
    sock.setblocking(False)
    start.wait()
    t0 = time.monotonic()
    sent = acked = 0
    buf = bytearray()
    slice_s = 0.01
    while (elapsed := time.monotonic() - t0) < seconds:
        due = int(rate * elapsed)
        now = time.time()
        frames = []
        while sent < due and sent - acked < 5000:
            dev = (sent * 7919 + worker) % n_devices
            seq = worker * 100_000_000 + sent
            body = b'{"ts":%.3f,"seq":%d,"hr_bpm":%d,"spo2_pct":%d,"temp_c":36.6}' % (
                now,
                seq,
                60 + seq % 30,
                95 + seq % 4,
            )
            frames.append(
                encode_publish(f"{ROOT}/bg-{dev}/vitals", body, qos=1, packet_id=sent % 65535 + 1)
            )
            sent += 1
        if frames:
            with contextlib.suppress(BlockingIOError):
                sock.setblocking(True)
                sock.sendall(b"".join(frames))
                sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while data := sock.recv(1 << 16):
                buf += data
        packets, used = split_packets(buf)
        del buf[:used]
        acked += sum(1 for first, _ in packets if first & 0xF0 == PUBACK)
        time.sleep(slice_s)
    out.put({"worker": worker, "sent": sent, "acked": acked, "seconds": time.monotonic() - t0})
    sock.close()


def console(
    port: int,
    http_port: int,
    token: str,
    device: str,
    n_sos: int,
    interval_s: float,
    start: Any,
    out: Any,
) -> None:
    """The resident's pendant and the dispatcher's console, in one process (one clock)."""
    import paho.mqtt.client as paho  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415
    from websockets.sync.client import connect  # noqa: PLC0415

    ws = connect(f"ws://127.0.0.1:{http_port}/api/v1/ws?token={token}")
    ws.recv()  # hello
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"pendant-{os.getpid()}", protocol=paho.MQTTv5
    )
    client.connect("127.0.0.1", port)
    client.loop_start()
    sent: dict[str, float] = {}
    live: dict[str, float] = {}
    opened: list[float] = []
    start.wait()
    time.sleep(2.0)  # let the background load settle in
    deadline = time.monotonic() + n_sos * interval_s + 15
    next_press = time.monotonic()
    i = 0
    while time.monotonic() < deadline and (i < n_sos or len(live) < n_sos):
        if i < n_sos and time.monotonic() >= next_press:
            ts = time.time()
            key = f"sos:{device}:{round(ts * 1e6) // 1000}"
            sent[key] = time.perf_counter()
            client.publish(f"{ROOT}/{device}/sos", json.dumps({"ts": ts, "seq": i + 1}), qos=1)
            i += 1
            next_press += interval_s
        with contextlib.suppress(TimeoutError):
            msg = json.loads(ws.recv(timeout=0.005))
            now = time.perf_counter()
            if msg.get("kind") == "live_alarm" and msg["key"] in sent:
                live[msg["key"]] = now - sent[msg["key"]]
            elif msg.get("kind") == "incident_event" and msg.get("action") in ("opened", "joined"):
                opened.append(now)
    client.loop_stop()
    ws.close()
    out.put({"sent": len(sent), "live_s": list(live.values())})


async def serve(
    args: argparse.Namespace, db_url: str, broker_port: int, tmp: Path
) -> dict[str, Any]:
    import psycopg  # noqa: PLC0415
    import uvicorn  # noqa: PLC0415

    from ingest.features import ALERTS  # noqa: PLC0415
    from ingest.http import create_app  # noqa: PLC0415
    from ingest.settings import Settings  # noqa: PLC0415
    from ingest.worker import run_server  # noqa: PLC0415
    from tests.alerts.world import SECRET, build_world  # noqa: PLC0415

    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        world = await build_world(conn, "bench", on_duty=("disp_ca",))
    settings = Settings(
        environment="test",
        database_url=db_url,
        mqtt_host="127.0.0.1",
        mqtt_port=broker_port,
        topic_root=ROOT,
        mqtt_client_id="bench-ingest",
        spool_dir=tmp / "spool",
        secret_key=SECRET,
        ingest_worker=not args.one_process,
    )  # type: ignore[arg-type]
    assert ALERTS.run is not None
    async with run_server(settings, features=[ALERTS.run]) as rt:
        app = create_app(rt, [ALERTS])
        http_port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=http_port, log_level="warning", lifespan="off"
            )
        )
        task = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn has no "listening" event
            await asyncio.sleep(0.05)
        if rt.worker is None:
            await rt.source.client.wait_connected(10)
        else:
            assert rt.worker.ready, "the ingest worker did not come up"
        ctx = mp.get_context("fork")
        start, out = ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(
                target=background,
                args=(
                    broker_port,
                    w,
                    args.devices,
                    args.rate / args.publishers,
                    args.seconds,
                    start,
                    out,
                ),
            )
            for w in range(args.publishers)
        ]
        procs.append(
            ctx.Process(
                target=console,
                args=(
                    broker_port,
                    http_port,
                    world.token("disp_ca"),
                    world.devices["r1"],
                    args.sos,
                    args.sos_interval_s,
                    start,
                    out,
                ),
            )
        )
        for p in procs:
            p.start()
        await asyncio.sleep(1.0)
        stored0 = _stored(rt)
        start.set()
        t0 = time.monotonic()
        results = []
        while len(results) < len(procs):
            try:
                results.append(await asyncio.to_thread(out.get, True, 1.0))
            except Exception:
                continue
        # With a worker its figures reach this process once a second: both readings are that
        # stale, so the span between them is still the run's.
        stored_rate = (_stored(rt) - stored0) / (time.monotonic() - t0)
        for p in procs:
            p.join()
        dropped = _sample_sum(rt, "carecall_alert_rule_input_dropped_total")
        server.should_exit = True
        await task
    bg = [r for r in results if "worker" in r]
    con = next(r for r in results if "live_s" in r)
    acked = sum(r["acked"] for r in bg)
    seconds = max(r["seconds"] for r in bg)
    lat_ms = np.array(con["live_s"]) * 1000
    return {
        "bench": "alerts",
        "target_rate_msg_s": args.rate,
        "background_acked_rate_msg_s": round(acked / seconds),
        "stored_rate_msg_s": round(stored_rate),
        "sos_sent": con["sent"],
        "sos_received": len(lat_ms),
        "sos_to_console_p50_ms": round(float(np.percentile(lat_ms, 50)), 2)
        if len(lat_ms)
        else None,
        "sos_to_console_p99_ms": round(float(np.percentile(lat_ms, 99)), 2)
        if len(lat_ms)
        else None,
        "sos_to_console_max_ms": round(float(lat_ms.max()), 2) if len(lat_ms) else None,
        "rule_inputs_dropped": int(dropped),
        "processes": 1 if args.one_process else 2,
        "cpus": os.cpu_count(),
    }


def _pct(values_ms: Any, q: float) -> float | None:
    return round(float(np.percentile(values_ms, q)), 2) if len(values_ms) else None


def _sample_sum(rt: Any, name: str) -> float:
    """A counter summed over its labels, from the server's registry (the worker's figures
    merged in when there is one)."""
    return sum(
        s.value
        for family in rt.metrics.registry.collect()
        for s in family.samples
        if s.name == name
    )


def _stored(rt: Any) -> float:
    return _sample_sum(rt, "carecall_ingest_messages_stored_total")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=20_000, help="background vitals msg/s in total")
    ap.add_argument("--seconds", type=float, default=25.0)
    ap.add_argument("--publishers", type=int, default=2)
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--sos", type=int, default=100)
    ap.add_argument("--sos-interval-s", type=float, default=0.2)
    ap.add_argument(
        "--one-process",
        action="store_true",
        help="bridge, rules and consoles in one process (CARECALL_INGEST_WORKER=false)",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, scratch_database("carecall_bench") as db_url:
        broker = Mosquitto(Path(tmp) / "mosquitto")
        broker.start()
        try:
            import psycopg  # noqa: PLC0415

            from ingest.migrate import migrate  # noqa: PLC0415

            async def _migrate() -> None:
                async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
                    await migrate(c)

            asyncio.run(_migrate())
            register_devices(db_url, [f"bg-{i}" for i in range(args.devices)])
            summary = asyncio.run(serve(args, db_url, broker.port, Path(tmp)))
        finally:
            broker.stop()
    s = summary
    print(
        f"background: target {args.rate:.0f} msg/s, broker acked"
        f" {s['background_acked_rate_msg_s']} msg/s, stored {s['stored_rate_msg_s']} msg/s"
    )
    print(
        f"SOS -> console: {s['sos_received']}/{s['sos_sent']} received,"
        f" p50 {s['sos_to_console_p50_ms']} ms, p99 {s['sos_to_console_p99_ms']} ms"
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
