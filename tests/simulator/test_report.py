"""The scorer on synthetic ground truth and incidents; the HTTP layers on a mock transport."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import httpx
import msgspec
import pytest

from ingest.cli import main as carecall_main
from simulator.groundtruth import GroundTruthEvent, GroundTruthLog, read_ground_truth
from simulator.provision import provision_rest
from simulator.report import Incident, fetch_incidents, matches, score
from simulator.town import build_town

T0 = 1_800_000_000.0  # device time of the first event
W0 = T0 + 3 * 86400  # wall time: the run replayed the past at speed


def ev(
    event_id: str,
    kind: str,
    device: str,
    start: float,
    *,
    expected: tuple[str, ...] = (),
    must_not_raise: tuple[str, ...] = (),
    dur: float = 20.0,
) -> GroundTruthEvent:
    return GroundTruthEvent(
        event_id=event_id,
        kind=kind,
        resident=device.split("-", maxsplit=1)[0],
        devices=(device,),
        start_ts=T0 + start,
        end_ts=T0 + start + dur,
        wall_start_s=W0 + start / 10,
        expected=expected,
        must_not_raise=must_not_raise,
    )


def inc(i: int, kind: str, device: str, event_at: float | None, raised_wall: float) -> Incident:
    trace = {"raised_at": raised_wall}
    if event_at is not None:
        trace |= {
            "event_at": event_at,
            "broker_at": raised_wall - 0.5,
            "detected_at": raised_wall - 0.1,
        }
    return Incident(i, kind, device, "raised", raised_wall, event_at, trace)


GT = [
    ev("f1", "fall", "a-w", 0, expected=("fall",)),
    ev("f2", "fall", "b-w", 1000, expected=("fall",)),  # missed
    ev("s1", "sos", "a-w", 2000, expected=("sos",), dur=0),
    ev("d1", "adl", "b-w", 10_000, must_not_raise=("fall",)),  # raises a fall: false positive
    ev("d2", "adl", "a-w", 4000, must_not_raise=("fall",)),
    ev("m1", "malformed", "c-w", 5000, must_not_raise=("sos",), dur=0),
]
INCIDENTS = [
    inc(1, "fall", "a-w", T0 + 3, W0 + 2.0),  # f1 by device time: delay 2 s
    inc(2, "sos", "a-w", None, W0 + 200 + 0.3),  # s1 by wall time only: delay 0.3 s
    inc(3, "fall", "b-w", T0 + 10_005, W0 + 1001),  # during ADL d1
    inc(4, "fall", "c-w", T0 + 1000, W0 + 100),  # nobody fell on c-w: a false alarm
    inc(5, "smoke", "c-w", T0 + 9000, W0 + 900),  # nothing injected: a false alarm
]


def test_score_table() -> None:
    report = score(GT, INCIDENTS, resident_days=3.0)
    fall, sos, adl, bad = (report.kinds[k] for k in ("fall", "sos", "adl", "malformed"))
    assert (fall.events, fall.hits, fall.sensitivity) == (2, 1, 0.5)
    assert sos.sensitivity == 1.0
    assert fall.delay_s.n == 1 and fall.delay_s.max == pytest.approx(2.0)
    assert sos.delay_s.max == pytest.approx(0.3)
    assert (adl.events, adl.hits, adl.specificity, adl.sensitivity) == (2, 1, 0.5, None)
    assert bad.specificity == 1.0
    # 3 (during an ADL), 4 and 5 explain no injected positive.
    assert report.false_alarms == 3
    assert {i.incident_id for i in report.unmatched} == {3, 4, 5}
    assert report.false_alarms_per_resident_day == pytest.approx(1.0)
    assert report.hops["event -> broker"].n == 4  # every incident with a device time
    assert "broker -> handed" not in report.hops  # no incident carries handed_at
    text = report.text()
    assert "fall" in text and "50.0%" in text and "per resident-day" in text
    assert json.loads(json.dumps(report.to_json()))["kinds"]["fall"]["sensitivity"] == 0.5


@pytest.mark.parametrize(
    ("event_at", "raised", "ok"),
    [
        (T0 + 10, W0 + 9999, True),  # device time inside the window
        (T0 - 61, W0 + 9999, False),  # before the window on both clocks
        (None, W0 + 100, True),  # no device time: wall window
        (None, W0 + 301, False),
        (T0 + 20 + 3601, W0 + 9999, False),  # long after the event
    ],
)
def test_matching_windows(event_at: float | None, raised: float, ok: bool) -> None:
    assert matches(GT[0], inc(9, "fall", "a-w", event_at, raised)) is ok


def test_empty_inputs() -> None:
    report = score([], [])
    assert report.kinds == {} and report.false_alarms == 0
    assert report.incidents == 0 and "incidents 0" in report.text()


def test_ground_truth_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "gt.jsonl"
    with GroundTruthLog(path) as log:
        for e in GT:
            log.record(e)
    assert read_ground_truth(path) == GT


def _iso(s: float) -> str:
    return dt.datetime.fromtimestamp(s, dt.UTC).isoformat()


def test_fetch_incidents_over_http() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.url.path == "/api/v1/auth/token":
            assert b"username=admin" in request.content
            return httpx.Response(200, json={"access_token": "tok", "expires_in": 900})
        assert request.headers["Authorization"] == "Bearer tok"
        if request.url.path == "/api/v1/incidents":
            assert "resolved" in request.url.params.get_list("state")
            rows = [
                {"incident_id": 1, "kind": "fall", "device_id": "sim-r1-watch", "state": "raised",
                 "raised_at": _iso(W0)},
                {"incident_id": 2, "kind": "sos", "device_id": "other-dev", "state": "raised",
                 "raised_at": _iso(W0)},
            ]  # fmt: skip
            return httpx.Response(200, json=rows)
        assert request.url.path == "/api/v1/incidents/1"
        detail = {"incident_id": 1, "kind": "fall", "device_id": "sim-r1-watch",
                  "raised_at": _iso(W0), "event_at": _iso(T0), "broker_at": _iso(W0 - 1)}  # fmt: skip
        return httpx.Response(200, json={"incident": detail, "events": []})

    got = fetch_incidents(
        "http://cc", "admin", "pw", device_prefix="sim-", transport=httpx.MockTransport(handler)
    )
    assert [i.incident_id for i in got] == [1]
    assert got[0].event_s == pytest.approx(T0) and got[0].trace_s["broker_at"] == pytest.approx(
        W0 - 1
    )
    assert seen == ["POST /api/v1/auth/token", "GET /api/v1/incidents", "GET /api/v1/incidents/1"]


def test_provision_rest_is_tolerant() -> None:
    town = build_town(2, seed=0)
    next_id = iter(range(100, 200))

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/api/v1/auth/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 900})
        if path == "/api/v1/areas":
            return httpx.Response(409, json={"detail": "exists"})  # a re-run: fine
        if path == "/api/v1/residents":
            return httpx.Response(201, json={"resident_id": next(next_id)})
        if path == "/api/v1/devices":
            body = json.loads(request.content)
            if body["device_type"] == "home_gateway":
                return httpx.Response(422, json={"detail": "nope"})
            return httpx.Response(201, json=body)
        device_id = path.split("/")[-2]
        return httpx.Response(201, json={"device_id": device_id, "mqtt_username": device_id,
                                         "mqtt_password": f"pw-{device_id}"})  # fmt: skip

    out = provision_rest(town, "http://cc", "admin", "pw", transport=httpx.MockTransport(handler))
    assert out.resident_ids == {"r0001": 100, "r0002": 101}
    wearables = [d.device_id for r in town.residents for d in r.wearables]
    assert sorted(out.credentials) == sorted(wearables)
    assert len(out.problems) == 2 and all("HTTP 422" in p for p in out.problems)


def test_carecall_simulate_is_a_tool(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        carecall_main(["simulate", "--help"])
    assert exc.value.code == 0
    assert "--residents" in capsys.readouterr().out
    assert carecall_main(["simulate", "--report"]) == 2


def test_server_clock_timer_rules_are_not_judged_in_a_past_anchored_run() -> None:
    wander = ev("n1", "night_wandering", "a-gw", 7000, expected=("night_wandering", "bed_exit"))
    timer = inc(7, "inactivity", "b-gw", T0 + 200, W0 + 60)
    timer_kinds = frozenset({"inactivity", "bed_exit", "door_open", "night_wandering"})
    past = score(
        [*GT, wander], [*INCIDENTS, timer], resident_days=3.0, server_clock_kinds=timer_kinds
    )
    assert "night_wandering" not in past.kinds and past.false_alarms == 3
    assert past.unjudged_events == {"night_wandering": 1}
    assert past.unjudged_incidents == {"inactivity": 1}
    assert "not judged" in past.text()
    # On the wall clock the same incident is an ordinary false alarm.
    wall = [msgspec.structs.replace(e, anchor="wall") for e in (*GT, wander)]
    live = score(wall, [*INCIDENTS, timer], resident_days=3.0)
    assert live.kinds["night_wandering"].sensitivity == 0.0
    assert live.false_alarms == 4 and not live.unjudged_incidents
    # The rule runner times them on the device clock now: judged by default in any run.
    judged = score([*GT, wander], [*INCIDENTS, timer], resident_days=3.0)
    assert judged.kinds["night_wandering"].sensitivity == 0.0
    assert judged.false_alarms == 4 and not judged.unjudged_incidents
