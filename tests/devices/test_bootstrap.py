from __future__ import annotations

import psycopg
import pytest

from devices.auth import verify_password
from devices.bootstrap import create_staff_main


def test_create_then_reset_the_first_admin(
    migrated_db: str, uid: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"admin-{uid}"
    monkeypatch.setenv("CARECALL_NEW_STAFF_PASSWORD", "first-password-1")
    argv = ["--username", name, "--scope", f"c{uid}", "--database-url", migrated_db]
    assert create_staff_main(argv) == 0
    assert "created admin" in capsys.readouterr().out
    monkeypatch.setenv("CARECALL_NEW_STAFF_PASSWORD", "second-password-2")
    assert create_staff_main([*argv, "--role", "supervisor"]) == 0
    assert "reset supervisor" in capsys.readouterr().out
    with psycopg.connect(migrated_db) as conn:
        row = conn.execute(
            "SELECT role, scope_path::text, password_hash FROM staff_users WHERE username = %s",
            (name,),
        ).fetchone()
        actions = [
            r[0]
            for r in conn.execute(
                "SELECT action FROM audit_log WHERE detail->>'username' = %s ORDER BY audit_id",
                (name,),
            )
        ]
    assert row is not None and row[:2] == ("supervisor", f"c{uid}")
    assert verify_password("second-password-2", row[2])
    assert not verify_password("first-password-1", row[2])
    assert actions == ["create_staff", "reset_staff"]


def test_refuses_short_passwords_and_unknown_roles(
    migrated_db: str, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARECALL_NEW_STAFF_PASSWORD", "short")
    assert (
        create_staff_main(["--username", f"x-{uid}", "--scope", "c", "--database-url", migrated_db])
        == 1
    )
    with pytest.raises(SystemExit):
        create_staff_main(
            [
                "--username",
                f"y-{uid}",
                "--scope",
                "c",
                "--role",
                "king",
                "--database-url",
                migrated_db,
            ]
        )
