"""CSV bulk import: bad rows are reported with row and column, the good rows go in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

from devices.importer import RowProblem, run_import
from tests.devices.conftest import World

RESIDENT_HEADER = (
    "full_name,birth_year,sex,phone,address,community_id,medical_notes,spo2_scale,"
    "waking_start,waking_end,contact1_role,contact1_name,contact1_phone,"
    "contact2_role,contact2_name,contact2_phone\n"
)


def test_import_residents_reports_bad_rows_and_stores_good_ones(
    migrated_db: str, world: World, sync_db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    c = world.a.community_id
    u = world.uid
    csv_file = tmp_path / "residents.csv"
    csv_file.write_text(
        RESIDENT_HEADER
        + f"Wang Fang {u},1941,female,139,Bldg 3,{c},COPD,2,06:00,21:00,family,Son,1380001,"
        "community_helper,Helper,1380002\n"
        + f"Bad Year {u},1850,female,,,{c},,,,,,,,,,\n"  # row 3: birth_year out of range
        + f"No Community {u},1940,male,,,nowhere{u},,,,,,,,,,\n"  # row 4: unknown community
        + f"Bad Contact {u},1940,male,,,{c},,,,,family,,1380003,,,\n"  # row 5: contact name
        + f"Liu Yang {u},,,,,{c},,,,,,,,,,\n"
        + f"Bad Time {u},1940,,,,{c},,,7am,,,,,,,\n"  # row 7: waking_start
        + f"Bad Scale {u},1940,,,,{c},,3,,,,,,,,\n"  # row 8: spo2_scale
    )
    env = {**os.environ, "CARECALL_DATABASE_URL": migrated_db}
    done = subprocess.run(
        [sys.executable, "-m", "ingest", "import-residents", str(csv_file)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    err = done.stderr
    assert "[" in err and "6/7" not in err and "7/7" in err  # the progress bar
    assert "row 3: birth_year: 1850 is outside 1890..2100" in err
    assert f"row 4: community_id: no such community: 'nowhere{u}'" in err
    assert "row 5: contact1_name: required" in err
    assert "row 7: waking_start: not a time of day" in err
    assert "row 8: spo2_scale: 3 is outside 1..2" in err
    assert "2 stored, 5 row(s) refused" in err
    rows = sync_db.execute(
        "SELECT full_name, spo2_scale, waking_start::text, area_path::text,"
        " (SELECT array_agg(name ORDER BY priority) FROM contacts t"
        "  WHERE t.resident_id = r.resident_id)"
        " FROM residents r WHERE full_name LIKE %s AND full_name NOT LIKE 'Resident %%'"
        " ORDER BY full_name",
        (f"% {u}",),
    ).fetchall()
    assert [r[0] for r in rows] == [f"Liu Yang {u}", f"Wang Fang {u}"]
    wang = rows[1]
    assert wang[1:3] == (2, "06:00:00") and wang[3].endswith(c) and wang[4] == ["Son", "Helper"]
    audited = sync_db.execute(
        "SELECT count(*) FROM audit_log WHERE action = 'import_resident'"
        " AND detail->>'file' = 'residents.csv' AND record_id IN (SELECT resident_id::text"
        " FROM residents WHERE full_name LIKE %s)",
        (f"% {u}",),
    ).fetchone()
    assert audited == (2,)


def test_import_devices(
    migrated_db: str, world: World, sync_db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    u = world.uid
    csv_file = tmp_path / "devices.csv"
    name_b = f"Resident B {u}"
    csv_file.write_text(
        "device_id,device_type,model,firmware,resident_id,resident_full_name,community_id,"
        "position\n"
        f"i1-{u},watch,W1,1.0,{world.a.resident_id},,,wrist\n"
        f"i2-{u},pendant,P1,,,{name_b},{world.b.community_id},pendant\n"
        f"i3-{u},toaster,,,,,,\n"  # row 4: device_type
        f"i4-{u},watch,,,,Nobody,{world.b.community_id},\n"  # row 5: no such resident
        f"{world.a.device_id},watch,,,,,,\n"  # row 6: already registered
        f"bad id {u},watch,,,,,,\n"  # row 7: device_id
        f"i5-{u},belt,,,{world.a.resident_id},,,elbow\n"  # row 8: position
        f"i6-{u},smoke_sensor,,,,,,\n"  # a spare in stock
    )
    report = run_import(migrated_db, csv_file, kind="devices")
    assert report.stored == 3
    assert [(p.row, p.column) for p in report.problems] == [
        (4, "device_type"),
        (5, "resident_full_name"),
        (6, "device_id"),
        (7, "device_id"),
        (8, "position"),
    ]
    assert report.problems[2] == RowProblem(6, "device_id", "already registered")
    rows = dict(
        sync_db.execute(
            "SELECT device_id, area_path::text FROM devices WHERE device_id LIKE %s",
            (f"i_-{u}",),
        ).fetchall()
    )
    assert rows == {
        f"i1-{u}": f"{world.a.path}.{world.a.street_id}.{world.a.community_id}",
        f"i2-{u}": f"{world.b.path}.{world.b.street_id}.{world.b.community_id}",
        f"i6-{u}": None,
    }


def test_missing_header_column_is_one_clear_error(migrated_db: str, tmp_path: Path) -> None:
    csv_file = tmp_path / "devices.csv"
    csv_file.write_text("id,type\nx,watch\n")
    report = run_import(migrated_db, csv_file, kind="devices")
    assert report.stored == 0
    assert report.problems == [
        RowProblem(1, "device_id", "column missing from the header"),
        RowProblem(1, "device_type", "column missing from the header"),
    ]
