"""The pages and the summary feed over plain HTTP (no browser needed)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import psycopg

from ingest.web.feature import STATIC_DIR
from tests.fixtures.services import Publisher, eventually
from tests.ingest.helpers import payload, vitals
from tests.web.server import build_town, serve, settings_for

SVG_NS = "http://www.w3.org/2000/svg"


def test_pages_load_nothing_from_elsewhere() -> None:
    """No CDN, no web fonts, no map tiles: the only absolute URL allowed is the SVG namespace."""
    for f in STATIC_DIR.iterdir():
        text = f.read_text(encoding="utf-8").replace(SVG_NS, "")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), f.name
        assert "<script>" not in text and " style=" not in text, f.name  # CSP: no inline


def test_static_files_ship_in_the_wheel() -> None:
    """pyproject's package-data carries *.html, *.js and *.css; anything else would be lost."""
    assert {f.suffix for f in STATIC_DIR.iterdir()} <= {".html", ".js", ".css"}


def test_every_label_is_in_the_one_table_in_both_languages() -> None:
    table = (STATIC_DIR / "i18n.js").read_text(encoding="utf-8")
    en_part, zh_part = table.split("\n  zh: {", 1)
    en = set(re.findall(r'^\s+"([a-z0-9_.]+)":', en_part, re.M))
    zh = set(re.findall(r'^\s+"([a-z0-9_.]+)":', zh_part, re.M))
    assert en == zh, f"only en: {sorted(en - zh)}, only zh: {sorted(zh - en)}"
    used: set[str] = set()
    for f in STATIC_DIR.glob("*.html"):
        used |= set(re.findall(r'data-i18n(?:-label|-title)?="([^"]+)"', f.read_text("utf-8")))
    for f in STATIC_DIR.glob("*.js"):
        used |= set(re.findall(r'\bt\("([a-z0-9_.]+)"', f.read_text("utf-8")))
    assert used and used <= en, f"missing: {sorted(used - en)}"


async def test_pages_and_summary_are_served_and_scoped(
    migrated_db: str, db: psycopg.AsyncConnection[Any], uid: str, spool_dir: Path
) -> None:
    w = await build_town(db, uid)
    settings = settings_for(migrated_db, uid, spool_dir)
    pub = Publisher()
    try:
        async with serve(settings) as (rt, base), httpx.AsyncClient(base_url=base) as http:
            await rt.source.client.wait_connected(5)
            for path in ("/console", "/ops"):
                r = await http.get(path)
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
                assert "default-src 'self'" in r.headers["content-security-policy"]
            for name in ("console.js", "ops.js", "common.js", "i18n.js", "style.css"):
                r = await http.get(f"/web/{name}")
                assert r.status_code == 200 and r.headers["cache-control"] == "no-cache", name
                again = await http.get(f"/web/{name}", headers={"If-None-Match": r.headers["etag"]})
                assert again.status_code == 304
            assert (await http.get("/web/../feature.py")).status_code == 404

            root = settings.topic_root
            items = [(f"{root}/{w.devices['r1']}/sos", payload(seq=1))]
            items += [(f"{root}/{w.devices[r]}/vitals", vitals(seq=5)) for r in ("r1", "r2")]
            await asyncio.to_thread(pub.publish_many, items)

            async def opened() -> bool:
                cur = await db.execute(
                    "SELECT count(*) FROM incidents WHERE resident_id = %s",
                    (w.residents["r1"],),
                )
                row = await cur.fetchone()
                return bool(row and row[0])

            await eventually(opened)
            await asyncio.sleep(2.5)  # at least one sampling interval after the traffic

            assert (await http.get("/api/v1/ops/summary")).status_code == 401
            r = await http.get("/api/v1/ops/summary", headers=w.headers("disp_ca"))
            assert r.status_code == 403
            sup = (await http.get("/api/v1/ops/summary", headers=w.headers("sup"))).json()
            # City-level staff also see unplaced incidents ("" district) that other tests in
            # the shared database leave behind; the placed ones are exactly this world's.
            placed = [d for d in sup["incidents"]["by_district"] if d["district"]]
            (district,) = placed
            assert district["district"] == ".".join(w.path_a.split(".")[:2])
            assert district["by_severity"] == {"critical": 1}
            assert sup["incidents"]["by_severity"]["critical"] >= 1
            devices = sup["devices"]
            assert (devices["total"], devices["online"], devices["never_seen"]) == (3, 2, 1)
            assert sup["kpis"]["rows"][0]["alarms"] == 1
            assert sum(p["received_per_s"].get("vitals", 0) for p in sup["history"]) > 0
            assert sup["history"][-1]["db_up"] == 1
            # An operator of district b sees b's device, none of a's incidents.
            oper = (await http.get("/api/v1/ops/summary", headers=w.headers("oper_db"))).json()
            assert oper["incidents"]["by_severity"] == {}
            assert oper["devices"]["total"] >= 1
            assert oper["kpis"]["rows"] == []
    finally:
        pub.close()
