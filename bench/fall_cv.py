"""Leave-subjects-out cross-validation of the fall detector, and the sample-rate study.

    .venv/bin/python bench/fall_cv.py [--data-dir ../shared/data] [--quick]

Protocol (see docs/fall-detection.md):

* Trunk sensors (waist, chest): one fold per subject over the 13 SisFall and 8 UMAFall
  subjects (21 folds). In each fold the decision thresholds (impact_g, impact_area_gs,
  freefall_g, tilt_deg, stillness_std_g) are chosen on the *other* subjects only, from
  SisFall at 200, 50 and 20 Hz and UMAFall waist and chest at 20 Hz, then the real streaming
  detector with those thresholds runs on the held-out subject's trials, fed in 1 s windows:
  SisFall at 200, 100, 50, 25 and 20 Hz (anti-aliased resampling), UMAFall waist and chest.
* Wrist: the same on UMAFall's wrist sensor alone (8 folds).

Tuning is fast because each trial's impact episodes, with all their evidence, are recorded
once with permissive thresholds; a threshold set then only filters those records. The
figures printed are never from those records: they come from re-running the detector.

Prints a table and, as the last line, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alerts.rules.fall import FallDetector, FallParams, fall_rule
from alerts.rules.fall_eval import (
    TrialOutcome,
    TrialSet,
    load_trials,
    resample_g,
    run_trial,
    summarise,
)

GRID: dict[str, list[float]] = {
    "impact_g": [3.0, 4.0, 5.0, 6.0, 8.0],
    "impact_area_gs": [0.12, 0.15, 0.18, 0.21, 0.25, 0.35],
    "soft_impact_g": [1.6, 2.0, 2.5, 3.0],
    "freefall_g": [0.0, 0.3, 0.5],
    "tilt_deg": [20.0, 30.0, 40.0, 50.0, 60.0],
    "stillness_std_g": [0.1, 0.2, 0.3, 0.4, 0.5, 0.7],
    "pre_std_max_g": [10.0, 1.5, 1.0, 0.7, 0.5],
}
SPEC_WEIGHT = 2.0  # a false alarm costs twice a missed fall in the tuning objective
RECORD_PARAMS = FallParams(trigger_g=1.5, impact_g=1.5, soft_impact_g=1.5)
SIS_RATES_HZ = (200.0, 100.0, 50.0, 25.0, 20.0)
SIS_TUNE_RATES_HZ = (200.0, 50.0, 20.0)


class _Recorder(FallDetector):
    """Records every episode's figures instead of deciding."""

    def __init__(self, params: FallParams) -> None:
        super().__init__(params)
        self.seen: list[list[float]] = []

    def accepts(self, peak_g: float, evidence: dict[str, float]) -> bool:  # type: ignore[override]
        self.seen.append(
            [
                peak_g,
                evidence["impact_area_gs"],
                evidence["freefall_min_g"],
                evidence["tilt_deg"],
                evidence["post_std_g"],
                evidence["pre_std_g"],
            ]
        )
        return False


@dataclass
class Source:
    """One (data set, position, rate) as seen by the detector."""

    name: str
    trials: TrialSet
    rate_hz: float
    subjects: np.ndarray  # per trial, str
    activity: np.ndarray  # per trial, str

    def samples(self, i: int) -> np.ndarray:
        acc = self.trials.trial(i)
        native = float(self.trials.fs_hz[i])
        return acc if native == self.rate_hz else resample_g(acc, native, self.rate_hz)

    def usable(self, i: int) -> bool:
        return bool(np.isfinite(self.trials.trial(i)).all(axis=1).any())


def record_episodes(src: Source) -> tuple[np.ndarray, np.ndarray]:
    """Every episode of every trial: (figures (m, 5), trial index (m,))."""
    rows: list[list[float]] = []
    owner: list[int] = []
    for i in range(len(src.trials)):
        if not src.usable(i):
            continue
        rec = _Recorder(RECORD_PARAMS)
        run_trial(rec, src.samples(i), src.rate_hz)
        rows += rec.seen
        owner += [i] * len(rec.seen)
    return np.array(rows, dtype=np.float64).reshape(-1, 6), np.array(owner, dtype=np.int64)


def grid_combos() -> list[dict[str, float]]:
    keys = list(GRID)
    return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*GRID.values())]


def rule_mask(figs: np.ndarray, combo: dict[str, float]) -> np.ndarray:
    """The detector's rule (alerts.rules.fall.fall_rule), vectorised over episodes."""
    peak, area, ff, tilt, std, pre_std = figs.T
    hard = (peak >= combo["impact_g"]) | (area >= combo["impact_area_gs"])
    soft = (peak >= combo["soft_impact_g"]) & (ff <= combo["freefall_g"])
    # NaN tilt or pre-impact spread (no history before the impact) pass, as in fall_rule.
    mask: np.ndarray = (
        (hard | soft)
        & ~(tilt < combo["tilt_deg"])
        & (std <= combo["stillness_std_g"])
        & ~(pre_std > combo["pre_std_max_g"])
    )
    return mask


@dataclass
class Tally:
    """Per threshold set and subject: trials detected, among falls and among activities."""

    subjects: list[str]
    falls_hit: np.ndarray  # (n_combos, n_subjects)
    adl_hit: np.ndarray  # (n_combos, n_subjects)
    falls: np.ndarray  # (n_subjects,) usable fall trials
    adl: np.ndarray  # (n_subjects,) usable activity trials


def tally(
    src: Source, figs: np.ndarray, owner: np.ndarray, combos: list[dict[str, float]]
) -> Tally:
    """Score every threshold set on the recorded episodes, per subject."""
    subjects = sorted({str(s) for s in src.subjects})
    subj_idx = np.searchsorted(subjects, src.subjects.astype(str))
    usable = np.array([src.usable(i) for i in range(len(src.trials))])
    is_fall = usable & (src.trials.label == 1)
    is_adl = usable & (src.trials.label != 1)
    n_subj = len(subjects)
    falls_hit = np.zeros((len(combos), n_subj), dtype=np.int32)
    adl_hit = np.zeros((len(combos), n_subj), dtype=np.int32)
    # The rule is a conjunction of per-parameter conditions: compute each once per value.
    peak, area, ff, tilt, std, pre_std = figs.T
    cond: dict[tuple[str, float], np.ndarray] = {}
    for v in GRID["tilt_deg"]:
        cond["tilt_deg", v] = ~(tilt < v)
    for v in GRID["stillness_std_g"]:
        cond["stillness_std_g", v] = std <= v
    for v in GRID["pre_std_max_g"]:
        cond["pre_std_max_g", v] = ~(pre_std > v)
    hit = np.zeros(len(src.trials), dtype=bool)
    for c, combo in enumerate(combos):
        mask = (
            (peak >= combo["impact_g"])
            | (area >= combo["impact_area_gs"])
            | ((peak >= combo["soft_impact_g"]) & (ff <= combo["freefall_g"]))
        )
        mask &= cond["tilt_deg", combo["tilt_deg"]]
        mask &= cond["stillness_std_g", combo["stillness_std_g"]]
        mask &= cond["pre_std_max_g", combo["pre_std_max_g"]]
        hit[:] = False
        hit[owner[mask]] = True
        falls_hit[c] = np.bincount(subj_idx[hit & is_fall], minlength=n_subj)
        adl_hit[c] = np.bincount(subj_idx[hit & is_adl], minlength=n_subj)
    return Tally(
        subjects,
        falls_hit,
        adl_hit,
        np.bincount(subj_idx[is_fall], minlength=n_subj),
        np.bincount(subj_idx[is_adl], minlength=n_subj),
    )


def check_rule_matches(figs: np.ndarray, combo: dict[str, float]) -> None:
    """Guard: the vectorised tuning rule must agree with the detector's own rule."""
    params = replace(FallParams(), **combo)
    mask = rule_mask(figs[:500], combo)
    for row, mine in zip(figs[:500], mask, strict=True):
        peak, area, ff, tilt, std, pre_std = (float(v) for v in row)
        ev = {
            "impact_area_gs": area,
            "freefall_min_g": ff,
            "tilt_deg": tilt,
            "post_std_g": std,
            "pre_std_g": pre_std,
        }
        assert bool(mine) == fall_rule(params, peak, ev), row


def choose(tallies: dict[str, Tally], train_subjects: set[str]) -> int:
    """Index of the combo with the best mean objective over sources, on training subjects."""
    total: np.ndarray | None = None
    for t in tallies.values():
        train = np.array([s in train_subjects for s in t.subjects])
        n_falls, n_adl = int(t.falls[train].sum()), int(t.adl[train].sum())
        if not n_falls or not n_adl:
            continue
        sens = t.falls_hit[:, train].sum(axis=1) / n_falls
        spec = 1.0 - t.adl_hit[:, train].sum(axis=1) / n_adl
        score = sens + SPEC_WEIGHT * spec
        total = score if total is None else total + score
    assert total is not None
    return int(np.argmax(total))


def evaluate(
    src: Source, params_by_subject: dict[str, FallParams], window_s: float = 1.0
) -> tuple[list[TrialOutcome | None], float]:
    """Held-out run of the real detector: each trial with its own fold's parameters.

    Also returns the detector's throughput in samples per second (1 s windows, one core).
    """
    outcomes: list[TrialOutcome | None] = []
    n_samples = 0
    busy_s = 0.0
    for i in range(len(src.trials)):
        subj = str(src.subjects[i])
        if subj not in params_by_subject:
            continue
        if not src.usable(i):
            outcomes.append(None)
            continue
        acc = src.samples(i)
        t0 = time.perf_counter()
        events = run_trial(
            FallDetector(params_by_subject[subj]), acc, src.rate_hz, window_s=window_s
        )
        busy_s += time.perf_counter() - t0
        n_samples += acc.shape[0]
        mag2 = np.einsum("ij,ij->i", acc, acc)
        peak_ts = float(np.argmax(np.where(np.isfinite(mag2), mag2, -1.0))) / src.rate_hz
        outcomes.append(
            TrialOutcome(
                i, int(src.trials.label[i]), tuple(events), acc.shape[0] / src.rate_hz, peak_ts
            )
        )
    return outcomes, n_samples / busy_s if busy_s > 0 else math.nan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_dir = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser.add_argument("--data-dir", type=Path, default=default_dir)
    parser.add_argument("--quick", action="store_true", help="SisFall 200 and 20 Hz only")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()

    sis = load_trials(args.data_dir / "sisfall_tuning.npz")
    with np.load(args.data_dir / "sisfall_tuning.npz") as f:
        sis_act = f["activity"]
    with np.load(args.data_dir / "umafall_tuning.npz") as f:
        uma_act = f["activity"]
    uma = {
        pos: load_trials(args.data_dir / "umafall_tuning.npz", f"acc_{pos}_g")
        for pos in ("waist", "chest", "wrist")
    }
    sis_rates = (200.0, 20.0) if args.quick else SIS_RATES_HZ
    sources: dict[str, Source] = {
        f"sisfall_waist@{r:g}Hz": Source(f"sisfall_waist@{r:g}Hz", sis, r, sis.subject, sis_act)
        for r in sorted(set(sis_rates) | set(SIS_TUNE_RATES_HZ), reverse=True)
    }
    for pos, ts in uma.items():
        sources[f"umafall_{pos}@20Hz"] = Source(
            f"umafall_{pos}@20Hz", ts, 20.0, ts.subject, uma_act
        )
    groups = {
        "trunk": [f"sisfall_waist@{r:g}Hz" for r in SIS_TUNE_RATES_HZ]
        + ["umafall_waist@20Hz", "umafall_chest@20Hz"],
        "wrist": ["umafall_wrist@20Hz"],
    }
    report_sources = {
        "trunk": [f"sisfall_waist@{r:g}Hz" for r in sis_rates]
        + ["umafall_waist@20Hz", "umafall_chest@20Hz"],
        "wrist": ["umafall_wrist@20Hz"],
    }

    combos = grid_combos()
    det: dict[str, Tally] = {}
    for name in sorted({n for g in groups.values() for n in g}):
        t0 = time.perf_counter()
        figs, owner = record_episodes(sources[name])
        check_rule_matches(figs, combos[len(combos) // 3])
        det[name] = tally(sources[name], figs, owner, combos)
        print(f"# recorded {figs.shape[0]} episodes of {name} in {time.perf_counter() - t0:.1f} s")

    results: dict[str, dict[str, object]] = {}
    final_params: dict[str, dict[str, float]] = {}
    for group, names in groups.items():
        subjects = sorted({str(s) for n in names for s in sources[n].subjects})
        group_det = {n: det[n] for n in names}
        picks: dict[str, FallParams] = {}
        for held in subjects:
            c = choose(group_det, set(subjects) - {held})
            picks[held] = replace(FallParams(), **combos[c])
        c_all = choose(group_det, set(subjects))
        final_params[group] = combos[c_all]
        stability = Counter(
            json.dumps({k: getattr(p, k) for k in GRID}, sort_keys=True) for p in picks.values()
        )
        print(f"\n## {group}: thresholds chosen on all {len(subjects)} subjects: {combos[c_all]}")
        print(f"   distinct choices across folds: {len(stability)}; most common:")
        for choice, count in stability.most_common(3):
            print(f"     {count:2d} folds  {choice}")
        print(
            f"   {'held-out source':24s} {'sens':>7s} {'spec':>7s} {'FA/h':>6s} "
            f"{'falls':>9s} {'ADL':>9s} {'skip':>4s} {'delay med/p95 s':>16s} {'Msamp/s':>7s}"
        )
        for name in report_sources[group]:
            src = sources[name]
            outs, samples_per_s = evaluate(src, picks)
            s = summarise(outs)
            results[f"{group}:{name}"] = asdict(s) | {
                "detector_msamples_per_s": samples_per_s / 1e6
            }
            print(
                f"   {name:24s} {100 * s.sensitivity:6.1f}% {100 * s.specificity:6.1f}% "
                f"{s.false_alarms_per_hour_adl:6.2f} {s.falls_detected:4d}/{s.falls:<4d} "
                f"{s.adl_false_alarms:4d}/{s.adl:<4d} {s.trials_skipped:4d} "
                f"{s.delay_median_s:7.2f}/{s.delay_p95_s:.2f} {samples_per_s / 1e6:7.2f}"
            )
            missed = Counter(
                str(src.activity[o.index]) for o in outs if o and o.label == 1 and not o.events
            )
            alarmed = Counter(
                str(src.activity[o.index]) for o in outs if o and o.label != 1 and o.events
            )
            print(f"   {'':24s} missed: {dict(missed.most_common(6))}")
            print(f"   {'':24s} false alarms: {dict(alarmed.most_common(6))}")
    elapsed = time.perf_counter() - t_start
    print(f"\n# elapsed {elapsed:.0f} s")
    print(
        json.dumps(
            {
                "protocol": "leave-one-subject-out; thresholds chosen on training subjects",
                "objective": f"mean over sources of sensitivity + {SPEC_WEIGHT} * specificity",
                "final_params": final_params,
                "held_out": {
                    k: {
                        kk: (None if isinstance(vv, float) and math.isnan(vv) else vv)
                        for kk, vv in v.items()
                    }
                    for k, v in results.items()
                },
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
