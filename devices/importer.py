"""Bulk import of residents and devices from CSV (``carecall import-residents|import-devices``).

Each row is checked, then inserted in its own savepoint: a bad row is reported (row number,
column, reason) and skipped, the good rows go in. The exit code is 1 when any row failed, so
a script notices. Every stored row is audited as done by ``system`` (detail: the file and the
row number). Formats: docs/registry.md.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import psycopg
from psycopg.types.json import Jsonb

from devices.schemas import AREA_ID
from devices.schemas import DEVICE_ID as DEVICE_ID_RE

RESIDENT_COLUMNS = (
    "full_name",
    "birth_year",
    "sex",
    "phone",
    "address",
    "community_id",
    "medical_notes",
    "spo2_scale",
    "waking_start",
    "waking_end",
)
MAX_CONTACTS = 5
CONTACT_ROLES = ("family", "community_helper", "grid_worker", "doctor", "neighbour", "other")
DEVICE_TYPES = (
    "watch",
    "pendant",
    "belt",
    "chest_band",
    "home_gateway",
    "door_sensor",
    "motion_sensor",
    "bed_sensor",
    "smoke_sensor",
    "gas_sensor",
    "water_sensor",
)
POSITIONS = ("waist", "wrist", "chest", "pendant", "home")
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/carecall"


class RowError(Exception):
    """One cell (or the row as a whole) is unacceptable."""

    def __init__(self, column: str, reason: str) -> None:
        super().__init__(f"{column}: {reason}")
        self.column = column
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RowProblem:
    row: int  # line number in the file: the header is line 1
    column: str
    reason: str


@dataclass(frozen=True, slots=True)
class ImportReport:
    stored: int
    problems: list[RowProblem]

    @property
    def failed_rows(self) -> int:
        return len({p.row for p in self.problems})


# -- cell parsing ------------------------------------------------------------------------------


def _text(row: dict[str, str], col: str, *, required: bool = False, max_len: int = 500) -> str:
    value = (row.get(col) or "").strip()
    if required and not value:
        raise RowError(col, "required")
    if len(value) > max_len:
        raise RowError(col, f"longer than {max_len} characters")
    return value


def _int(row: dict[str, str], col: str, lo: int, hi: int) -> int | None:
    value = _text(row, col)
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        raise RowError(col, f"not a whole number: {value!r}") from None
    if not lo <= n <= hi:
        raise RowError(col, f"{n} is outside {lo}..{hi}")
    return n


def _choice(row: dict[str, str], col: str, allowed: tuple[str, ...]) -> str | None:
    value = _text(row, col).lower()
    if value and value not in allowed:
        raise RowError(col, f"{value!r} is not one of {', '.join(allowed)}")
    return value or None


def _time(row: dict[str, str], col: str, default: dt.time) -> dt.time:
    value = _text(row, col)
    if not value:
        return default
    try:
        return dt.time.fromisoformat(value)
    except ValueError:
        raise RowError(col, f"not a time of day (HH:MM): {value!r}") from None


def parse_resident(row: dict[str, str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The resident's columns and its contacts (contact1_..contactN_), checked."""
    community = _text(row, "community_id", required=True)
    if not re.match(AREA_ID, community):
        raise RowError("community_id", f"not an area id: {community!r}")
    resident = {
        "full_name": _text(row, "full_name", required=True, max_len=200),
        "birth_year": _int(row, "birth_year", 1890, 2100),
        "sex": _choice(row, "sex", ("female", "male", "other")),
        "phone": _text(row, "phone", max_len=40) or None,
        "address": _text(row, "address"),
        "community_id": community,
        "medical_notes": _text(row, "medical_notes", max_len=5000),
        "spo2_scale": _int(row, "spo2_scale", 1, 2) or 1,
        "waking_start": _time(row, "waking_start", dt.time(7, 0)),
        "waking_end": _time(row, "waking_end", dt.time(21, 30)),
    }
    contacts = []
    for i in range(1, MAX_CONTACTS + 1):
        prefix = f"contact{i}_"
        name = _text(row, prefix + "name", max_len=200)
        phone = _text(row, prefix + "phone", max_len=40)
        role = _choice(row, prefix + "role", CONTACT_ROLES)
        if not (name or phone or role):
            continue
        if not name:
            raise RowError(prefix + "name", "required when the contact has other fields")
        if len(phone) < 3:
            raise RowError(prefix + "phone", "required (at least 3 characters)")
        contacts.append({"priority": i, "role": role or "family", "name": name, "phone": phone})
    return resident, contacts


def parse_device(row: dict[str, str]) -> dict[str, Any]:
    device_id = _text(row, "device_id", required=True)
    if not re.match(DEVICE_ID_RE, device_id):
        raise RowError("device_id", f"not a valid device id: {device_id!r}")
    device_type = _choice(row, "device_type", DEVICE_TYPES)
    if device_type is None:
        raise RowError("device_type", "required")
    resident_id = _int(row, "resident_id", 1, 2**62)
    full_name = _text(row, "resident_full_name", max_len=200)
    community = _text(row, "community_id")
    if resident_id is None and bool(full_name) != bool(community):
        raise RowError(
            "resident_full_name" if not full_name else "community_id",
            "give resident_id, or both resident_full_name and community_id",
        )
    return {
        "device_id": device_id,
        "device_type": device_type,
        "model": _text(row, "model", max_len=100) or None,
        "firmware": _text(row, "firmware", max_len=100) or None,
        "resident_id": resident_id,
        "resident_full_name": full_name or None,
        "community_id": community or None,
        "position": _choice(row, "position", POSITIONS),
    }


# -- storing -----------------------------------------------------------------------------------


def _store_resident(cur: psycopg.Cursor[Any], parsed: Any) -> str:
    resident, contacts = parsed
    cur.execute(
        "SELECT 1 FROM areas WHERE area_id = %s AND retired_at IS NULL", (resident["community_id"],)
    )
    if cur.fetchone() is None:
        raise RowError("community_id", f"no such community: {resident['community_id']!r}")
    cur.execute(
        "INSERT INTO residents (full_name, birth_year, sex, phone, address, community_id,"
        " medical_notes, spo2_scale, waking_start, waking_end) VALUES (%(full_name)s,"
        " %(birth_year)s, %(sex)s, %(phone)s, %(address)s, %(community_id)s, %(medical_notes)s,"
        " %(spo2_scale)s, %(waking_start)s, %(waking_end)s) RETURNING resident_id, area_path::text",
        resident,
    )
    row = cur.fetchone()
    assert row is not None
    resident_id, _ = row
    for c in contacts:
        cur.execute(
            "INSERT INTO contacts (resident_id, priority, role, name, phone)"
            " VALUES (%s, %s, %s, %s, %s)",
            (resident_id, c["priority"], c["role"], c["name"], c["phone"]),
        )
    return str(resident_id)


def _store_device(cur: psycopg.Cursor[Any], d: Any) -> str:
    if d["resident_id"] is None and d["resident_full_name"]:
        cur.execute(
            "SELECT resident_id FROM residents WHERE full_name = %s AND community_id = %s"
            " AND retired_at IS NULL",
            (d["resident_full_name"], d["community_id"]),
        )
        found = cur.fetchall()
        if not found:
            raise RowError("resident_full_name", "no such resident in that community")
        if len(found) > 1:
            raise RowError("resident_full_name", "ambiguous: several residents have that name")
        d = {**d, "resident_id": found[0][0]}
    elif d["resident_id"] is not None:
        cur.execute(
            "SELECT 1 FROM residents WHERE resident_id = %s AND retired_at IS NULL",
            (d["resident_id"],),
        )
        if cur.fetchone() is None:
            raise RowError("resident_id", f"no such resident: {d['resident_id']}")
    cur.execute("SELECT 1 FROM devices WHERE device_id = %s", (d["device_id"],))
    if cur.fetchone() is not None:
        raise RowError("device_id", "already registered")
    cur.execute(
        "INSERT INTO devices (device_id, device_type, model, firmware, resident_id, position)"
        " VALUES (%(device_id)s, %(device_type)s, %(model)s, %(firmware)s, %(resident_id)s,"
        " %(position)s)",
        d,
    )
    return str(d["device_id"])


def _progress(done: int, total: int, out: TextIO, width: int = 30) -> None:
    filled = width * done // max(total, 1)
    out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done == total:
        out.write("\n")
    out.flush()


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        for row in reader:
            yield reader.line_num, row


def run_import(
    conninfo: str,
    path: Path,
    *,
    kind: str,
    progress: TextIO | None = None,
) -> ImportReport:
    """Import ``path``; ``kind`` is ``residents`` or ``devices``."""
    parse: Callable[[dict[str, str]], Any]
    store: Callable[[psycopg.Cursor[Any], Any], str]
    if kind == "residents":
        parse, store, required, record_type = (
            parse_resident, _store_resident, ("full_name", "community_id"), "resident"
        )  # fmt: skip
    else:
        parse, store, required, record_type = (
            parse_device, _store_device, ("device_id", "device_type"), "device"
        )  # fmt: skip
    rows = list(_rows(path))
    problems: list[RowProblem] = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    missing = [c for c in required if c not in header]
    if missing:
        return ImportReport(
            0, [RowProblem(1, c, "column missing from the header") for c in missing]
        )
    stored = 0
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        for i, (line, row) in enumerate(rows, 1):
            try:
                parsed = parse(row)
                with conn.transaction():
                    record_id = store(cur, parsed)
                    cur.execute(
                        "INSERT INTO audit_log (actor, action, record_type, record_id, detail)"
                        " VALUES ('system', %s, %s, %s, %s)",
                        (
                            f"import_{record_type}",
                            record_type,
                            record_id,
                            Jsonb({"file": path.name, "row": line}),
                        ),
                    )
                stored += 1
            except RowError as exc:
                problems.append(RowProblem(line, exc.column, exc.reason))
            except psycopg.errors.IntegrityError as exc:
                problems.append(RowProblem(line, "*", exc.diag.message_primary or str(exc)))
            if progress is not None and (i % 50 == 0 or i == len(rows)):
                _progress(i, len(rows), progress)
        conn.commit()
    return ImportReport(stored, problems)


def _main(argv: list[str], kind: str) -> int:
    parser = argparse.ArgumentParser(
        prog=f"carecall import-{kind}", description=f"Import {kind} from a CSV file."
    )
    parser.add_argument("file", type=Path)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("CARECALL_DATABASE_URL") or DEFAULT_DATABASE_URL,
        help="default: $CARECALL_DATABASE_URL, else the local server",
    )
    args = parser.parse_args(argv)
    if not args.file.is_file():
        print(f"carecall: no such file: {args.file}", file=sys.stderr)
        return 2
    report = run_import(args.database_url, args.file, kind=kind, progress=sys.stderr)
    for p in report.problems:
        print(f"row {p.row}: {p.column}: {p.reason}", file=sys.stderr)
    print(
        f"{kind}: {report.stored} stored, {report.failed_rows} row(s) refused",
        file=sys.stderr,
    )
    return 1 if report.problems else 0


def import_residents_main(argv: list[str]) -> int:
    return _main(argv, "residents")


def import_devices_main(argv: list[str]) -> int:
    return _main(argv, "devices")
