"""The alert feature in the running server: MQTT in, WebSocket and HTTP out, scoped."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from alerts.channels import sign
from alerts.incidents import IncidentStore
from alerts.metrics import AlertMetrics
from alerts.rules.detection import DetectionKind
from ingest.features import FEATURES
from tests.alerts.server import next_message, serve, server_settings
from tests.alerts.world import build_world, det
from tests.fixtures.services import Publisher, TcpProxy, eventually
from tests.ingest.helpers import payload


async def _incidents(db: psycopg.AsyncConnection[Any], resident_id: int) -> list[tuple[Any, ...]]:
    cur = await db.execute(
        "SELECT incident_id, kind, state, detections, pushed_at IS NOT NULL, broker_at IS NOT NULL"
        " FROM incidents WHERE resident_id = %s ORDER BY incident_id",
        (resident_id,),
    )
    return await cur.fetchall()


async def test_sos_to_console_and_every_endpoint_scoped(
    migrated_db: str, db, uid: str, spool_dir: Path
) -> None:
    w = await build_world(db, uid)
    settings = server_settings(
        migrated_db, uid, spool_dir, alerts_gateway_callback_secret="gw-secret"
    )
    root = settings.topic_root
    dev = w.devices["r1"]
    pub = Publisher()
    try:
        async with serve(settings) as (rt, host):
            await rt.source.client.wait_connected(5)
            ws_a = await connect(f"ws://{host}/api/v1/ws?token={w.token('disp_ca')}")
            ws_b = await connect(f"ws://{host}/api/v1/ws?token={w.token('disp_db')}")
            assert json.loads(await ws_a.recv())["type"] == "hello"
            assert json.loads(await ws_b.recv())["type"] == "hello"
            with pytest.raises((ConnectionClosed, InvalidStatus)):
                await (await connect(f"ws://{host}/api/v1/ws?token=forged")).recv()

            sent = time.time()
            press = payload(seq=1, lat=38.0401, lon=114.5101)
            await asyncio.to_thread(pub.publish_many, [(f"{root}/{dev}/sos", press)])
            live = await next_message(ws_a, "live_alarm")
            assert live["device_id"] == dev and live["incident_kind"] == "sos"
            assert time.time() - sent < 2.0
            opened = await next_message(ws_a, "incident_event", action="opened")
            iid = opened["incident_id"]
            # The urgent lane and the bridge both handed the press over: shown once.
            with pytest.raises(TimeoutError):
                await next_message(ws_a, "live_alarm", timeout_s=0.5)
            # The rule runner also saw the press: still one incident, one source.
            await asyncio.sleep(0.5)
            rows = await _incidents(db, w.residents["r1"])
            assert len(rows) == 1 and rows[0][3] == 1
            # District b's console heard nothing of it.
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await ws_b.recv()

            async with httpx.AsyncClient(base_url=f"http://{host}") as http:
                ha, hb = w.headers("disp_ca"), w.headers("disp_db")
                q = (await http.get("/api/v1/incidents", headers=ha)).json()
                assert [i["incident_id"] for i in q] == [iid]
                assert (await http.get("/api/v1/incidents", headers=hb)).json() == []
                # Out of scope answers exactly like nonexistent, on every endpoint.
                calls = [
                    ("get", "", None),
                    ("post", "/acknowledge", None),
                    ("post", "/dispatch", {"help": ["family"]}),
                    ("post", "/notes", {"text": "x"}),
                    ("post", "/resolve", {"outcome": "false_alarm", "reason": "x"}),
                    ("post", "/cancel", {"reason": "x"}),
                ]
                for method, suffix, body in calls:
                    for target in (iid, 10**12):
                        r = await http.request(
                            method, f"/api/v1/incidents/{target}{suffix}", headers=hb, json=body
                        )
                        assert (r.status_code, r.json()) == (404, {"detail": "not found"}), suffix
                assert (await http.get(f"/api/v1/incidents/{iid}")).status_code == 401
                kpi_b = (await http.get("/api/v1/kpis?level=community", headers=hb)).json()
                assert kpi_b["rows"] == []
                window = {
                    "device_id": dev,
                    "starts_at": "2026-01-01T00:00:00Z",
                    "ends_at": "2030-01-01T00:00:00Z",
                }
                r = await http.post(
                    "/api/v1/maintenance-windows", headers=w.headers("oper_db"), json=window
                )
                assert r.status_code == 404
                assert (await http.get("/api/v1/suppressed", headers=hb)).json() == []
                # Within their own district the operator can manage windows.
                r = await http.post(
                    "/api/v1/maintenance-windows",
                    headers=w.headers("oper_db"),
                    json={**window, "device_id": None, "area_path": w.path_b},
                )
                assert r.status_code == 201
                wid = r.json()["window_id"]
                listed = (await http.get("/api/v1/maintenance-windows", headers=hb)).json()
                assert [x["window_id"] for x in listed] == [wid]
                assert (await http.get("/api/v1/maintenance-windows", headers=ha)).json() == []
                r = await http.delete(f"/api/v1/maintenance-windows/{wid}", headers=ha)
                assert r.status_code == 403  # a dispatcher may not
                r = await http.delete(
                    f"/api/v1/maintenance-windows/{wid}", headers=w.headers("oper_db")
                )
                assert r.status_code == 204

                # The in-scope dispatcher works the incident.
                detail = (await http.get(f"/api/v1/incidents/{iid}", headers=ha)).json()
                assert detail["incident"]["state"] == "delivered"
                assert detail["location"]["source"] == "incident"
                assert detail["contacts"][0]["role"] == "community_helper"
                hops = {t["hop"] for t in detail["trace"] if t["at"] is not None}
                assert {"event", "broker", "handed", "detected", "raised", "pushed"} <= hops
                ok = await http.post(f"/api/v1/incidents/{iid}/acknowledge", headers=ha)
                assert ok.json()["state"] == "acknowledged"
                again = await http.post(f"/api/v1/incidents/{iid}/acknowledge", headers=ha)
                assert again.status_code == 409
                r = await http.post(
                    f"/api/v1/incidents/{iid}/dispatch",
                    headers=ha,
                    json={"help": ["family", "ambulance_120"]},
                )
                assert r.json()["state"] == "dispatched"
                r = await http.post(
                    f"/api/v1/incidents/{iid}/resolve",
                    headers=ha,
                    json={"outcome": "real_emergency"},
                )
                assert r.json()["state"] == "resolved"
                await next_message(ws_a, "incident_event", action="resolved")
                kpi = (await http.get("/api/v1/kpis?level=community", headers=ha)).json()
                (row,) = kpi["rows"]
                assert row["area"] == w.path_a and row["alarms"] == 1
                assert row["ack_within_60s"] == 1.0 and row["ack_p50_s"] < 60

                # The gateway reports that the first contact accepted (signed callback).
                cur = await db.execute(
                    "SELECT call_id, role FROM incident_calls WHERE incident_id = %s", (iid,)
                )
                (call_id, role), *_ = await cur.fetchall()
                assert role == "family"
                raw = b'{"status": "accepted"}'
                good = sign(b"gw-secret", raw, int(time.time()))
                r = await http.post(
                    f"/api/v1/gateway/calls/{call_id}",
                    content=raw,
                    headers={"X-CareCall-Signature": good},
                )
                assert r.status_code == 200 and r.json()["incident_id"] == iid
                # The gateway callback is refused without the right signature.
                r = await http.post(
                    "/api/v1/gateway/calls/1",
                    content=raw,
                    headers={"X-CareCall-Signature": sign(b"nope", raw, int(time.time()))},
                )
                assert r.status_code == 401
            cur = await db.execute(
                "SELECT action FROM audit_log WHERE actor = %s ORDER BY audit_id",
                (w.staff["disp_ca"].username,),
            )
            audited = [a for (a,) in await cur.fetchall()]
            assert {
                "list_incidents",
                "read_incident",
                "acknowledge_incident",
                "dispatch_incident",
                "resolve_incident",
                "read_kpis",
            } <= set(audited)
            metric = rt.metrics.registry.get_sample_value(
                "carecall_alert_hop_seconds_count",
                {
                    "hop": "acknowledge",
                    "severity": "critical",
                    "district": ".".join(w.path_a.split(".")[:2]),
                },
            )
            assert metric == 1
            await ws_a.close()
            await ws_b.close()
    finally:
        pub.close()


@pytest.mark.slow
async def test_sos_during_database_outage_reaches_console_then_is_stored(
    migrated_db: str, db, uid: str, spool_dir: Path
) -> None:
    w = await build_world(db, uid)
    info = psycopg.conninfo.conninfo_to_dict(migrated_db)
    proxy = TcpProxy(str(info.get("host", "127.0.0.1")), int(info.get("port", 5432)))
    info.update(host="127.0.0.1", port=str(proxy.port))
    via_proxy = psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})
    settings = server_settings(via_proxy, uid, spool_dir)
    dev = w.devices["r1"]
    pub = Publisher()
    try:
        async with serve(settings) as (rt, host):
            await rt.source.client.wait_connected(5)
            ws = await connect(f"ws://{host}/api/v1/ws?token={w.token('disp_ca')}")
            await ws.recv()  # hello
            proxy.cut()
            sent = time.time()
            await asyncio.to_thread(
                pub.publish_many, [(f"{settings.topic_root}/{dev}/sos", payload(seq=9))]
            )
            live = await next_message(ws, "live_alarm", timeout_s=5)
            latency_s = time.time() - sent
            assert live["device_id"] == dev and latency_s < 2.0, latency_s
            engine = rt.services["alerts"]
            # The live lane and the rule runner both saw the press: one or two pending inputs.
            await eventually(lambda: len(engine.pending) >= 1, timeout_s=10)
            assert await _incidents(db, w.residents["r1"]) == []

            proxy.restore()
            rows = await eventually(lambda: _incidents(db, w.residents["r1"]), timeout_s=30)
            (_, kind, state, detections, pushed, brokered) = rows[0]
            assert (kind, state, detections, pushed, brokered) == (
                "sos",
                "delivered",
                1,
                True,
                True,
            )
            # Replaying the spool and the rule runner's copy add nothing.
            await asyncio.sleep(1.0)
            assert len(await _incidents(db, w.residents["r1"])) == 1
            assert len(engine.pending) == 0
            await ws.close()
    finally:
        pub.close()
        proxy.close()


async def test_composes_with_the_registry_feature(
    migrated_db: str, db, uid: str, spool_dir: Path
) -> None:
    """``carecall serve`` runs every feature: the engine takes presence from the registry."""
    w = await build_world(db, uid)
    settings = server_settings(migrated_db, uid, spool_dir)
    pub = Publisher()
    try:
        async with serve(settings, FEATURES) as (rt, host):
            engine = rt.services["alerts"]
            assert engine.presence is rt.services["presence"]
            await rt.source.client.wait_connected(5)
            ws = await connect(f"ws://{host}/api/v1/ws?token={w.token('disp_ca')}")
            await ws.recv()  # hello
            dev = w.devices["r1"]
            await asyncio.to_thread(
                pub.publish_many, [(f"{settings.topic_root}/{dev}/sos", payload(seq=3))]
            )
            assert (await next_message(ws, "live_alarm"))["device_id"] == dev
            await next_message(ws, "incident_event", action="opened")
            await ws.close()
    finally:
        pub.close()


async def test_a_console_that_connects_later_stamps_delivered_for_what_it_shows(
    migrated_db: str, db, uid: str, spool_dir: Path
) -> None:
    """Raised while no console was connected: delivered when a dispatcher's screen confirms
    it shows the incident, and only for incidents in that dispatcher's scope."""
    w = await build_world(db, uid)
    store = IncidentStore(metrics=AlertMetrics(CollectorRegistry()), cancel_window_s=60)
    now = time.time()
    ours = await store.record(db, det(w, DetectionKind.FALL, now - 2), now_ts=now)
    theirs = await store.record(db, det(w, DetectionKind.FALL, now - 2, who="r2"), now_ts=now)
    assert ours.incident_id is not None and theirs.incident_id is not None
    ids = [ours.incident_id, theirs.incident_id]
    settings = server_settings(migrated_db, uid, spool_dir)
    async with serve(settings) as (rt, host):
        # An operator's socket is not a dispatcher's screen: its confirmation changes nothing.
        ws_op = await connect(f"ws://{host}/api/v1/ws?token={w.token('oper_db')}")
        await ws_op.recv()  # hello
        await ws_op.send(json.dumps({"type": "shown", "incident_ids": ids}))
        ws = await connect(f"ws://{host}/api/v1/ws?token={w.token('disp_ca')}")
        await ws.recv()  # hello
        await ws.send("not a frame")  # ignored; the socket stays up
        await ws.send(json.dumps({"type": "shown", "incident_ids": ids}))
        msg = await next_message(ws, "incident_event", action="delivered")
        assert (
            msg["incident_id"] == ours.incident_id and msg["actor"] == w.staff["disp_ca"].username
        )
        await ws.send(json.dumps({"type": "shown", "incident_ids": ids}))  # again: no change
        await asyncio.sleep(0.3)
        cur = await db.execute(
            "SELECT incident_id, state, extract(epoch FROM pushed_at - raised_at)"
            " FROM incidents WHERE incident_id = ANY(%s) ORDER BY incident_id",
            (ids,),
        )
        (a_id, a_state, a_push_s), (_, b_state, b_push_s) = await cur.fetchall()
        assert (a_state, b_state, b_push_s) == ("delivered", "raised", None)
        assert 0 < a_push_s < 30
        cur = await db.execute(
            "SELECT actor, detail FROM incident_events WHERE incident_id = %s"
            " AND action = 'delivered'",
            (a_id,),
        )
        assert await cur.fetchall() == [(w.staff["disp_ca"].username, {"via": "console"})]
        # The screen hop of the trace is in the histogram too.
        metric = rt.metrics.registry.get_sample_value(
            "carecall_alert_hop_seconds_count",
            {"hop": "push", "severity": "critical", "district": ".".join(w.path_a.split(".")[:2])},
        )
        assert metric == 1
        await ws.close()
        await ws_op.close()


async def test_a_press_re_sent_after_a_restart_does_not_reopen_its_closed_incident(
    migrated_db: str, db, uid: str, spool_dir: Path
) -> None:
    """The device did not hear "accepted" and re-sends its press to a restarted server (whose
    in-memory duplicate checks are empty): shown live, then recognised as the same event."""
    w = await build_world(db, uid)
    settings = server_settings(migrated_db, uid, spool_dir)
    topic = f"{settings.topic_root}/{w.devices['r1']}/sos"
    press = payload(seq=5)
    pub = Publisher()
    try:
        async with serve(settings) as (rt, _host):
            await rt.source.client.wait_connected(5)
            await asyncio.to_thread(pub.publish_many, [(topic, press)])
            rows = await eventually(lambda: _incidents(db, w.residents["r1"]))
            first = rows[0][0]
            async with rt.pool.connection() as conn:
                await rt.services["alerts"].store.resolve(
                    conn,
                    first,
                    actor="t",
                    scope=w.city,
                    now_ts=time.time(),
                    outcome="resident_ok",
                    reason="called back",
                )
        async with serve(settings) as (rt, host):
            await rt.source.client.wait_connected(5)
            ws = await connect(f"ws://{host}/api/v1/ws?token={w.token('disp_ca')}")
            await ws.recv()  # hello
            await asyncio.to_thread(pub.publish_many, [(topic, press)])
            await next_message(ws, "live_alarm")
            # The console drops its provisional row on this event (console.js).
            repeat = await next_message(ws, "incident_event", action="repeat_after_close")
            assert repeat["incident_id"] == first and repeat["incident_kind"] == "sos"
            assert [r[2] for r in await _incidents(db, w.residents["r1"])] == ["resolved"]
            await asyncio.sleep(0.5)  # the rule runner's copy of the press: noted once only
            cur = await db.execute(
                "SELECT count(*) FROM incident_events WHERE incident_id = %s"
                " AND action = 'repeat_after_close'",
                (first,),
            )
            assert await cur.fetchone() == (1,)
            # A new press is a new emergency.
            await asyncio.to_thread(pub.publish_many, [(topic, payload(seq=6))])
            opened = await next_message(ws, "incident_event", action="opened")
            assert opened["incident_id"] != first
            await ws.close()
    finally:
        pub.close()
