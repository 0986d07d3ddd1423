"""NEWS2 against the RCP 2017 chart: every band edge of every parameter, bands, the CSV CLI."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from alerts.rules.cli import news2_main, parse_bool, score_csv
from alerts.rules.news2 import (
    PARAMETERS,
    RESPONSE,
    RESPONSE_SCORE_0,
    Acvpu,
    News2Input,
    News2InputError,
    RiskBand,
    news2_score,
    news2_score_arrays,
)

# All parameters score 0 here; each case changes one field.
NORMAL = News2Input(
    resp_rate_per_min=16,
    spo2_pct=97,
    systolic_bp_mmhg=120,
    pulse_per_min=70,
    temp_c=37.0,
    acvpu=Acvpu.A,
    on_supplemental_oxygen=False,
    spo2_scale=1,
)


def _scores(obs: News2Input) -> dict[str, int]:
    return news2_score(obs).scores


def _array_scores(obs: News2Input) -> dict[str, int]:
    result = news2_score_arrays(
        resp_rate_per_min=[obs.resp_rate_per_min],
        spo2_pct=[obs.spo2_pct],
        spo2_scale=[obs.spo2_scale],
        on_supplemental_oxygen=[obs.on_supplemental_oxygen],
        systolic_bp_mmhg=[obs.systolic_bp_mmhg],
        pulse_per_min=[obs.pulse_per_min],
        acvpu_code=[Acvpu(obs.acvpu).code],
        temp_c=[obs.temp_c],
    )
    return dict(zip(PARAMETERS, result.scores[0].tolist(), strict=True))


EDGES = [
    # (field, value, parameter scored, expected score)
    *[
        ("resp_rate_per_min", v, "resp_rate", s)
        for v, s in [(0, 3), (8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2),
                     (25, 3), (60, 3)]
    ],
    *[
        ("spo2_pct", v, "spo2", s)
        for v, s in [(70, 3), (91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0)]
    ],
    *[
        ("systolic_bp_mmhg", v, "systolic_bp", s)
        for v, s in [(60, 3), (90, 3), (91, 2), (100, 2), (101, 1), (110, 1), (111, 0),
                     (219, 0), (220, 3), (260, 3)]
    ],
    *[
        ("pulse_per_min", v, "pulse", s)
        for v, s in [(30, 3), (40, 3), (41, 1), (50, 1), (51, 0), (90, 0), (91, 1), (110, 1),
                     (111, 2), (130, 2), (131, 3), (180, 3)]
    ],
    *[
        ("temp_c", v, "temperature", s)
        for v, s in [(33.0, 3), (35.0, 3), (35.1, 1), (36.0, 1), (36.1, 0), (38.0, 0),
                     (38.1, 1), (39.0, 1), (39.1, 2), (41.0, 2)]
    ],
]  # fmt: skip


@pytest.mark.parametrize(("field", "value", "parameter", "expected"), EDGES)
def test_every_band_edge(field: str, value: float, parameter: str, expected: int) -> None:
    obs = replace(NORMAL, **{field: value})  # type: ignore[arg-type]
    scores = _scores(obs)
    assert scores[parameter] == expected
    assert sum(scores.values()) == expected  # nothing else moved
    assert _array_scores(obs) == scores


SCALE2 = [
    # (spo2_pct, on oxygen, expected SpO2 score on scale 2)
    *[(v, o2, s) for o2 in (False, True) for v, s in [(80, 3), (83, 3), (84, 2), (85, 2),
                                                       (86, 1), (87, 1), (88, 0), (92, 0)]],
    (93, False, 0), (96, False, 0), (97, False, 0), (100, False, 0),
    (93, True, 1), (94, True, 1), (95, True, 2), (96, True, 2), (97, True, 3), (100, True, 3),
]  # fmt: skip


@pytest.mark.parametrize(("spo2", "on_oxygen", "expected"), SCALE2)
def test_spo2_scale_2(spo2: float, on_oxygen: bool, expected: int) -> None:
    obs = replace(NORMAL, spo2_pct=spo2, spo2_scale=2, on_supplemental_oxygen=on_oxygen)
    scores = _scores(obs)
    assert scores["spo2"] == expected
    assert scores["air_or_oxygen"] == (2 if on_oxygen else 0)
    assert _array_scores(obs) == scores


@pytest.mark.parametrize(("on_oxygen", "expected"), [(False, 0), (True, 2)])
def test_air_or_oxygen(on_oxygen: bool, expected: int) -> None:
    # On scale 1, oxygen changes only its own row, never the SpO2 row.
    scores = _scores(replace(NORMAL, on_supplemental_oxygen=on_oxygen))
    assert scores["air_or_oxygen"] == expected
    assert scores["spo2"] == 0


@pytest.mark.parametrize(("acvpu", "expected"), [("A", 0), ("C", 3), ("V", 3), ("P", 3), ("U", 3)])
def test_consciousness(acvpu: str, expected: int) -> None:
    obs = replace(NORMAL, acvpu=Acvpu(acvpu))
    assert _scores(obs)["consciousness"] == expected
    assert _array_scores(obs)["consciousness"] == expected


BETWEEN_EDGES = [
    # Values between chart rows are recorded at chart resolution, half up (docs/rules.md).
    ("resp_rate_per_min", 8.49, "resp_rate", 3),
    ("resp_rate_per_min", 8.5, "resp_rate", 1),
    ("resp_rate_per_min", 11.49, "resp_rate", 1),
    ("resp_rate_per_min", 11.5, "resp_rate", 0),
    ("resp_rate_per_min", 20.5, "resp_rate", 2),
    ("resp_rate_per_min", 24.5, "resp_rate", 3),
    ("spo2_pct", 91.5, "spo2", 2),
    ("spo2_pct", 95.49, "spo2", 1),
    ("systolic_bp_mmhg", 90.4, "systolic_bp", 3),
    ("systolic_bp_mmhg", 90.5, "systolic_bp", 2),
    ("systolic_bp_mmhg", 219.5, "systolic_bp", 3),
    ("pulse_per_min", 40.5, "pulse", 1),
    ("pulse_per_min", 130.5, "pulse", 3),
    ("temp_c", 35.04, "temperature", 3),
    ("temp_c", 35.05, "temperature", 1),
    ("temp_c", 36.05, "temperature", 0),  # 36.05 is stored as 36.0499...: still half up
    ("temp_c", 38.04, "temperature", 0),
    ("temp_c", 38.05, "temperature", 1),
    ("temp_c", 39.05, "temperature", 2),
]


@pytest.mark.parametrize(("field", "value", "parameter", "expected"), BETWEEN_EDGES)
def test_values_between_rows(field: str, value: float, parameter: str, expected: int) -> None:
    obs = replace(NORMAL, **{field: value})  # type: ignore[arg-type]
    assert _scores(obs)[parameter] == expected
    assert _array_scores(obs)[parameter] == expected


BANDS = [
    # (changes from NORMAL, total, band)
    ({}, 0, RiskBand.LOW),
    ({"pulse_per_min": 95}, 1, RiskBand.LOW),
    ({"pulse_per_min": 115, "resp_rate_per_min": 22}, 4, RiskBand.LOW),
    ({"acvpu": Acvpu.C}, 3, RiskBand.LOW_MEDIUM),
    ({"spo2_pct": 91, "pulse_per_min": 95}, 4, RiskBand.LOW_MEDIUM),
    ({"pulse_per_min": 115, "resp_rate_per_min": 22, "temp_c": 38.5}, 5, RiskBand.MEDIUM),
    ({"spo2_pct": 91, "resp_rate_per_min": 22}, 5, RiskBand.MEDIUM),  # a 3 inside 5: medium
    ({"spo2_pct": 92, "resp_rate_per_min": 22, "on_supplemental_oxygen": True}, 6, RiskBand.MEDIUM),
    ({"spo2_pct": 91, "resp_rate_per_min": 22, "pulse_per_min": 95}, 6, RiskBand.MEDIUM),
    ({"spo2_pct": 91, "resp_rate_per_min": 22, "temp_c": 39.5}, 7, RiskBand.HIGH),
    ({"spo2_pct": 85, "resp_rate_per_min": 30, "systolic_bp_mmhg": 85, "pulse_per_min": 140,
      "acvpu": Acvpu.U, "temp_c": 34.0, "on_supplemental_oxygen": True}, 20, RiskBand.HIGH),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "total", "band"), BANDS)
def test_aggregate_and_band(changes: dict[str, object], total: int, band: RiskBand) -> None:
    result = news2_score(replace(NORMAL, **changes))  # type: ignore[arg-type]
    assert (result.total, result.risk) == (total, band)
    expected_response = RESPONSE_SCORE_0 if total == 0 else RESPONSE[band]
    assert result.response == expected_response


def test_numpy_scorer_matches_scalar_scorer() -> None:
    rng = np.random.default_rng(2017)
    n = 3000
    rows = {
        "resp_rate_per_min": rng.uniform(4, 35, n).round(1),
        "spo2_pct": rng.uniform(78, 100, n),
        "systolic_bp_mmhg": rng.uniform(70, 240, n),
        "pulse_per_min": rng.uniform(30, 150, n),
        "temp_c": rng.uniform(33.5, 40.5, n).round(2),
    }
    scale = rng.integers(1, 3, n)
    oxygen = rng.integers(0, 2, n).astype(bool)
    acvpu = rng.integers(0, 5, n)
    result = news2_score_arrays(
        **rows, spo2_scale=scale, on_supplemental_oxygen=oxygen, acvpu_code=acvpu
    )
    levels = list(Acvpu)
    for i in range(n):
        scalar = news2_score(
            News2Input(
                **{k: float(v[i]) for k, v in rows.items()},
                spo2_scale=int(scale[i]),  # type: ignore[arg-type]
                on_supplemental_oxygen=bool(oxygen[i]),
                acvpu=levels[acvpu[i]],
            )
        )
        assert result.total[i] == scalar.total
        assert RiskBand.from_code(int(result.band[i])) is scalar.risk


def test_numpy_scorer_marks_missing_rows() -> None:
    result = news2_score_arrays(
        resp_rate_per_min=[16, np.nan],
        spo2_pct=[97, 97],
        spo2_scale=[1, 1],
        on_supplemental_oxygen=[False, False],
        systolic_bp_mmhg=[120, 120],
        pulse_per_min=[70, 70],
        acvpu_code=[0, 0],
        temp_c=[37, 37],
    )
    assert result.total.tolist() == [0, -1]
    assert result.band.tolist() == [0, -1]


@pytest.mark.parametrize(
    "changes",
    [{"temp_c": 98.6}, {"spo2_pct": 0.97 * 1000}, {"pulse_per_min": float("nan")},
     {"resp_rate_per_min": -1}, {"spo2_scale": 3}],
)  # fmt: skip
def test_implausible_input_is_refused(changes: dict[str, object]) -> None:
    with pytest.raises(News2InputError):
        news2_score(replace(NORMAL, **changes))  # type: ignore[arg-type]


# -- CLI -------------------------------------------------------------------------------------

HEADER = (
    "bed,resp_rate_per_min,spo2_pct,spo2_scale,on_supplemental_oxygen,systolic_bp_mmhg,"
    "pulse_per_min,acvpu,temp_c"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("Y", True), (" on ", True),
     ("false", False), ("0", False), ("No", False), ("n", False), ("off", False)],
)  # fmt: skip
def test_parse_bool(text: str, expected: bool) -> None:
    assert parse_bool("x", text) is expected


def test_parse_bool_refuses_other_words() -> None:
    with pytest.raises(News2InputError, match="on_oxygen"):
        parse_bool("on_oxygen", "maybe")


def test_cli_scores_a_file_and_reports_bad_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "obs.csv"
    source.write_text(
        "\n".join(
            [
                HEADER,
                "1,16,97,1,no,120,70,a,36.8",  # all normal
                "2,22,91,1,yes,100,135,c,38.5",  # 2+3+2+2+3+3+1 = 16
                "3,16,ninety,1,no,120,70,A,36.8",  # bad number
                "4,16,93,2,TRUE,120,70,A,36.8",  # scale 2 on O2: 93 -> 1, O2 -> 2
                "5,16,97,1,maybe,120,70,A,36.8",  # bad boolean
                "6,16,97,1,0,120,70,X,36.8",  # bad ACVPU
                "7,16,97,1,0,120,70,A,",  # missing temperature
                "8,16,97,3,0,120,70,A,37",  # bad scale
                "9,8,97,1,0,120,70,A,35.0",  # two 3s: 6, medium
            ]
        )
        + "\n"
    )
    out = tmp_path / "scored.csv"
    assert news2_main(["--csv", str(source), "--out", str(out)]) == 1

    lines = out.read_text().splitlines()
    assert lines[0] == HEADER + ",news2_total,news2_risk"
    scored = {line.split(",")[0]: line.split(",")[-2:] for line in lines[1:]}
    assert scored == {
        "1": ["0", "low"],
        "2": ["16", "high"],
        "3": ["", ""],
        "4": ["3", "low"],
        "5": ["", ""],
        "6": ["", ""],
        "7": ["", ""],
        "8": ["", ""],
        "9": ["6", "medium"],
    }
    errors = capsys.readouterr().err.splitlines()
    assert errors == [
        "news2: row 3 (line 4): spo2_pct: not a number: 'ninety'",
        "news2: row 5 (line 6): on_supplemental_oxygen: expected true/false, yes/no or 1/0, "
        "got 'maybe'",
        "news2: row 6 (line 7): acvpu: expected one of A, C, V, P, U, got 'X'",
        "news2: row 7 (line 8): temp_c: missing",
        "news2: row 8 (line 9): spo2_scale: must be 1 or 2, got '3'",
    ]


def test_cli_writes_stdout_and_exits_0_when_all_rows_are_good(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "obs.csv"
    source.write_text(HEADER + "\n1,25,95,1,no,90,131,A,39.1\n")
    assert news2_main(["--csv", str(source)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[1].endswith(",12,high")  # 3+1+0+3+3+0+2
    assert captured.err == ""


def test_cli_refuses_a_file_without_the_columns() -> None:
    errors = io.StringIO()
    assert score_csv(io.StringIO("a,b\n1,2\n"), io.StringIO(), errors) == 1
    assert "missing column(s): resp_rate_per_min" in errors.getvalue()


def test_cli_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert news2_main(["--csv", str(tmp_path / "nope.csv")]) == 1
    assert "nope.csv" in capsys.readouterr().err


def test_cli_reads_a_spreadsheet_export_with_bom(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "excel.csv"
    source.write_bytes(("\ufeff" + HEADER + "\r\n1,16,97,1,No,120,70,A,36.8\r\n").encode())
    assert news2_main(["--csv", str(source)]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "1,16,97,1,No,120,70,A,36.8,0,low"
