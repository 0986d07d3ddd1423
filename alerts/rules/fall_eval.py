"""Per-trial evaluation of the streaming fall detector, and the ``carecall fall-eval`` command.

The evaluation feeds each trial to a fresh :class:`FallDetector` in device-sized windows
(1 s by default), exactly as the server does; there is no separate offline implementation.
A fall trial counts as detected if any fall is reported during it; an activity-of-daily-living
(ADL) trial counts as a false alarm if any fall is reported during it.

File layout (as ``sisfall_tuning.npz``): ``offsets`` (trial i is rows
``offsets[i]:offsets[i+1]``), ``label`` (1 = fall), ``fs_hz`` (scalar or per trial), and the
samples either as ``acc_counts`` + ``counts_per_g`` or as a float array in g (``acc_g`` by
default, any other name with ``--array``). Optional ``subject`` is used by the bench.

Thresholds are the detector's defaults for the body position given with ``--position``
(guessed from the array name, e.g. ``acc_wrist_g``; trunk defaults otherwise).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from alerts.rules.fall import FallDetector, FallEvent, FallParams

FloatArray = npt.NDArray[np.float64]

DEFAULT_WINDOW_S = 1.0
_POSITIONS = ("waist", "chest", "pendant", "wrist")


class FallEvalError(Exception):
    """The evaluation input is unusable (missing file, missing or inconsistent arrays)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TrialSet:
    """Trials of one recording file, in g, with their labels and rates."""

    acc_g: FloatArray | npt.NDArray[np.float32]  # all trials concatenated, (N, 3)
    scale: float  # multiply acc_g by this to get g (1 for float arrays, 1/counts_per_g)
    offsets: npt.NDArray[np.int64]
    label: npt.NDArray[np.int8]
    fs_hz: FloatArray  # per trial
    subject: npt.NDArray[np.str_]  # per trial ("" when the file has none)

    def __len__(self) -> int:
        return int(self.label.size)

    def trial(self, i: int) -> FloatArray:
        """Samples of trial i in g, float64."""
        rows = self.acc_g[int(self.offsets[i]) : int(self.offsets[i + 1])]
        return rows.astype(np.float64) * self.scale


def load_trials(path: str | Path, array: str | None = None) -> TrialSet:
    """Read a trial file; raise :class:`FallEvalError` naming what is missing."""
    path = Path(path)
    if not path.is_file():
        raise FallEvalError(f"no such file: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise FallEvalError(f"cannot read {path} as .npz: {exc}") from exc
    with data:
        names = set(data.files)
        missing = [n for n in ("offsets", "label", "fs_hz") if n not in names]
        if missing:
            raise FallEvalError(f"{path}: missing array(s) {', '.join(missing)}")
        if array is not None:
            if array not in names:
                raise FallEvalError(f"{path}: no array named {array!r} (has {sorted(names)})")
            acc = data[array]
            scale = 1.0
        elif "acc_counts" in names:
            if "counts_per_g" not in names:
                raise FallEvalError(f"{path}: acc_counts given without counts_per_g")
            acc = data["acc_counts"]
            scale = 1.0 / float(data["counts_per_g"])
        elif "acc_g" in names:
            acc = data["acc_g"]
            scale = 1.0
        else:
            raise FallEvalError(
                f"{path}: no samples: expected acc_counts + counts_per_g, acc_g, or --array NAME"
            )
        offsets = data["offsets"].astype(np.int64)
        label = data["label"].astype(np.int8)
        fs = np.asarray(data["fs_hz"], dtype=np.float64)
        subject = (
            data["subject"].astype(np.str_)
            if "subject" in names
            else np.full(label.size, "", dtype=np.str_)
        )
    if acc.ndim != 2 or acc.shape[1] != 3:
        raise FallEvalError(f"{path}: samples must be (N, 3), got {acc.shape}")
    if (
        offsets.size != label.size + 1
        or offsets[0] < 0
        or offsets[-1] > acc.shape[0]
        or np.any(np.diff(offsets) < 0)
    ):
        raise FallEvalError(f"{path}: offsets do not match label ({label.size}) or samples")
    try:
        fs_per_trial = np.broadcast_to(fs, label.shape).astype(np.float64)
    except ValueError as exc:
        raise FallEvalError(f"{path}: fs_hz must be a scalar or one rate per trial") from exc
    if not np.all(fs_per_trial > 0):
        raise FallEvalError(f"{path}: fs_hz must be positive")
    return TrialSet(acc, scale, offsets, label, fs_per_trial, subject)


def run_trial(
    detector: FallDetector,
    acc_g: FloatArray,
    fs_hz: float,
    *,
    window_s: float = DEFAULT_WINDOW_S,
    t0_s: float = 0.0,
) -> list[FallEvent]:
    """Feed one trial to the detector in windows of ``window_s``, as a device would send it."""
    n_per = max(1, round(window_s * fs_hz))
    events: list[FallEvent] = []
    for start in range(0, acc_g.shape[0], n_per):
        events += detector.feed(t0_s + start / fs_hz, fs_hz, acc_g[start : start + n_per])
    return events


def resample_g(acc_g: FloatArray, fs_in_hz: float, fs_out_hz: float) -> FloatArray:
    """Resample (n, 3) samples to another rate: windowed-sinc low-pass, then interpolation.

    The low-pass (cut at 45 % of the new rate, Hamming window, edges padded with the edge
    value so gravity does not sag at the ends) stands in for a device's anti-aliasing filter.
    """
    n = acc_g.shape[0]
    if n == 0 or fs_out_hz == fs_in_hz:
        return acc_g.astype(np.float64, copy=True)
    src = acc_g.astype(np.float64)
    if fs_out_hz < fs_in_hz:
        cutoff = 0.45 * fs_out_hz / fs_in_hz  # cycles per input sample
        half = math.ceil(2.0 / cutoff)
        k = np.arange(-half, half + 1, dtype=np.float64)
        taps = 2 * cutoff * np.sinc(2 * cutoff * k) * np.hamming(k.size)
        taps /= taps.sum()
        padded = np.pad(src, ((half, half), (0, 0)), mode="edge")
        src = np.column_stack([np.convolve(padded[:, j], taps, mode="valid") for j in range(3)])
    t_in = np.arange(n) / fs_in_hz
    t_out = np.arange(math.floor((n - 1) * fs_out_hz / fs_in_hz) + 1) / fs_out_hz
    return np.column_stack([np.interp(t_out, t_in, src[:, j]) for j in range(3)])


@dataclass(frozen=True, slots=True)
class TrialOutcome:
    """What happened in one trial."""

    index: int
    label: int
    events: tuple[FallEvent, ...]
    duration_s: float
    peak_ts: float  # time of the trial's max-magnitude sample (reference impact time)


@dataclass(frozen=True, slots=True)
class EvalSummary:
    """Per-trial figures of one evaluation."""

    sensitivity: float
    specificity: float
    false_alarms_per_hour_adl: float
    falls_detected: int
    falls: int
    adl_false_alarms: int
    adl: int
    adl_hours: float
    trials_scored: int
    trials_skipped: int
    delay_median_s: float
    delay_p95_s: float


def iter_outcomes(
    trials: TrialSet,
    indices: Sequence[int] | None = None,
    *,
    params: FallParams | None = None,
    make_detector: Callable[[], FallDetector] | None = None,
    window_s: float = DEFAULT_WINDOW_S,
) -> Iterator[TrialOutcome | None]:
    """Run the detector on each trial; yield None for an all-NaN (skipped) trial."""
    chosen = range(len(trials)) if indices is None else indices
    factory = make_detector or (lambda: FallDetector(params or FallParams()))
    for i in chosen:
        acc = trials.trial(i)
        mag2 = np.einsum("ij,ij->i", acc, acc)
        if acc.shape[0] == 0 or not np.isfinite(mag2).any():
            yield None
            continue
        fs = float(trials.fs_hz[i])
        events = run_trial(factory(), acc, fs, window_s=window_s)
        peak_ts = float(np.argmax(np.where(np.isfinite(mag2), mag2, -1.0))) / fs
        yield TrialOutcome(i, int(trials.label[i]), tuple(events), acc.shape[0] / fs, peak_ts)


def summarise(outcomes: Sequence[TrialOutcome | None]) -> EvalSummary:
    """Sensitivity, specificity, false alarms per ADL hour and detection delays."""
    scored = [o for o in outcomes if o is not None]
    falls = [o for o in scored if o.label == 1]
    adl = [o for o in scored if o.label != 1]
    detected = [o for o in falls if o.events]
    adl_alarms = sum(len(o.events) for o in adl)
    adl_hours = sum(o.duration_s for o in adl) / 3600.0
    # Delay from the trial's strongest sample to the first report: an independent reference,
    # since the data sets carry no impact-time labels.
    delays = np.array([o.events[0].detected_ts - o.peak_ts for o in detected], dtype=np.float64)
    nan = math.nan
    return EvalSummary(
        sensitivity=len(detected) / len(falls) if falls else nan,
        specificity=sum(1 for o in adl if not o.events) / len(adl) if adl else nan,
        false_alarms_per_hour_adl=adl_alarms / adl_hours if adl_hours > 0 else nan,
        falls_detected=len(detected),
        falls=len(falls),
        adl_false_alarms=sum(1 for o in adl if o.events),
        adl=len(adl),
        adl_hours=adl_hours,
        trials_scored=len(scored),
        trials_skipped=len(outcomes) - len(scored),
        delay_median_s=float(np.median(delays)) if delays.size else nan,
        delay_p95_s=float(np.percentile(delays, 95)) if delays.size else nan,
    )


def summary_json(summary: EvalSummary) -> str:
    """One JSON object; NaN becomes null so any JSON reader accepts it."""
    fields = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in asdict(summary).items()
    }
    return json.dumps(fields, sort_keys=False)


def _print_table(path: str, array: str | None, position: str | None, s: EvalSummary) -> None:
    def pct(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{100 * x:.1f} %"

    def sec(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{x:.2f} s"

    where = f"{array or 'samples'}, thresholds for {position or 'trunk (default)'}"
    print(f"fall-eval {path} [{where}]")
    print(f"  sensitivity        {pct(s.sensitivity)}  ({s.falls_detected}/{s.falls} falls)")
    print(f"  specificity        {pct(s.specificity)}  ({s.adl_false_alarms}/{s.adl} ADL alarmed)")
    print(f"  false alarms/h ADL {s.false_alarms_per_hour_adl:.2f}  (over {s.adl_hours:.2f} h)")
    print(f"  trials scored      {s.trials_scored}")
    print(f"  trials skipped     {s.trials_skipped}  (all NaN)")
    print(f"  delay after peak   median {sec(s.delay_median_s)}, p95 {sec(s.delay_p95_s)}")


def fall_eval_main(argv: list[str] | None = None) -> int:
    """``carecall fall-eval FILE.npz [--array NAME] [--json]``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="carecall fall-eval",
        description="Score the streaming fall detector per trial on a recording file.",
    )
    parser.add_argument("file", help=".npz with offsets, label, fs_hz and samples")
    parser.add_argument("--array", help="float array in g to use (e.g. acc_wrist_g)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument(
        "--position",
        help="where the sensor is worn (waist, chest, pendant, wrist) for its default "
        "thresholds; default: guessed from --array (e.g. acc_wrist_g), else trunk defaults",
    )
    parser.add_argument(
        "--window-s", type=float, default=DEFAULT_WINDOW_S, help="window length fed (s)"
    )
    args = parser.parse_args(argv)
    position = args.position
    if position is None and args.array:
        position = next((p for p in _POSITIONS if p in args.array), None)
    try:
        params = FallParams.for_position(position)
    except ValueError as exc:
        print(f"fall-eval: {exc}", file=sys.stderr)
        return 2
    if not (args.window_s > 0):
        print("fall-eval: --window-s must be positive", file=sys.stderr)
        return 2
    try:
        trials = load_trials(args.file, args.array)
    except FallEvalError as exc:
        print(f"fall-eval: {exc.reason}", file=sys.stderr)
        return 2
    summary = summarise(list(iter_outcomes(trials, params=params, window_s=args.window_s)))
    try:
        if not args.json:
            _print_table(args.file, args.array, position, summary)
        print(summary_json(summary), flush=True)
    except BrokenPipeError:
        # The reader went away (``| head``): not a failure of the evaluation. Point stdout
        # at /dev/null so the interpreter's final flush does not complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    raise SystemExit(fall_eval_main())
