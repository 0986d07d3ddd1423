"""Real fall and ADL recordings (SisFall, UMAFall) replayed as a device of another model.

A trial is taken in g, resampled to the device's rate (box-averaged first when going down,
so a 200 Hz impact is not aliased into a 25 Hz spike that never happened), and rotated by a
random rotation: a device is never mounted exactly like the recording sensor.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

DEFAULT_DATA_DIR = Path(
    os.environ.get("CARECALL_SIM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


@dataclass(frozen=True, slots=True)
class Trial:
    """One recorded trial, in g, at its own rate."""

    dataset: str  # sisfall | umafall
    trial_id: str
    activity: str
    is_fall: bool
    position: str  # waist, wrist, chest
    rate_hz: float
    samples_g: F32  # (n, 3)


class Recordings:
    """The trials of both data sets, loaded lazily (SisFall is ~22 MB)."""

    def __init__(self, data_dir: Path = DEFAULT_DATA_DIR) -> None:
        self.data_dir = Path(data_dir)

    def available(self) -> bool:
        return (self.data_dir / "sisfall_tuning.npz").exists() or (
            self.data_dir / "umafall_tuning.npz"
        ).exists()

    @functools.cached_property
    def _sisfall(self) -> dict[str, npt.NDArray[Any]] | None:
        path = self.data_dir / "sisfall_tuning.npz"
        if not path.exists():
            return None
        with np.load(path) as z:
            return {k: z[k] for k in z.files}

    @functools.cached_property
    def _umafall(self) -> dict[str, npt.NDArray[Any]] | None:
        path = self.data_dir / "umafall_tuning.npz"
        if not path.exists():
            return None
        with np.load(path) as z:
            return {k: z[k] for k in z.files}

    def candidates(self, *, position: str, is_fall: bool) -> list[tuple[str, int]]:
        """(dataset, index) of trials recorded at ``position`` (or the nearest we have)."""
        out: list[tuple[str, int]] = []
        s = self._sisfall
        if s is not None and position in ("waist", "pendant"):
            # SisFall is waist-only; a pendant hangs near the sternum but moves like the trunk.
            out += [("sisfall", int(i)) for i in np.flatnonzero(s["label"] == int(is_fall))]
        u = self._umafall
        if u is not None:
            col = _uma_column(position)
            data = u[col]
            offsets = u["offsets"]
            for i in np.flatnonzero(u["label"] == int(is_fall)):
                if not np.isnan(data[offsets[i] : offsets[i + 1]]).any():
                    out.append(("umafall", int(i)))
        if not out:
            raise LookupError(f"no recorded trials for position {position!r} in {self.data_dir}")
        return out

    def trial(self, dataset: str, index: int, *, position: str) -> Trial:
        if dataset == "sisfall":
            s = self._sisfall
            assert s is not None
            a, b = int(s["offsets"][index]), int(s["offsets"][index + 1])
            counts_per_g = float(s["counts_per_g"])
            return Trial(
                "sisfall",
                str(s["trial_id"][index]),
                str(s["activity"][index]),
                bool(s["label"][index]),
                "waist",
                float(s["fs_hz"]),
                (s["acc_counts"][a:b].astype(np.float32) / np.float32(counts_per_g)),
            )
        u = self._umafall
        assert u is not None
        a, b = int(u["offsets"][index]), int(u["offsets"][index + 1])
        col = _uma_column(position)
        return Trial(
            "umafall",
            str(u["trial_id"][index]),
            str(u["activity"][index]),
            bool(u["label"][index]),
            col.split("_")[1],
            float(u["fs_hz"]),
            u[col][a:b].astype(np.float32),
        )


# Walking in the recordings: SisFall D01/D02 (slowly, quickly; 100 s each), UMAFall "Walking".
WALKING_ACTIVITIES = frozenset({"D01", "D02", "Walking"})


def walking_samples(
    recordings: Recordings, *, position: str, rate_hz: float, max_trials: int = 4
) -> tuple[F32, ...]:
    """Up to ``max_trials`` real walking trials for a body position, in g at ``rate_hz``, in
    the recording sensor's frame (empty without recordings). Cached per (data, position,
    rate): a town of devices shares a few arrays instead of a copy each."""
    if not recordings.available():
        return ()
    return _walking_cached(recordings.data_dir, position, float(rate_hz), max_trials)


@functools.lru_cache(maxsize=32)
def _walking_cached(
    data_dir: Path, position: str, rate_hz: float, max_trials: int
) -> tuple[F32, ...]:
    rec = Recordings(data_dir)
    picked: list[F32] = []
    for dataset, index in rec.candidates(position=position, is_fall=False):
        trial = rec.trial(dataset, index, position=position)
        if trial.activity not in WALKING_ACTIVITIES or len(trial.samples_g) < 2 * trial.rate_hz:
            continue
        picked.append(resample(trial.samples_g, trial.rate_hz, rate_hz))
        if len(picked) >= max_trials:
            break
    return tuple(picked)


def _uma_column(position: str) -> str:
    return {"wrist": "acc_wrist_g", "chest": "acc_chest_g", "pendant": "acc_chest_g"}.get(
        position, "acc_waist_g"
    )


def resample(samples_g: npt.NDArray[np.floating], src_hz: float, dst_hz: float) -> F32:
    """Resample (n, 3) samples from ``src_hz`` to ``dst_hz`` by linear interpolation,
    box-averaging first when downsampling (a cheap anti-alias filter)."""
    x = np.asarray(samples_g, dtype=np.float64)
    if len(x) < 2:
        return x.astype(np.float32)
    ratio = src_hz / dst_hz
    if ratio > 1.5:
        width = round(ratio)
        kernel = np.ones(width) / width
        # Edge-padded so the first and last samples keep their level (no fake dip to 0 g).
        padded = np.pad(x, ((width // 2, width - 1 - width // 2), (0, 0)), mode="edge")
        x = np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(3)], axis=1)
    duration_s = (len(x) - 1) / src_hz
    n_out = int(np.floor(duration_s * dst_hz)) + 1
    t_src = np.arange(len(x)) / src_hz
    t_dst = np.arange(n_out) / dst_hz
    out = np.stack([np.interp(t_dst, t_src, x[:, k]) for k in range(3)], axis=1)
    return out.astype(np.float32)


def random_rotation(rng: np.random.Generator) -> F64:
    """A uniformly random 3-D rotation matrix (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return np.asarray(q, dtype=np.float64)


def rotate(samples_g: npt.NDArray[np.floating], rotation: F64) -> F32:
    return (np.asarray(samples_g, dtype=np.float64) @ rotation.T).astype(np.float32)


def stillness(last_g: npt.NDArray[np.floating], n: int, rng: np.random.Generator) -> F32:
    """``n`` samples of lying or sitting still in the posture of ``last_g`` (a fallen person
    does not get up at once; the detector may look for it), with sensor noise."""
    level = np.asarray(last_g, dtype=np.float64).reshape(1, 3)
    return (level + rng.normal(0.0, 0.01, size=(n, 3))).astype(np.float32)
