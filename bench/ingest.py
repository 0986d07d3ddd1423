"""Ingest benchmark: bare MQTT ceiling vs the full durable pipeline, in ONE run on this machine.

(a)  ceiling: gmqtt, QoS 1, acking on receipt, doing nothing (the fastest Python client here);
(a2) our MQTT client (ingest.mqtt) acking on receipt, doing nothing;
(b)  the full durable pipeline (decode, validate, COPY + commit, PUBACK after commit): vitals;
(c)  the same pipeline with accelerometer windows (one row per window).

Every phase runs in its own process (so its peak RSS is its own) against a private Mosquitto
started with the shipped limits (deploy/mosquitto/conf.d/limits.conf), fed by several
publisher processes that write raw MQTT frames (publishers must not be the bottleneck).
Prints a table and, last, one line of JSON.

    python bench/ingest.py [--messages 200000] [--publishers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import nodered_peer
from ingest.mqtt import (
    PUBACK,
    encode_connect,
    encode_publish,
    split_packets,
)
from tests.fixtures.services import (
    Mosquitto,
    register_devices,
    scratch_database,
)

N_DEVICES = 1000


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- publishers ---------------------------------------------------------------------------------
def vitals_payload(dev: int, seq: int, ts: float) -> bytes:
    return b'{"ts":%.3f,"seq":%d,"hr_bpm":%d,"spo2_pct":%d,"temp_c":36.6}' % (
        ts,
        seq,
        60 + seq % 40,
        94 + seq % 6,
    )


_ACCEL_CACHE: dict[int, str] = {}


def accel_payload(dev: int, seq: int, ts: float, samples: int) -> bytes:
    data = _ACCEL_CACHE.get(samples)
    if data is None:
        rng = np.random.default_rng(samples)
        counts = (rng.normal(0, 30, (samples, 3)) + np.array([0, -256, 0])).astype("<i2")
        data = _ACCEL_CACHE[samples] = base64.b64encode(counts.tobytes()).decode()
    return (
        b'{"ts":%.3f,"seq":%d,"rate_hz":%d,"enc":"i16le","g_per_count":0.00390625,'
        b'"data":"%s"}' % (ts, seq, samples, data.encode())
    )


def publisher(
    port: int,
    root: str,
    worker: int,
    n: int,
    kind: str,
    samples: int,
    start: Any,
    rate_per_s: float | None = None,
) -> None:
    """Raw MQTT 5 publisher: QoS 1 frames written in bulk with a window of unacked ones,
    as fast as possible or paced at ``rate_per_s``."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        encode_connect(
            client_id=f"benchpub-{worker}-{os.getpid()}",
            keepalive_s=60,
            clean_start=True,
            session_expiry_s=0,
            receive_maximum=100,
        )
    )
    sock.recv(64)
    start.wait()
    window = 2000
    buf = bytearray()
    sent = acked = 0
    now = t0 = time.time()
    if rate_per_s:
        sock.settimeout(0.005)
    while acked < n:
        allowed = n if not rate_per_s else min(n, int((time.time() - t0) * rate_per_s) + 1)
        chunk = []
        while sent < allowed and sent - acked < window and len(chunk) < 200:
            i = sent
            dev = (i * 7919 + worker) % N_DEVICES
            seq = worker * 10_000_000 + i
            topic = f"{root}/bench-{dev}/{kind}"
            body = (
                vitals_payload(dev, seq, now)
                if kind == "vitals"
                else accel_payload(dev, seq, now, samples)
            )
            chunk.append(encode_publish(topic, body, qos=1, packet_id=i % 65535 + 1))
            sent += 1
        if chunk:
            sock.sendall(b"".join(chunk))
        if sent == acked:
            time.sleep(0.001)  # paced and ahead of schedule: nothing to wait for
            continue
        try:
            data = sock.recv(1 << 16)
        except TimeoutError:
            continue
        if not data:
            raise RuntimeError("broker closed the publisher")
        buf += data
        packets, used = split_packets(buf)
        del buf[:used]
        acked += sum(1 for first, _ in packets if first & 0xF0 == PUBACK)
    sock.close()


def run_publishers(
    port: int,
    root: str,
    n: int,
    procs: int,
    kind: str = "vitals",
    samples: int = 0,
    rate_per_s: float | None = None,
) -> list[mp.Process]:
    start = mp.get_context("fork").Event()
    each = rate_per_s / procs if rate_per_s else None
    ps = [
        mp.get_context("fork").Process(
            target=publisher, args=(port, root, w, n // procs, kind, samples, start, each)
        )
        for w in range(procs)
    ]
    for p in ps:
        p.start()
    time.sleep(0.3)
    start.set()
    return ps


# -- (a) ceilings -------------------------------------------------------------------------------
def gmqtt_ceiling(port: int, n: int, procs: int, out: Any) -> None:
    from gmqtt import Client  # noqa: PLC0415

    async def main() -> None:
        root = "bench-a/carecall/v1"
        got = 0
        first = last = 0.0
        done = asyncio.Event()

        def on_message(client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
            nonlocal got, first, last
            got += 1
            if got == 1:
                first = time.perf_counter()
            if got >= n:
                last = time.perf_counter()
                done.set()
            return 0

        c = Client("bench-gmqtt-ceiling")
        c.on_message = on_message
        await c.connect("127.0.0.1", port)
        c.subscribe(f"{root}/+/+", qos=1)
        await asyncio.sleep(0.5)
        ps = run_publishers(port, root, n, procs)
        await asyncio.wait_for(done.wait(), timeout=300)
        for p in ps:
            p.join()
        await c.disconnect()
        out.put({"msgs_per_s": n / (last - first), "peak_rss_mb": rss_mb()})

    asyncio.run(main())


def own_client_ceiling(port: int, n: int, procs: int, out: Any) -> None:
    from ingest.mqtt import MqttClient  # noqa: PLC0415

    async def main() -> None:
        root = "bench-a2/carecall/v1"
        got = 0
        first = last = 0.0
        done = asyncio.Event()
        client: MqttClient

        def on_messages(batch: list[Any]) -> None:
            nonlocal got, first, last
            if got == 0:
                first = time.perf_counter()
            got += len(batch)
            client.ack(batch[0].link, [m.packet_id for m in batch])
            if got >= n:
                last = time.perf_counter()
                done.set()

        client = MqttClient(
            host="127.0.0.1",
            port=port,
            client_id="bench-own-ceiling",
            subscriptions=[(f"{root}/+/+", 1)],
            on_messages=on_messages,
            clean_start=True,
            session_expiry_s=0,
        )
        task = asyncio.create_task(client.run_loop())
        await client.wait_connected(10)
        await asyncio.sleep(0.5)
        ps = run_publishers(port, root, n, procs)
        await asyncio.wait_for(done.wait(), timeout=300)
        for p in ps:
            p.join()
        task.cancel()
        out.put({"msgs_per_s": n / (last - first), "peak_rss_mb": rss_mb()})

    asyncio.run(main())


# -- (b)/(c) the durable pipeline ---------------------------------------------------------------
def pipeline(
    port: int,
    db_url: str,
    n: int,
    procs: int,
    kind: str,
    samples: int,
    spool: str,
    rate_per_s: float | None,
    out: Any,
) -> None:
    from ingest.service import run_ingest  # noqa: PLC0415
    from ingest.settings import Settings  # noqa: PLC0415

    async def main() -> None:
        tag = f"b{kind[:1]}{samples}{'p' if rate_per_s else ''}"
        root = f"bench-{tag}/carecall/v1"
        settings = Settings(
            environment="test",
            database_url=db_url,
            mqtt_host="127.0.0.1",
            mqtt_port=port,
            topic_root=root,
            mqtt_client_id=f"bench-pipeline-{tag}",
            spool_dir=Path(spool),
        )
        lat: list[np.ndarray] = []
        done_count = 0
        first = last = 0.0
        rss_samples: list[float] = []
        finished = asyncio.Event()

        def on_durable(messages: Any, durable_ts: float) -> None:
            nonlocal done_count, first, last
            if done_count == 0:
                first = min(m.received_ts for m in messages)
            done_count += len(messages)
            lat.append(
                durable_ts - np.fromiter((m.received_ts for m in messages), float, len(messages))
            )
            if done_count >= n:
                last = durable_ts
                finished.set()

        async with run_ingest(settings, on_durable=on_durable) as rt:
            await rt.source.client.wait_connected(10)
            await asyncio.sleep(0.5)
            rss_before = current_rss_mb()
            ps = run_publishers(port, root, n, procs, kind, samples, rate_per_s)

            async def sample_rss() -> None:
                while not finished.is_set():
                    rss_samples.append(current_rss_mb())
                    await asyncio.sleep(0.2)

            sampler = asyncio.create_task(sample_rss())
            await asyncio.wait_for(finished.wait(), timeout=600)
            sampler.cancel()
            for p in ps:
                p.join()
            all_lat = np.concatenate(lat) * 1000
            out.put(
                {
                    "msgs_per_s": n / (last - first),
                    "rows_per_s": n / (last - first),
                    "samples_per_s": n * samples / (last - first) if samples else None,
                    "p50_ms": float(np.percentile(all_lat, 50)),
                    "p99_ms": float(np.percentile(all_lat, 99)),
                    "rss_before_mb": rss_before,
                    "rss_peak_during_mb": max(rss_samples or [rss_before]),
                    "peak_rss_mb": rss_mb(),
                    "spooled_batches": rt.metrics.registry.get_sample_value(
                        "carecall_ingest_spooled_batches_total"
                    ),
                }
            )

    asyncio.run(main())


def phase(target: Any, *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, out))
    p.start()
    result: dict[str, Any] = out.get(timeout=900)
    p.join(timeout=60)
    return result


async def _migrate_db(db_url: str) -> None:
    import psycopg  # noqa: PLC0415

    from ingest.migrate import migrate  # noqa: PLC0415

    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        await migrate(c)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--accel-windows", type=int, default=40_000)
    ap.add_argument("--publishers", type=int, default=2)
    ap.add_argument("--paced-rate", type=int, default=5000, help="msg/s for the latency phase")
    ap.add_argument("--no-nodered", action="store_true", help="skip the Node-RED peer")
    args = ap.parse_args()
    n, procs = args.messages, args.publishers
    with tempfile.TemporaryDirectory() as tmp, scratch_database("carecall_bench") as db_url:
        broker = Mosquitto(Path(tmp) / "mosquitto")
        broker.start()
        try:
            asyncio.run(_migrate_db(db_url))
            register_devices(db_url, [f"bench-{i}" for i in range(N_DEVICES)])
            results: dict[str, Any] = {}
            results["a_gmqtt_ceiling"] = phase(gmqtt_ceiling, broker.port, n, procs)
            results["a2_own_client_ceiling"] = phase(own_client_ceiling, broker.port, n, procs)
            results["b_pipeline_vitals"] = phase(
                pipeline, broker.port, db_url, n, procs, "vitals", 0, f"{tmp}/spool-b", None
            )
            # Latency below saturation: the same pipeline at a paced, sustainable rate.
            results["b2_pipeline_vitals_paced"] = phase(
                pipeline,
                broker.port,
                db_url,
                args.paced_rate * 10,
                procs,
                "vitals",
                0,
                f"{tmp}/spool-b2",
                args.paced_rate,
            )
            for samples in (50, 200):
                results[f"c_pipeline_accel_{samples}"] = phase(
                    pipeline,
                    broker.port,
                    db_url,
                    args.accel_windows,
                    procs,
                    "accel",
                    samples,
                    f"{tmp}/spool-c{samples}",
                    None,
                )
            if nodered_peer.available() and not args.no_nodered:
                with scratch_database("carecall_bench_nr") as nr_db:
                    asyncio.run(_migrate_db(nr_db))
                    try:
                        results["d_nodered_peer"] = nodered_peer.run(
                            broker.port, nr_db, n, procs
                        ) | {"peak_rss_mb": float("nan")}
                    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
                        print(f"Node-RED peer not measured: {exc}", file=sys.stderr)
        finally:
            broker.kill()
    a = results["a_gmqtt_ceiling"]["msgs_per_s"]
    b = results["b_pipeline_vitals"]
    print(
        f"{'phase':28} {'msg/s':>10} {'samples/s':>12} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'peak RSS MB':>11}"
    )
    for name, r in results.items():
        sps = r.get("samples_per_s")
        print(
            f"{name:28} {r['msgs_per_s']:>10.0f} {(f'{sps:,.0f}' if sps else '-'):>12} "
            f"{r.get('p50_ms', float('nan')):>8.1f} {r.get('p99_ms', float('nan')):>8.1f} "
            f"{r['peak_rss_mb']:>11.0f}"
        )
    summary = {
        "messages": n,
        "publishers": procs,
        "ceiling_gmqtt_msgs_per_s": round(a),
        "ceiling_own_client_msgs_per_s": round(results["a2_own_client_ceiling"]["msgs_per_s"]),
        "pipeline_vitals_msgs_per_s": round(b["msgs_per_s"]),
        "pipeline_over_ceiling": round(b["msgs_per_s"] / a, 3),
        "pipeline_p50_ms": round(b["p50_ms"], 2),
        "pipeline_p99_ms": round(b["p99_ms"], 2),
        "pipeline_rss_before_mb": round(b["rss_before_mb"], 1),
        "pipeline_rss_peak_during_mb": round(b["rss_peak_during_mb"], 1),
        "accel50_samples_per_s": round(results["c_pipeline_accel_50"]["samples_per_s"]),
        "accel200_samples_per_s": round(results["c_pipeline_accel_200"]["samples_per_s"]),
        "accel200_windows_per_s": round(results["c_pipeline_accel_200"]["msgs_per_s"]),
        "pipeline_over_own_client_ceiling": round(
            b["msgs_per_s"] / results["a2_own_client_ceiling"]["msgs_per_s"], 3
        ),
        "paced_rate_msgs_per_s": args.paced_rate,
        "paced_p50_ms": round(results["b2_pipeline_vitals_paced"]["p50_ms"], 2),
        "paced_p99_ms": round(results["b2_pipeline_vitals_paced"]["p99_ms"], 2),
    }
    if "d_nodered_peer" in results:
        nr = results["d_nodered_peer"]["msgs_per_s"]
        summary["nodered_msgs_per_s_not_durable"] = round(nr)
        summary["carecall_over_nodered"] = round(b["msgs_per_s"] / nr, 3)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
