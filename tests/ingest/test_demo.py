"""`carecall demo` (make demo): server up, demo town provisioned, simulator publishing, logins
work and are scoped, and Ctrl-C stops everything cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psycopg
import pytest

from tests.fixtures.services import REPO, free_port, scratch_database


def _token(port: int, username: str, password: str) -> str:
    body = urllib.parse.urlencode({"username": username, "password": password}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/auth/token", data=body)
    with urllib.request.urlopen(req, timeout=5) as r:
        return str(json.loads(r.read())["access_token"])


def _get(port: int, path: str, token: str) -> object:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_demo_runs_and_stops_cleanly(tmp_path: Path, uid: str) -> None:
    port = free_port()
    with scratch_database() as db_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARECALL_")}
        env.update(
            {
                "CARECALL_DATABASE_URL": db_url,
                "CARECALL_HTTP_PORT": str(port),
                "CARECALL_SPOOL_DIR": str(tmp_path / "spool"),
                "CARECALL_TOPIC_ROOT": f"t{uid}/carecall/v1",
                "CARECALL_MQTT_CLIENT_ID": f"demo-{uid}",
            }
        )
        log = tmp_path / "demo.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ingest", "demo", "--residents", "3", "--speed", "600"],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 90
            while "CareCall demo is running" not in log.read_text(errors="replace"):
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.3)
            east = _token(port, "dispatcher-east", "carecall-east")
            residents = _get(port, "/api/v1/residents?limit=50", east)
            assert isinstance(residents, dict)
            names = {r["community_id"][:6] for r in residents["items"]}
            assert names == {"demo_a"}, names  # the East dispatcher sees only East
            deadline = time.monotonic() + 30
            stored = 0
            while time.monotonic() < deadline and stored == 0:
                with psycopg.connect(db_url) as conn:
                    stored = conn.execute("SELECT count(*) FROM vitals").fetchone()[0]  # type: ignore[index]
                time.sleep(0.5)
            assert stored > 0
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                proc.kill()
                pytest.fail("the demo did not stop within 45 s of Ctrl-C")
        text = log.read_text(errors="replace")
        assert "Traceback" not in text
        # As `carecall serve`: the bridge ran in an ingest worker, stopped with the demo.
        found = re.search(r"ingest worker started \(pid (\d+)", text)
        assert found, text[-3000:]
        assert not Path(f"/proc/{found.group(1)}").exists()
