"""The console and the dashboard in a real Chromium, against the real server, PostgreSQL and
Mosquitto: an SOS published over MQTT reaches the right dispatcher's screen within a second,
is acknowledged from the keyboard, and moves the KPI; another district never sees it."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from alerts.incidents import IncidentStore
from alerts.metrics import AlertMetrics
from alerts.rules.detection import DetectionKind
from tests.alerts.world import det
from tests.fixtures.services import Publisher
from tests.ingest.helpers import payload, vitals
from tests.web.server import PASSWORD, build_town, serve, settings_for

pytestmark = pytest.mark.browser
T = TypeVar("T")


async def sign_in(browser: Any, base: str, path: str, username: str) -> Any:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000}, locale="en-GB")
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.errors = errors
    await page.goto(base + path)
    await page.fill("#login input[name=username]", username)
    await page.fill("#login input[name=password]", PASSWORD)
    await page.click("#login button[type=submit]")
    return page


async def text_of(page: Any, selector: str) -> str:
    return str(await page.inner_text(selector))


async def until(
    read: Callable[[], Awaitable[T]], ok: Callable[[T], bool], timeout_s: float = 5.0
) -> T:
    """Poll from Python: the pages' CSP forbids the eval that wait_for_function needs."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await read()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value!r} after {timeout_s} s")
        await asyncio.sleep(0.1)


async def test_sos_on_console_acknowledged_by_keyboard(
    browser: Any,
    migrated_db: str,
    db: psycopg.AsyncConnection[Any],
    uid: str,
    spool_dir: Path,
    shots: Path,
    tmp_path: Path,
) -> None:
    w = await build_town(db, uid)
    settings = settings_for(migrated_db, uid, spool_dir)
    dev = w.devices["r1"]
    pub = Publisher()
    try:
        async with serve(settings) as (rt, base):
            await rt.source.client.wait_connected(5)
            page_a = await sign_in(browser, base, "/console", w.staff["disp_ca"].username)
            page_b = await sign_in(browser, base, "/console", w.staff["disp_db"].username)
            for page in (page_a, page_b):
                await page.wait_for_selector("#conn[data-state=live]", timeout=10_000)
                await page.wait_for_selector("#queue-empty:not([hidden])")
            assert "no alarms" in (await page_a.inner_text("#kpi"))

            # A neighbour's SOS first: acknowledged from the keyboard, it stays in the queue.
            first = payload(seq=1)
            await asyncio.to_thread(
                pub.publish_many, [(f"{settings.topic_root}/{w.devices['r3']}/sos", first)]
            )
            await page_a.locator("#queue .inc:not(.provisional)").wait_for(timeout=5_000)
            await page_a.keyboard.press("j")
            await page_a.wait_for_selector(f"#detail-h:text('Li Shufen {uid}')")
            await page_a.keyboard.press("a")
            await page_a.wait_for_selector("#alarm[hidden]", state="attached", timeout=5_000)
            await until(lambda: text_of(page_a, "#kpi"), lambda t: "≤60 s 100 %" in t)

            sent = time.monotonic()
            press = payload(seq=1, lat=38.0412, lon=114.5023, accuracy_m=25)
            await asyncio.to_thread(pub.publish_many, [(f"{settings.topic_root}/{dev}/sos", press)])
            await page_a.wait_for_selector("#queue .inc.urgent", timeout=3_000)
            on_screen_s = time.monotonic() - sent
            assert on_screen_s < 1.0, f"SOS took {on_screen_s:.2f} s to reach the screen"

            # Impossible to miss: the alarm is up, says what it is, and its clock runs.
            await page_a.wait_for_selector("#alarm:not([hidden])")
            assert "SOS" in await page_a.inner_text("#alarm")
            assert await page_a.get_attribute("body", "data-alarm-sound") == "playing"
            await until(
                lambda: text_of(page_a, "#announce"), lambda t: "New critical incident: SOS" in t
            )
            assert await page_a.get_attribute("body", "class") == "console alarming"
            # Once stored, the provisional row becomes the incident with the resident's name.
            rows = page_a.locator("#queue .inc:not(.provisional)")
            await until(rows.count, lambda n: n == 2)
            # The new, unacknowledged critical is on top of the one being worked.
            assert f"Wang Guilan {uid}" in await rows.nth(0).inner_text()
            assert f"Li Shufen {uid}" in await rows.nth(1).inner_text()
            assert await page_a.locator("#queue .inc.urgent").count() == 1
            await until(lambda: text_of(page_a, "#kpi"), lambda t: "≤60 s 50 %" in t)
            age_before = await page_a.inner_text("#alarm .age")
            await until(lambda: text_of(page_a, "#alarm .age"), lambda t: t != age_before)

            # Keyboard: k moves up to the new incident and opens its view.
            await page_a.keyboard.press("k")
            await page_a.wait_for_selector(f"#detail-h:text('Wang Guilan {uid}')")
            await page_a.wait_for_selector("#detail svg.chart")
            detail = await page_a.inner_text("#detail")
            for expected in (
                "Wang Guilan",
                "atrial fibrillation",
                "helper",
                "+86-community_helper",
                "Heart rate",
                "incident raised",
            ):
                assert expected in detail, expected
            assert await page_a.locator("#detail svg.map circle.here").count() == 1
            assert await page_a.locator("#detail svg.chart polyline.hr").count() == 1
            # The toast of the earlier acknowledgement would hide part of the picture.
            await page_a.evaluate("document.querySelector('#toast').classList.remove('show')")
            await page_a.wait_for_timeout(400)  # its fade-out
            await page_a.screenshot(path=str(shots / "console.png"), full_page=True)

            await page_a.keyboard.press("a")
            await page_a.wait_for_selector("#alarm[hidden]", state="attached", timeout=5_000)
            assert await page_a.get_attribute("body", "data-alarm-sound") == "off"
            await until(lambda: text_of(page_a, "#kpi"), lambda t: "≤60 s 100 %" in t)
            # Dispatch and a note through their dialogs, by keyboard.
            await page_a.keyboard.press("d")
            await page_a.check("#dispatch-dlg input[value=community_helper]")
            await page_a.click("#dispatch-dlg button[type=submit]")
            await page_a.wait_for_selector("#dispatch-dlg:not([open])", state="attached")
            await page_a.wait_for_selector("#detail .badge:text('help sent')")
            await page_a.keyboard.press("n")
            await page_a.fill("#note-dlg textarea", "Helper Li on the way, ETA 5 min")
            await page_a.click("#note-dlg button[type=submit]")
            await page_a.wait_for_selector("#detail q:text('Helper Li on the way')")

            # One switch turns every label Chinese, the incident view included.
            await page_a.select_option("#lang", "zh")
            assert "事件队列" in await page_a.inner_text("#queue-h")
            assert "老人信息" in await page_a.inner_text("#detail")
            assert await page_a.get_attribute("html", "lang") == "zh-CN"
            await page_a.screenshot(path=str(tmp_path / "console-zh.png"), full_page=True)
            await page_a.select_option("#lang", "en")
            await page_a.focus("#queue .inc")

            # District b heard nothing of it, all along.
            assert await page_b.locator("#queue .inc").count() == 0
            assert await page_b.get_attribute("#conn", "data-state") == "live"
            assert await page_b.locator("#alarm[hidden]").count() == 1

            await page_a.keyboard.press("r")
            await page_a.select_option("#resolve-dlg select", "real_emergency")
            await page_a.click("#resolve-dlg button[type=submit]")
            await until(lambda: page_a.locator("#queue .inc").count(), lambda n: n == 1)
            assert page_a.errors == [] and page_b.errors == []
    finally:
        pub.close()


async def test_console_shows_offline_and_reconnects(
    browser: Any, migrated_db: str, db: psycopg.AsyncConnection[Any], uid: str, spool_dir: Path
) -> None:
    """Kill the server under the page: it says so at once, then comes back by itself."""
    w = await build_town(db, uid)
    settings = settings_for(migrated_db, uid, spool_dir)
    async with serve(settings) as (_rt, base):
        page = await sign_in(browser, base, "/console", w.staff["disp_ca"].username)
        await page.wait_for_selector("#conn[data-state=live]", timeout=10_000)
        port = int(base.rsplit(":", 1)[1])
    await page.wait_for_selector("#offline:not([hidden])", timeout=5_000)
    assert "Offline" in await page.inner_text("#conn")
    async with serve(settings, port=port):
        await page.wait_for_selector("#conn[data-state=live]", timeout=20_000)
        assert await page.locator("#offline[hidden]").count() == 1


async def test_console_opened_later_marks_waiting_incidents_delivered(
    browser: Any, migrated_db: str, db: psycopg.AsyncConnection[Any], uid: str, spool_dir: Path
) -> None:
    """An incident raised while no console was open is "delivered" once a dispatcher's page
    shows it (the page confirms over its socket), with that dispatcher as the actor."""
    w = await build_town(db, uid)
    now = time.time()
    store = IncidentStore(metrics=AlertMetrics(CollectorRegistry()), cancel_window_s=60)
    rec = await store.record(db, det(w, DetectionKind.FALL, now - 3), now_ts=now)
    settings = settings_for(migrated_db, uid, spool_dir)
    async with serve(settings) as (_rt, base):
        page = await sign_in(browser, base, "/console", w.staff["disp_ca"].username)
        await page.locator("#queue .inc").wait_for(timeout=10_000)

        async def delivered() -> tuple[str, str | None]:
            cur = await db.execute(
                "SELECT i.state, (SELECT actor FROM incident_events e WHERE e.incident_id ="
                " i.incident_id AND e.action = 'delivered') FROM incidents i"
                " WHERE incident_id = %s",
                (rec.incident_id,),
            )
            row = await cur.fetchone()
            assert row is not None
            return row[0], row[1]

        state = await until(delivered, lambda r: r[0] == "delivered")
        assert state[1] == w.staff["disp_ca"].username
        assert page.errors == []


async def test_ops_dashboard(
    browser: Any,
    migrated_db: str,
    db: psycopg.AsyncConnection[Any],
    uid: str,
    spool_dir: Path,
    shots: Path,
) -> None:
    w = await build_town(db, uid)
    settings = settings_for(migrated_db, uid, spool_dir)
    pub = Publisher()
    try:
        async with serve(settings) as (rt, base):
            await rt.source.client.wait_connected(5)
            root = settings.topic_root
            await asyncio.to_thread(pub.publish_many,
                                    [(f"{root}/{w.devices['r2']}/sos", payload(seq=1))])  # fmt: skip
            page = await sign_in(browser, base, "/ops", w.staff["sup"].username)
            # A few seconds of traffic (and one bad message) so the sparklines have a shape.
            for i in range(8):
                items = [(f"{root}/{d}/vitals", vitals(seq=10 + i)) for d in w.devices.values()]
                items.append((f"{root}/{w.devices['r1']}/vitals", b"{not json"))
                await asyncio.to_thread(pub.publish_many, items)
                await asyncio.sleep(0.8)
            await page.wait_for_selector("#throughput svg.spark", timeout=10_000)
            # Its district shows the one open SOS (other tests share the database: count only
            # this district's row).
            district_b = w.path_b.split(".")[1]
            await until(
                lambda: text_of(page, "#incidents"),
                lambda t: re.search(rf"^{district_b}\s+1$", t, re.M) is not None,
                10,
            )
            text = await page.inner_text("main")
            for expected in ("vitals", "database: ok", "broker: ok", "online"):
                assert expected in text, expected
            assert await page.locator("#rejected .v").count() >= 1
            await page.select_option("#level", "community")
            await page.wait_for_selector("#kpis table")
            await page.screenshot(path=str(shots / "ops.png"), full_page=True)
            # A dispatcher may not open the dashboard.
            other = await sign_in(browser, base, "/ops", w.staff["disp_ca"].username)
            await other.wait_for_selector("#login .form-error:text('may not open')")
            assert page.errors == []
    finally:
        pub.close()


async def test_pages_renew_their_token_and_stay_signed_in_past_its_expiry(
    browser: Any, migrated_db: str, db: psycopg.AsyncConnection[Any], uid: str, spool_dir: Path
) -> None:
    """A shift is longer than a token: the console and the dashboard renew theirs
    (POST /api/v1/auth/refresh) before it expires and keep working, without a login dialog; a
    dispatcher retired meanwhile is shown the login dialog instead."""
    w = await build_town(db, uid)
    ttl_s = 30  # the shortest the settings allow
    settings = settings_for(migrated_db, uid, spool_dir, access_token_ttl_s=ttl_s)
    pub = Publisher()
    try:
        async with serve(settings) as (rt, base):
            await rt.source.client.wait_connected(5)
            console = await sign_in(browser, base, "/console", w.staff["disp_ca"].username)
            ops = await sign_in(browser, base, "/ops", w.staff["sup"].username)
            seen: dict[Any, list[tuple[float, str, int, str]]] = {console: [], ops: []}
            for page, log in seen.items():

                def record(resp: Any, log: list[tuple[float, str, int, str]] = log) -> None:
                    if "/api/" in resp.url:
                        auth = resp.request.headers.get("authorization", "")
                        log.append((time.monotonic(), resp.url, resp.status, auth))

                page.on("response", record)
            await console.wait_for_selector("#conn[data-state=live]", timeout=10_000)
            signed_in = time.monotonic()
            # Past the first token's expiry, with a margin for the dashboard's next poll.
            await asyncio.sleep(ttl_s + 5)

            for page, log in seen.items():
                refreshes = [e for e in log if e[1].endswith("/api/v1/auth/refresh")]
                assert refreshes and all(e[2] == 200 for e in refreshes), refreshes
                # Renewed a third of the lifetime before expiry, so well before it.
                assert refreshes[0][0] - signed_in < ttl_s - 5
                assert not [e for e in log if e[2] == 401], log
                assert await page.locator("#login[open]").count() == 0
            # The dashboard polled on after the first token expired, with the new token.
            late = [e for e in seen[ops] if e[0] - signed_in > ttl_s + 1]
            assert late and all(e[2] == 200 for e in late)
            assert late[-1][3] != seen[ops][0][3]

            # The console still receives and reads: an SOS now reaches its queue (its socket
            # stayed open; the queue is re-read with the renewed token).
            root = settings.topic_root
            await asyncio.to_thread(
                pub.publish_many, [(f"{root}/{w.devices['r1']}/sos", payload(seq=1))]
            )
            await console.locator("#queue .inc:not(.provisional)").wait_for(timeout=5_000)
            assert await console.get_attribute("#conn", "data-state") == "live"
            assert console.errors == [] and ops.errors == []

            # Retired mid-shift: the socket is closed and the login dialog comes up.
            await db.execute(
                "UPDATE staff_users SET retired_at = now() WHERE user_id = %s",
                (w.staff["disp_ca"].user_id,),
            )
            await console.wait_for_selector("#login[open]", timeout=10_000)
            # Chromium logs the refused request itself; the page's code raised nothing.
            assert all("status of 401" in e for e in console.errors), console.errors
    finally:
        pub.close()
