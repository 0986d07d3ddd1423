"""``carecall fall-eval``: per-trial scoring through the streaming detector, on small files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from alerts.rules.fall_eval import fall_eval_main, resample_g
from tests.alerts.rules.test_fall import synth_movement

RATE_HZ = 50.0
COUNTS_PER_G = 256


def _trials(nan_trial: bool) -> tuple[list[np.ndarray], list[int]]:
    """Two falls, three activities, and optionally one trial with nothing but NaN."""
    acc = [
        synth_movement("fall", rate_hz=RATE_HZ, seed=11)[0],
        synth_movement("fall", rate_hz=RATE_HZ, seed=12)[0],
        synth_movement("walk", rate_hz=RATE_HZ, seed=13)[0],
        synth_movement("sit", rate_hz=RATE_HZ, seed=14)[0],
        synth_movement("jump", rate_hz=RATE_HZ, seed=15)[0],
    ]
    label = [1, 1, 0, 0, 0]
    if nan_trial:
        acc.append(np.full((300, 3), np.nan))
        label.append(1)
    return acc, label


def _write(path: Path, layout: str, *, nan_trial: bool = False) -> Path:
    acc, label = _trials(nan_trial)
    offsets = np.concatenate([[0], np.cumsum([a.shape[0] for a in acc])]).astype(np.int64)
    arrays: dict[str, np.ndarray] = {
        "offsets": offsets,
        "label": np.array(label, dtype=np.int8),
        "subject": np.array([f"S{i % 2}" for i in range(len(label))]),
    }
    stacked = np.concatenate(acc)
    if layout == "counts":
        arrays["acc_counts"] = np.round(stacked * COUNTS_PER_G).astype(np.int16)
        arrays["counts_per_g"] = np.array(COUNTS_PER_G, dtype=np.int16)
        arrays["fs_hz"] = np.array(RATE_HZ, dtype=np.float32)
    elif layout == "g":
        arrays["acc_g"] = stacked.astype(np.float32)
        arrays["fs_hz"] = np.full(len(label), RATE_HZ)  # per-trial rates
    elif layout == "named":
        arrays["acc_wrist_g"] = stacked.astype(np.float32)
        arrays["fs_hz"] = np.array(RATE_HZ)
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def _last_json(out: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(
    ("layout", "nan_trial", "extra_args", "skipped"),
    [
        ("counts", False, [], 0),
        ("g", True, [], 1),
        ("named", True, ["--array", "acc_wrist_g", "--position", "waist"], 1),
    ],
)
def test_scores_each_layout(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    layout: str,
    nan_trial: bool,
    extra_args: list[str],
    skipped: int,
) -> None:
    path = _write(tmp_path / "trials.npz", layout, nan_trial=nan_trial)
    assert fall_eval_main([str(path), *extra_args]) == 0
    out = capsys.readouterr().out
    assert "sensitivity" in out.splitlines()[1]
    figures = _last_json(out)
    assert figures["sensitivity"] == 1.0
    assert figures["specificity"] == 1.0
    assert figures["false_alarms_per_hour_adl"] == 0.0
    assert figures["trials_scored"] == 5
    assert figures["trials_skipped"] == skipped
    assert figures["falls"] == 2
    # The synthetic impact is the strongest sample; the decision follows within 5 s.
    assert 0.0 < figures["delay_median_s"] <= figures["delay_p95_s"] <= 5.0  # type: ignore[operator]


def test_json_flag_prints_only_the_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "trials.npz", "counts")
    assert fall_eval_main([str(path), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["trials_scored"] == 5


def test_a_missed_fall_and_a_false_alarm_are_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Swap the labels: the two falls become "activities" and three activities "falls".
    path = _write(tmp_path / "trials.npz", "counts")
    with np.load(path) as data:
        arrays = dict(data)
    arrays["label"] = 1 - arrays["label"]
    np.savez(path, **arrays)
    assert fall_eval_main([str(path), "--json"]) == 0
    figures = _last_json(capsys.readouterr().out)
    assert figures["sensitivity"] == 0.0
    assert figures["specificity"] == 0.0
    assert figures["adl_false_alarms"] == 2
    assert figures["false_alarms_per_hour_adl"] == pytest.approx(2 / (2 * 14.0 / 3600), rel=0.01)
    assert figures["delay_median_s"] is None  # nothing detected among the "falls"


@pytest.mark.parametrize(
    ("drop", "args", "message"),
    [
        (None, ["--array", "acc_chest_g"], "acc_chest_g"),
        ("offsets", [], "offsets"),
        ("label", [], "label"),
        ("counts_per_g", [], "counts_per_g"),
        ("acc_counts", [], "no samples"),
        (None, ["--position", "ankle"], "ankle"),
    ],
)
def test_unusable_input_exits_2_with_a_message(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    drop: str | None,
    args: list[str],
    message: str,
) -> None:
    path = _write(tmp_path / "trials.npz", "counts")
    if drop is not None:
        with np.load(path) as data:
            arrays = {k: v for k, v in data.items() if k != drop}
        np.savez(path, **arrays)
    assert fall_eval_main([str(path), *args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("fs_hz", np.array([50.0, 50.0]), "fs_hz"),
        ("fs_hz", np.array(0.0), "fs_hz"),
        ("offsets", np.array([0, 700, 600, 1400, 2100, 2800]), "offsets"),
        ("acc_counts", np.zeros((100, 2), dtype=np.int16), "(N, 3)"),
    ],
)
def test_inconsistent_arrays_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    value: np.ndarray,
    message: str,
) -> None:
    path = _write(tmp_path / "trials.npz", "counts")
    with np.load(path) as data:
        arrays = dict(data)
    arrays[name] = value
    np.savez(path, **arrays)
    assert fall_eval_main([str(path)]) == 2
    assert message in capsys.readouterr().err


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fall_eval_main([str(tmp_path / "nope.npz")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_runs_as_a_module(tmp_path: Path) -> None:
    path = _write(tmp_path / "trials.npz", "counts")
    proc = subprocess.run(
        [sys.executable, "-m", "alerts.rules.fall_eval", str(path), "--json"],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["sensitivity"] == 1.0


@pytest.mark.parametrize(("fs_in", "fs_out"), [(200.0, 20.0), (200.0, 25.0), (20.0, 50.0)])
def test_resampling_keeps_gravity_and_duration(fs_in: float, fs_out: float) -> None:
    t = np.arange(int(10 * fs_in)) / fs_in
    acc = np.column_stack([np.zeros_like(t), -np.ones_like(t), 0.5 * np.sin(2 * np.pi * t)])
    out = resample_g(acc, fs_in, fs_out)
    # Upsampling cannot invent samples after the last one: up to one input period short.
    assert out.shape[0] == pytest.approx(10 * fs_out, abs=fs_out / fs_in + 1)
    assert out[:, 1] == pytest.approx(-1.0, abs=1e-6)  # no sag at the edges either
    assert np.abs(out[:, 2]).max() == pytest.approx(0.5, abs=0.03)  # 1 Hz passes
