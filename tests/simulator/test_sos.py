"""An SOS is re-sent (same seq, same ts) until "accepted" arrives on the reply topic, and
then no more: a real Mosquitto, the simulator, and a tiny replier standing in for CareCall."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from simulator.groundtruth import read_ground_truth
from simulator.publisher import BrokerAddress
from simulator.scenarios import Scenario
from simulator.simulation import Simulation
from tests.fixtures.services import Mosquitto

ANSWER_ON_COPY = 3  # the replier stays silent for the first two copies


class Replier:
    """Counts SOS copies per (device, seq) and answers "accepted" at the N-th copy."""

    def __init__(self, port: int, root: str) -> None:
        self.root = root
        self.copies: dict[tuple[str, int], list[bytes]] = {}
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"{root}/+/sos", qos=1)
        self.client.loop_start()
        time.sleep(0.3)

    def _on_message(self, client: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        device_id = msg.topic.split("/")[-2]
        body = json.loads(msg.payload)
        key = (device_id, int(body["seq"]))
        with self.lock:
            self.copies.setdefault(key, []).append(msg.payload)
            n = len(self.copies[key])
        if n == ANSWER_ON_COPY:
            reply = {"kind": "sos", "seq": key[1], "status": "accepted", "action": "press"}
            client.publish(f"{self.root}/{device_id}/reply", json.dumps(reply), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_sos_resent_until_accepted_then_stops(broker: Mosquitto, tmp_path: Path) -> None:
    root = f"t{uuid.uuid4().hex[:8]}/carecall/v1"
    replier = Replier(broker.port, root)
    gt_path = tmp_path / "gt.jsonl"
    sim = Simulation(
        residents=1,
        days=0.001,  # 86 simulated seconds
        speed=43.2,  # in 2 wall seconds
        broker=BrokerAddress("127.0.0.1", broker.port),
        topic_root=root,
        prefix=f"s{uuid.uuid4().hex[:6]}",
        ground_truth=gt_path,
        scenarios=[],
        sos_resend_wall_s=0.5,  # ample time for the reply, so no extra copy slips out
        sos_wait_at_end_s=10.0,
    )
    device = sim.town.residents[0].wearables[0].device_id
    sim.fixed_scenarios = [Scenario("sos", "r0001", device, 5.0)]
    try:
        summary = sim.run()
        time.sleep(1.0)  # a re-send after "accepted" would show up here
        with replier.lock:
            copies = dict(replier.copies)
    finally:
        replier.close()
    assert list(copies) and all(k[0] == device for k in copies)
    ((key, payloads),) = copies.items()
    # Every copy is byte-identical (same seq and ts), and sending stopped at the answer.
    assert len(set(payloads)) == 1
    assert len(payloads) == ANSWER_ON_COPY
    assert summary.sos_sent == 1 and summary.sos_accepted == 1 and summary.sos_unanswered == 0
    assert summary.sos_resends == ANSWER_ON_COPY - 1
    assert sim.sos_accepted(*key)
    (event,) = read_ground_truth(gt_path)
    assert event.kind == "sos" and event.expected == ("sos",) and event.devices == (device,)
