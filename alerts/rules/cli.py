"""``carecall news2``: score a CSV of observations with NEWS2.

Reads rows with the columns in ``INPUT_COLUMNS`` (others are passed through), writes them
back with ``news2_total`` and ``news2_risk`` added, to stdout or ``--out``. A row that cannot
be scored is still written, with both columns empty, and its error goes to stderr as
``row N (line L): field: reason``; the exit code is then 1. Scoring itself is the numpy
scorer, one call for the whole file.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Final, TextIO

import numpy as np

from alerts.rules.news2 import Acvpu, News2InputError, RiskBand, check_plausible
from alerts.rules.news2 import news2_score_arrays as score_arrays

INPUT_COLUMNS: Final = (
    "resp_rate_per_min",
    "spo2_pct",
    "spo2_scale",
    "on_supplemental_oxygen",
    "systolic_bp_mmhg",
    "pulse_per_min",
    "acvpu",
    "temp_c",
)
OUTPUT_COLUMNS: Final = ("news2_total", "news2_risk")
_NUMERIC: Final = ("resp_rate_per_min", "spo2_pct", "systolic_bp_mmhg", "pulse_per_min", "temp_c")
_TRUE: Final = frozenset({"true", "t", "yes", "y", "1", "on", "oxygen", "o2"})
_FALSE: Final = frozenset({"false", "f", "no", "n", "0", "off", "air"})


def parse_bool(field: str, text: str) -> bool:
    """true/false, yes/no, 1/0, on/off (any case); raises ``News2InputError`` otherwise."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise News2InputError(field, f"expected true/false, yes/no or 1/0, got {text!r}")


def _parse_row(row: dict[str, str | None]) -> tuple[list[float], int, bool, int]:
    """(numeric values in ``_NUMERIC`` order, spo2 scale, oxygen, ACVPU code)."""
    for column in INPUT_COLUMNS:
        if row.get(column) is None or not str(row[column]).strip():
            raise News2InputError(column, "missing")
    cells = {k: str(v).strip() for k, v in row.items() if k is not None and v is not None}
    numbers = []
    for column in _NUMERIC:
        try:
            value = float(cells[column])
        except ValueError:
            raise News2InputError(column, f"not a number: {cells[column]!r}") from None
        check_plausible(column, value)
        numbers.append(value)
    scale_text = cells["spo2_scale"]
    if scale_text not in {"1", "2", "1.0", "2.0"}:
        raise News2InputError("spo2_scale", f"must be 1 or 2, got {scale_text!r}")
    scale = int(float(scale_text))
    oxygen = parse_bool("on_supplemental_oxygen", cells["on_supplemental_oxygen"])
    try:
        acvpu = Acvpu(cells["acvpu"].upper())
    except ValueError:
        raise News2InputError(
            "acvpu", f"expected one of A, C, V, P, U, got {cells['acvpu']!r}"
        ) from None
    return numbers, scale, oxygen, acvpu.code


def score_csv(source: TextIO, sink: TextIO, errors: TextIO) -> int:
    """Score every row of ``source`` into ``sink``; returns the number of bad rows."""
    reader = csv.DictReader(source)
    header = list(reader.fieldnames or [])
    missing = [c for c in INPUT_COLUMNS if c not in header]
    if missing:
        print(f"news2: missing column(s): {', '.join(missing)}", file=errors)
        return 1
    rows: list[dict[str, str | None]] = []
    parsed: list[tuple[list[float], int, bool, int] | None] = []
    bad = 0
    for row_number, row in enumerate(reader, start=1):
        rows.append(row)
        try:
            parsed.append(_parse_row(row))
        except News2InputError as exc:
            bad += 1
            parsed.append(None)
            print(f"news2: row {row_number} (line {reader.line_num}): {exc}", file=errors)

    good = [p for p in parsed if p is not None]
    if good:
        numbers = np.array([p[0] for p in good])
        result = score_arrays(
            resp_rate_per_min=numbers[:, 0],
            spo2_pct=numbers[:, 1],
            systolic_bp_mmhg=numbers[:, 2],
            pulse_per_min=numbers[:, 3],
            temp_c=numbers[:, 4],
            spo2_scale=[p[1] for p in good],
            on_supplemental_oxygen=[p[2] for p in good],
            acvpu_code=[p[3] for p in good],
        )
        totals = iter(result.total.tolist())
        bands = iter(result.band.tolist())

    writer = csv.DictWriter(
        sink,
        fieldnames=[*header, *(c for c in OUTPUT_COLUMNS if c not in header)],
        lineterminator="\n",
    )
    writer.writeheader()
    for row, ok in zip(rows, parsed, strict=True):
        out = {k: v for k, v in row.items() if k is not None}
        if ok is None:
            out.update(news2_total="", news2_risk="")
        else:
            out.update(
                news2_total=str(next(totals)), news2_risk=RiskBand.from_code(next(bands)).value
            )
        writer.writerow(out)
    return bad


def news2_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``carecall news2 --csv FILE [--out FILE]``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="carecall news2",
        description="Add NEWS2 (RCP 2017) aggregate score and risk band to a CSV of observations.",
    )
    parser.add_argument("--csv", required=True, help="input CSV ('-' for stdin)")
    parser.add_argument("--out", help="output CSV (default: stdout)")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        try:
            source = (
                sys.stdin
                if args.csv == "-"
                else stack.enter_context(open(args.csv, encoding="utf-8-sig", newline=""))
            )
            sink = (
                stack.enter_context(open(args.out, "w", encoding="utf-8", newline=""))
                if args.out
                else sys.stdout
            )
        except OSError as exc:
            print(f"news2: {exc.filename}: {exc.strerror}", file=sys.stderr)
            return 1
        bad = score_csv(source, sink, sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(news2_main())
