"""What holding the PUBACK costs per MQTT client: do-nothing QoS 1 subscribers, one run.

Each client receives the same N QoS 1 messages from the same raw publisher processes against a
private Mosquitto with the shipped limits. Variants:

- gmqtt, optimistic ack (acks on receipt: the ceiling, NOT durable)
- gmqtt, held ack (``optimistic_acknowledgement=False``, async handler: PUBACK when it returns)
- paho, auto ack (NOT durable) and paho ``manual_ack=True`` + ``client.ack(mid, qos)``
- aiomqtt (acks on receipt; cannot hold an ack)
- ingest.mqtt (ours): batches per socket read, acks handed back in bulk

    python bench/mqtt_clients.py [--messages 100000] [--publishers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ingest import run_publishers
from tests.fixtures.services import Mosquitto


def _gmqtt(port: int, n: int, procs: int, held: bool, out: Any) -> None:
    from gmqtt import Client  # noqa: PLC0415

    async def main() -> None:
        root = f"bm-gmqtt-{int(held)}/carecall/v1"
        state = {"got": 0, "first": 0.0, "last": 0.0}
        done = asyncio.Event()

        def count() -> None:
            state["got"] += 1
            if state["got"] == 1:
                state["first"] = time.perf_counter()
            if state["got"] >= n:
                state["last"] = time.perf_counter()
                done.set()

        if held:

            async def on_message(*_: Any) -> int:
                count()
                return 0
        else:

            def on_message(*_: Any) -> int:  # type: ignore[misc]
                count()
                return 0

        c = Client(
            f"bm-gmqtt-{int(held)}", optimistic_acknowledgement=not held, session_expiry_interval=60
        )
        c.on_message = on_message
        await c.connect("127.0.0.1", port)
        c.subscribe(f"{root}/+/+", qos=1)
        await asyncio.sleep(0.5)
        ps = run_publishers(port, root, n, procs)
        await asyncio.wait_for(done.wait(), timeout=300)
        for p in ps:
            p.join()
        await c.disconnect()
        out.put(n / (state["last"] - state["first"]))

    asyncio.run(main())


def _paho(port: int, n: int, procs: int, held: bool, out: Any) -> None:
    import paho.mqtt.client as paho  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    root = f"bm-paho-{int(held)}/carecall/v1"
    state = {"got": 0, "first": 0.0, "last": 0.0}
    done = threading.Event()
    c = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bm-paho-{int(held)}",
        protocol=paho.MQTTv5,
        manual_ack=held,
    )

    def on_message(client: Any, _u: Any, msg: Any) -> None:
        if held:
            client.ack(msg.mid, msg.qos)
        state["got"] += 1
        if state["got"] == 1:
            state["first"] = time.perf_counter()
        if state["got"] >= n:
            state["last"] = time.perf_counter()
            done.set()

    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.subscribe(f"{root}/+/+", qos=1)
    c.loop_start()
    time.sleep(0.5)
    ps = run_publishers(port, root, n, procs)
    done.wait(timeout=300)
    for p in ps:
        p.join()
    c.loop_stop()
    out.put(n / (state["last"] - state["first"]))


def _aiomqtt(port: int, n: int, procs: int, out: Any) -> None:
    import aiomqtt  # noqa: PLC0415

    async def main() -> None:
        root = "bm-aiomqtt/carecall/v1"
        async with aiomqtt.Client("127.0.0.1", port, identifier="bm-aiomqtt") as c:
            await c.subscribe(f"{root}/+/+", qos=1)
            await asyncio.sleep(0.5)
            ps = run_publishers(port, root, n, procs)
            got = 0
            first = 0.0
            async for _ in c.messages:
                got += 1
                if got == 1:
                    first = time.perf_counter()
                if got >= n:
                    break
            last = time.perf_counter()
            for p in ps:
                p.join()
        out.put(n / (last - first))

    asyncio.run(main())


def _ours(port: int, n: int, procs: int, out: Any) -> None:
    from bench.ingest import own_client_ceiling  # noqa: PLC0415

    q: Any = mp.get_context("fork").Queue()
    own_client_ceiling(port, n, procs, q)
    out.put(q.get()["msgs_per_s"])


def phase(target: Any, *args: Any) -> float:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, out))
    p.start()
    value: float = out.get(timeout=600)
    p.join(timeout=30)
    return value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--publishers", type=int, default=2)
    args = ap.parse_args()
    n, procs = args.messages, args.publishers
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto")
        broker.start()
        try:
            results["gmqtt_optimistic_not_durable"] = phase(_gmqtt, broker.port, n, procs, False)
            results["gmqtt_held_ack"] = phase(_gmqtt, broker.port, n, procs, True)
            results["paho_auto_ack_not_durable"] = phase(_paho, broker.port, n, procs, False)
            results["paho_manual_ack"] = phase(_paho, broker.port, n, procs, True)
            results["aiomqtt_not_durable"] = phase(_aiomqtt, broker.port, n, procs)
            results["ours_held_ack_batched"] = phase(_ours, broker.port, n, procs)
        finally:
            broker.kill()
    top = results["gmqtt_optimistic_not_durable"]
    for name, rate in results.items():
        print(f"{name:32} {rate:>10,.0f} msg/s  {rate / top:5.2f}x gmqtt optimistic")
    print(
        json.dumps({k: round(v) for k, v in results.items()} | {"messages": n, "publishers": procs})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
