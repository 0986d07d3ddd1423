"""Background motion: what a worn accelerometer streams between injected events.

Each wearable has a fixed mounting (a random rotation: no two are worn alike) and lives its
resident's routine in bouts:

* asleep: lying still (gravity turned 90 degrees from upright), tiny sensor noise;
* out of the home: walking;
* at home and awake: mostly quiet (sitting or standing with a small random tilt per bout, a
  slow sway and sensor noise), with short walking bouts (about 8 % of the time).

Walking is real: the SisFall walking trials (D01, D02) for belts and pendants, UMAFall's
"Walking" trials at the wrist and chest, resampled to the device's rate and played on in a
loop. Upright is taken from the same recording (its mean gravity), so quiet and walking
bouts agree on which way is up. Without the recordings, walking is a synthetic gait (a
1.8 Hz vertical bounce of 0.2 g, 0.9 Hz sideways sway of 0.08 g, 0.03 g noise).

These windows are not injected events: the ground truth does not list them, so a fall
incident they cause counts as a false alarm in the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from simulator.recordings import random_rotation

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Activity = Literal["lying", "quiet", "walking"]

# SisFall's axis y is vertical, about -1 g when standing: the synthetic gait's upright.
DEFAULT_UPRIGHT = np.array([0.0, -1.0, 0.0])


@dataclass(frozen=True, slots=True)
class MotionParams:
    """Sizes of the background signal, in g and seconds."""

    noise_g: float = 0.01
    sleep_noise_g: float = 0.004
    sway_g: float = 0.015
    sway_hz: float = 0.25
    max_quiet_tilt_deg: float = 25.0
    walk_bout_s: tuple[float, float] = (10.0, 60.0)
    quiet_bout_mean_s: float = 400.0  # with 35 s walks: about 8 % of the time walking


def _perpendicular(v: F64, rng: np.random.Generator) -> F64:
    """A random unit vector perpendicular to ``v``."""
    w = rng.standard_normal(3)
    w -= w.dot(v) / v.dot(v) * v
    return np.asarray(w / np.linalg.norm(w), dtype=np.float64)


def _turn(v: F64, axis: F64, angle_rad: float) -> F64:
    """``v`` rotated about the unit ``axis`` (Rodrigues)."""
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.asarray(v * c + np.cross(axis, v) * s + axis * axis.dot(v) * (1 - c), np.float64)


class BackgroundMotion:
    """One wearable's background accelerometer signal, window by window (in g, the device's
    frame). Windows must be asked for in time order; walking continues where it stopped."""

    def __init__(
        self,
        rate_hz: float,
        *,
        rng: np.random.Generator,
        walking: Sequence[F32] = (),
        params: MotionParams = MotionParams(),
    ) -> None:
        if rate_hz <= 0:
            raise ValueError("a background stream needs an accelerometer rate")
        self.rate_hz = rate_hz
        self.params = params
        self.rng = rng
        self.walking = [np.asarray(w, dtype=np.float32) for w in walking if len(w) >= 2]
        self.mount: F64 = random_rotation(rng)
        if self.walking:
            head = self.walking[0][: max(2, int(2 * rate_hz))].astype(np.float64)
            up = head.mean(axis=0)
        else:
            up = DEFAULT_UPRIGHT.copy()
        self.upright: F64 = np.asarray(up / np.linalg.norm(up), dtype=np.float64)
        self.lying: F64 = _turn(self.upright, _perpendicular(self.upright, rng), math.pi / 2)
        self.sway_axis: F64 = _perpendicular(self.upright, rng)
        self.activity: Activity = "quiet"
        self._bout_until = -math.inf
        self._posture: F64 = self.upright
        self._walk_trial = 0
        self._walk_pos = 0

    # -- bouts ----------------------------------------------------------------------------
    def _choose(self, start_s: float, *, asleep: bool, out: bool) -> Activity:
        if asleep:
            self._bout_until = -math.inf  # a fresh bout on waking
            return "lying"
        if out:
            self._bout_until = -math.inf
            return "walking"
        if start_s < self._bout_until:
            return self.activity
        p = self.params
        # At home: quiet and walking bouts alternate (a renewal process).
        if self.activity == "quiet" and math.isfinite(self._bout_until):
            self._bout_until = start_s + float(self.rng.uniform(*p.walk_bout_s))
            return "walking"
        self._bout_until = start_s + float(self.rng.exponential(p.quiet_bout_mean_s))
        tilt = math.radians(float(self.rng.uniform(0.0, p.max_quiet_tilt_deg)))
        self._posture = _turn(self.upright, _perpendicular(self.upright, self.rng), tilt)
        return "quiet"

    # -- signals --------------------------------------------------------------------------
    def window(self, start_s: float, n: int, *, asleep: bool = False, out: bool = False) -> F32:
        """``n`` samples from ``start_s`` (seconds, any epoch), in g, as the device measures
        them (mounting applied)."""
        if n < 1:
            return np.zeros((0, 3), dtype=np.float32)
        self.activity = self._choose(start_s, asleep=asleep, out=out)
        p = self.params
        if self.activity == "walking":
            body = self._walk(n)
        else:
            level = self.lying if self.activity == "lying" else self._posture
            noise_g = p.sleep_noise_g if self.activity == "lying" else p.noise_g
            body = np.repeat(level.reshape(1, 3), n, axis=0)
            if self.activity == "quiet":
                t = start_s + np.arange(n) / self.rate_hz
                body += np.outer(p.sway_g * np.sin(2 * math.pi * p.sway_hz * t), self.sway_axis)
            body += self.rng.normal(0.0, noise_g, size=(n, 3))
        return (body @ self.mount.T).astype(np.float32)

    def _walk(self, n: int) -> F64:
        if not self.walking:
            return self._synthetic_gait(n)
        out = np.empty((n, 3), dtype=np.float64)
        filled = 0
        while filled < n:
            trial = self.walking[self._walk_trial]
            take = min(n - filled, len(trial) - self._walk_pos)
            out[filled : filled + take] = trial[self._walk_pos : self._walk_pos + take]
            filled += take
            self._walk_pos += take
            if self._walk_pos >= len(trial):  # on to another recorded walk
                self._walk_pos = 0
                self._walk_trial = int(self.rng.integers(len(self.walking)))
        return out

    def _synthetic_gait(self, n: int) -> F64:
        t = (self._walk_pos + np.arange(n)) / self.rate_hz
        self._walk_pos += n
        bounce = 0.2 * np.sin(2 * math.pi * 1.8 * t)
        sway = 0.08 * np.sin(2 * math.pi * 0.9 * t)
        body = np.outer(1.0 + bounce, self.upright) + np.outer(sway, self.sway_axis)
        return np.asarray(body + self.rng.normal(0.0, 0.03, size=(n, 3)), dtype=np.float64)
