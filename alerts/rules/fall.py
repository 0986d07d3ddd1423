"""Streaming fall detector for body-worn accelerometers (waist, wrist, chest, pendant).

A fall is recognised from physical signs, none of which assumes an axis or a body
position:

1. an *impact*: the magnitude of acceleration rises well above 1 g (``impact_g``), or its
   area above 1 g -- the velocity the impact took away -- is large (``impact_area_gs``), or
   a softer impact (``soft_impact_g``) follows a *free-fall dip* (magnitude near 0 g,
   ``freefall_g``, averaged over 50 ms so that it reads the same at any sample rate) in the
   second before it;
2. a *change of orientation*: the direction of gravity, estimated as the mean acceleration
   vector over a stretch before the fall began and again after the impact, turns by at least
   ``tilt_deg`` degrees (a standing or sitting person ends up lying or crouched);
3. *stillness* after the impact: the spread of the acceleration vector (square root of the
   trace of its covariance) over a stretch after the impact stays below ``stillness_std_g``;
4. optionally (the wrist), *calm before*: the spread of the acceleration vector before the
   fall stays below ``pre_std_max_g``, since an impact amid rhythmic arm work is not a fall.

The decision is taken as soon as the stillness stretch is over, at most
``stillness_delay_s + stillness_s`` (<= 5 s) after the impact.

Streaming design. The detector never keeps raw samples. Every window is reduced, with
vectorised numpy, to fixed 0.2 s blocks aligned to absolute time (sums of x, y, z, of the
squared magnitude, the sample count and the lowest mean squared magnitude over the block's
four 50 ms sub-blocks); a ring of about four seconds of such blocks is all the history it
holds. Because blocks are aligned to time, not
to windows, the same samples give the same blocks however the device cut them into windows,
and a 20 Hz and a 200 Hz stream give comparable features. Impacts are found on the raw
samples of the window being fed (exact peak time); each impact becomes a small pending record
that is completed when the blocks it needs have arrived.

Many devices. ``FallDetectorBank`` keeps every device's state in shared numpy columns
indexed by a slot (about 610 bytes a device, no Python object per device) and feeds many
devices' windows at once, bit for bit with the same results as one at a time, to spread the
fixed cost of numpy calls. ``FallDetector`` is a one-slot bank. See
``docs/fall-detection.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

BLOCK_S: Final = 0.2
"""Width of the time-aligned blocks the history is kept in."""

MAX_DECISION_DELAY_S: Final = 5.0
"""The requirement: a fall is reported at most this long after its impact."""

# A window longer than this is processed in pieces so that the ring, sized for this, still
# holds the history an impact early in the window needs.
_MAX_PIECE_S: Final = 1.0
# Sample times are computed as t0 + i / rate by the caller and by us; a sample that falls on a
# block or search boundary must land on the same side whatever the chunking, so boundaries are
# nudged by this much (far above float64 rounding of epoch seconds, far below a sample period).
_TIME_TIE_S: Final = 1e-4
# Gravity before the impact is taken up to this close to the peak when the usual window has
# no data (stream start, gap): the last moments of the descent are still left out.
_PRE_FALLBACK_END_S: Final = 0.4
SUB_S: Final = BLOCK_S / 4
"""The free-fall dip is measured on means over 50 ms sub-blocks (aligned to time like the
blocks), not on single samples: see ``FallDetectorBank``."""
_TIE_SUBS: Final = _TIME_TIE_S / SUB_S
# Ring columns: sum x, sum y, sum z, sum |a|^2, sample count, and the lowest mean |a|^2 of
# the block's complete 50 ms sub-blocks.
_SX, _SY, _SZ, _SM2, _N, _MIN = range(6)
_NCOLS: Final = 6
# The open block (float64) adds the open sub-block's sum of |a|^2 and sample count: the
# sub-block the last sample fell in, when the next sample may still fall in it too.
_CSUM, _CN = 6, 7
_PART_COLS: Final = 8
_ONES3: Final = np.ones(3, dtype=np.float64)
# An empty block: no samples, and a minimum that can never pass for free fall (inf also
# stands for "no complete 50 ms sub-block").
_EMPTY_BLOCK: Final = np.array([0.0, 0.0, 0.0, 0.0, 0.0, np.inf], dtype=np.float32)
# Pending episodes, float64 part: peak time (epoch s), peak |a|^2.
_T_TS, _T_PEAK = 0, 1
# Float32 part: pre-impact gravity x, y, z, free-fall min |a|^2, pre-impact variance, stage
# (0 = peak search open or pre-impact features not computed yet, 1 = waiting for stillness),
# impact area (g s).
_P_GX, _P_GY, _P_GZ, _P_FF, _P_PREVAR, _P_STAGE, _P_AREA = range(7)
_PCOLS: Final = 7
_NO_PEND_TS: Final = np.zeros((0, 2), dtype=np.float64)
_NO_PEND: Final = np.zeros((0, _PCOLS), dtype=np.float32)
# Below this many windows, feed_many takes the per-device path (numpy's fixed costs win).
_MIN_BATCH: Final = 4


@dataclass(frozen=True, slots=True)
class FallParams:
    """Thresholds and time spans of the fall detector; every name carries its unit.

    Defaults were chosen by leave-subjects-out cross-validation on SisFall (waist, 200 Hz and
    resampled to 20-100 Hz) and UMAFall (waist, wrist, chest, 20 Hz); see
    ``docs/fall-detection.md`` for the figures and the reasoning.
    """

    trigger_g: float = 1.5
    """A sample above this magnitude opens an impact episode (candidate)."""
    impact_g: float = 5.0
    """Peak magnitude that counts as an impact on its own (at high sample rates)."""
    impact_area_gs: float = 0.15
    """Area of the magnitude above 1 g over the peak search (g s, i.e. the velocity the
    impact removed, in units of 9.81 m/s) that counts as an impact on its own. Unlike the
    peak, the area survives the low-pass filtering of a low sample rate."""
    soft_impact_g: float = 1.6
    """Lower peak that counts as an impact when a free-fall dip preceded it."""
    freefall_g: float = 0.3
    """Magnitude below which the body is partly in free fall (0 g = falling freely),
    measured as the root of the lowest 50 ms mean of |a|^2: a dip must last, not be one
    noisy sample (which a fast device sees more of than a slow one)."""
    freefall_window_s: float = 1.0
    """How long before the peak a free-fall dip is looked for."""
    peak_search_s: float = 0.5
    """After the first sample above ``trigger_g``, the peak is the maximum over this span."""
    pre_start_s: float = 2.0
    """Gravity before the fall is the mean vector from ``pre_start_s`` before the peak ..."""
    pre_end_s: float = 0.8
    """... to ``pre_end_s`` before it (the descent itself is excluded)."""
    tilt_deg: float = 40.0
    """Minimum turn of the gravity direction between before and after the impact."""
    stillness_delay_s: float = 1.0
    """The stillness stretch starts this long after the peak (bounces and rolling settle)."""
    stillness_s: float = 1.4
    """Length of the stillness stretch; the decision comes at its end."""
    stillness_std_g: float = 0.4
    """Maximum spread of the acceleration vector over the stillness stretch."""
    pre_std_max_g: float = 10.0
    """Maximum spread of the acceleration vector before the fall (over the gravity window).
    Falls start from ordinary activity; an impact amid vigorous rhythmic motion (clapping,
    hammering) is not one. Matters for the wrist; 10 g leaves it off."""
    refractory_s: float = 10.0
    """After a reported fall, impacts within this span are not reported again."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise TypeError(f"FallParams.{f.name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"FallParams.{f.name} must be finite and >= 0, got {value!r}")
        if self.trigger_g > min(self.impact_g, self.soft_impact_g):
            raise ValueError("FallParams.trigger_g must not exceed impact_g or soft_impact_g")
        if self.pre_start_s <= self.pre_end_s:
            raise ValueError("FallParams.pre_start_s must be greater than pre_end_s")
        if self.peak_search_s < BLOCK_S:
            raise ValueError(f"FallParams.peak_search_s must be >= {BLOCK_S} s")
        if self.stillness_s < 2 * BLOCK_S:
            raise ValueError(f"FallParams.stillness_s must be >= {2 * BLOCK_S} s")
        if self.stillness_delay_s + self.stillness_s > MAX_DECISION_DELAY_S:
            raise ValueError(
                "FallParams.stillness_delay_s + stillness_s must be <= "
                f"{MAX_DECISION_DELAY_S} s (a fall must be reported within that)"
            )

    @classmethod
    def for_position(cls, position: str | None) -> FallParams:
        """Defaults for where the device is worn (``AccelWindow.position``).

        Trunk positions (waist, chest, pendant, or unknown) share the defaults; the wrist
        moves on its own and gets its own cross-validated thresholds.
        """
        if position is None or position in TRUNK_POSITIONS:
            return cls()
        if position in POSITION_OVERRIDES:
            return cls(**POSITION_OVERRIDES[position])
        known = sorted(TRUNK_POSITIONS | POSITION_OVERRIDES.keys())
        raise ValueError(f"unknown body position {position!r}; known: {known}")

    @classmethod
    def from_dict(cls, values: Mapping[str, object], base: FallParams | None = None) -> FallParams:
        """Build from a plain mapping (e.g. a YAML rules file); unknown keys are refused.

        Keys not given keep their value in ``base`` (the defaults if None), so a resident's
        overrides can sit on top of ``FallParams.for_position(...)``.
        """
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ValueError(f"unknown fall parameter {key!r}; known: {sorted(known)}")
        converted: dict[str, float] = {}
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ValueError(f"fall parameter {key!r} must be a number, got {value!r}")
            try:
                converted[key] = float(value)
            except ValueError as exc:
                raise ValueError(f"fall parameter {key!r} must be a number, got {value!r}") from exc
        return replace(base or cls(), **converted)


TRUNK_POSITIONS: Final = frozenset({"waist", "chest", "pendant"})
# Chosen by the same leave-subjects-out protocol on UMAFall's wrist sensor (bench/fall_cv.py).
POSITION_OVERRIDES: Final[dict[str, dict[str, float]]] = {
    "wrist": {
        "impact_g": 3.0,
        "impact_area_gs": 0.25,
        "freefall_g": 0.0,
        "tilt_deg": 20.0,
        "stillness_std_g": 0.7,
        "pre_std_max_g": 0.7,
    },
}


def fall_params_from_dict(
    values: Mapping[str, object], base: FallParams | None = None
) -> FallParams:
    """Loader for rules files: ``FallParams.from_dict`` as a plain function."""
    return FallParams.from_dict(values, base)


@dataclass(frozen=True, slots=True)
class FallEvent:
    """A detected fall."""

    impact_ts: float
    """Epoch seconds of the impact peak."""
    detected_ts: float
    """Time (on the device's clock) at which the detector had the data to decide."""
    peak_g: float
    evidence: dict[str, float]
    """``freefall_min_g``, ``tilt_deg``, ``post_std_g``, ``post_mean_g``, ``impact_area_gs``,
    ``pre_std_g``."""


def _block_of(t_s: float) -> int:
    return math.floor(t_s / BLOCK_S + _TIME_TIE_S / BLOCK_S)


def _sub_of(t_s: float) -> int:
    return math.floor(t_s / SUB_S + _TIE_SUBS)


def _magnitude2(acc: FloatArray) -> FloatArray:
    """|a|^2 of each sample of (..., 3) samples, as x*x + y*y + z*z in that order.

    Elementwise, so a window gives bit for bit the same values alone and inside a batch (a
    BLAS dot product may sum in another order depending on the shape it is given).
    """
    sq = acc * acc
    m2: FloatArray = sq[..., 0] + sq[..., 1]
    m2 += sq[..., 2]
    return m2


def ring_len_for(params: FallParams) -> int:
    """Blocks of history a detector with these parameters keeps."""
    p = params
    piece_s = _MAX_PIECE_S + 2 * BLOCK_S
    span_s = max(
        p.pre_start_s + p.peak_search_s + piece_s,
        p.freefall_window_s + p.peak_search_s + piece_s,
        p.stillness_s + piece_s,
    )
    return math.ceil(span_s / BLOCK_S) + 1


def _episode_capacity(params: FallParams) -> int:
    # At most one episode has its peak search open (the newest); the others wait for their
    # blocks. Their number is bounded because episodes start peak_search_s apart.
    p = params
    span_s = p.peak_search_s + p.stillness_delay_s + p.stillness_s + 2 * BLOCK_S
    return math.ceil(span_s / p.peak_search_s) + 1


class _Episodes:
    """Impact episodes under way on one device. Most devices have none, so these records
    are kept apart from the bank's columns and exist only while an episode is pending."""

    __slots__ = ("n_pend", "open_end_s", "pend", "pend_ts")

    def __init__(
        self,
        pend_ts: FloatArray,
        pend: npt.NDArray[np.float32],
        n_pend: int,
        open_end_s: float,
    ) -> None:
        self.pend_ts = pend_ts  # float64 (cap, 2): peak time (epoch s), peak |a|^2
        self.pend = pend  # float32 (cap, _PCOLS): see _P_*
        self.n_pend = n_pend
        self.open_end_s = open_end_s  # end of the newest episode's peak search


class FallDetectorBank:
    """The fall-detector state of many devices, in shared columns indexed by a slot.

    Per device: a ring of 0.2 s blocks (float32), the block being filled (float64 sums),
    and a few scalars, about 610 bytes in all with no per-device Python object; pending
    impact episodes (rare) are small records that exist only while they last.

    ``feed`` takes one device's window. ``feed_many`` takes one window for each of many
    devices (same rate and length): the common case -- a quiet window (nothing above
    ``trigger_g``, no episode under way, no overlap) -- is reduced to blocks and stored for
    the whole batch in one set of numpy calls, whatever each window's start time; every
    other window goes through ``feed``. Both give bit for bit the same state and events as
    feeding each device alone (the tests hold them to it).

    All devices of a bank share one ring length (``ring_len_for(params)``); parameters that
    need another length belong in another bank.
    """

    __slots__ = (
        "_busy",
        "_episode_caps",
        "_episodes",
        "_free",
        "_have_blocks",
        "_last_event_ts",
        "_last_t_s",
        "_n_slots",
        "_newest_block",
        "_params",
        "_params_ids",
        "_params_index",
        "_part",
        "_part_block",
        "_part_open",
        "_ring",
        "_trigger2",
        "decide",
        "ring_len",
    )

    def __init__(
        self,
        n_devices: int = 0,
        params: FallParams = FallParams(),
        *,
        capacity: int = 64,
        ring_len: int | None = None,
    ) -> None:
        self.ring_len = ring_len_for(params) if ring_len is None else ring_len
        self._params: list[FallParams] = []
        self._episode_caps: list[int] = []
        self._params_ids: dict[FallParams, int] = {}
        self._trigger2 = np.zeros(0, dtype=np.float64)  # per registered parameter set
        self._episodes: dict[int, _Episodes] = {}
        self._free: list[int] = []
        self._n_slots = 0
        self.decide: Callable[[FallParams, float, Mapping[str, float]], bool] = fall_rule
        """The decision on one episode's figures; the tuning bench swaps in a recorder."""
        self._allocate(max(1, capacity, n_devices))
        for _ in range(n_devices):
            self.add_device(params)

    # -- slots ---------------------------------------------------------------------------
    def _columns(self) -> tuple[npt.NDArray[Any], ...]:
        return (
            self._ring,
            self._part,
            self._part_block,
            self._newest_block,
            self._last_t_s,
            self._last_event_ts,
            self._have_blocks,
            self._part_open,
            self._busy,
            self._params_index,
        )

    def _allocate(self, capacity: int) -> None:
        self._ring = np.empty((capacity, self.ring_len, _NCOLS), dtype=np.float32)
        self._part = np.zeros((capacity, _PART_COLS), dtype=np.float64)  # the open block
        self._part_block = np.full(capacity, -1, dtype=np.int64)  # the open block's id
        self._newest_block = np.full(capacity, -1, dtype=np.int64)  # last complete block
        self._last_t_s = np.full(capacity, -np.inf)  # time of the last accepted sample
        self._last_event_ts = np.full(capacity, -np.inf)  # impact of the last fall reported
        self._have_blocks = np.zeros(capacity, dtype=np.bool_)
        self._part_open = np.zeros(capacity, dtype=np.bool_)
        self._busy = np.zeros(capacity, dtype=np.bool_)  # an episode is pending
        self._params_index = np.zeros(capacity, dtype=np.int16)
        self._ring[:] = _EMPTY_BLOCK

    def _grow(self) -> None:
        # By a quarter, like the vitals columns: spare capacity within 25 %.
        old = self._columns()
        self._allocate(old[0].shape[0] + max(64, old[0].shape[0] // 4))
        for column, kept in zip(self._columns(), old, strict=True):
            column[: kept.shape[0]] = kept

    @property
    def capacity(self) -> int:
        """Slots allocated (grows by a quarter when full)."""
        return int(self._ring.shape[0])

    def __len__(self) -> int:
        return self._n_slots - len(self._free)

    def _params_id(self, params: FallParams) -> int:
        found = self._params_ids.get(params)
        if found is not None:
            return found
        if ring_len_for(params) != self.ring_len:
            raise ValueError(
                f"these parameters need a ring of {ring_len_for(params)} blocks, "
                f"this bank has {self.ring_len}"
            )
        self._params.append(params)
        self._episode_caps.append(_episode_capacity(params))
        self._trigger2 = np.append(self._trigger2, params.trigger_g**2)
        self._params_ids[params] = len(self._params) - 1
        return len(self._params) - 1

    def add_device(self, params: FallParams = FallParams()) -> int:
        """A slot for a new device, with empty history; returns the slot."""
        params_id = self._params_id(params)
        if self._free:
            slot = self._free.pop()
        else:
            if self._n_slots == self.capacity:
                self._grow()
            slot = self._n_slots
            self._n_slots += 1
        self._reset(slot)
        self._params_index[slot] = params_id
        return slot

    def release(self, slot: int) -> None:
        """Give a device's slot back (its state is forgotten; the slot will be reused)."""
        self._reset(slot)
        self._free.append(slot)

    def set_params(self, slot: int, params: FallParams) -> None:
        """Give one device its own thresholds (its history starts afresh)."""
        params_id = self._params_id(params)
        self._reset(slot)
        self._params_index[slot] = params_id

    def params_of(self, slot: int) -> FallParams:
        """The parameters a slot's device is checked against."""
        return self._params[int(self._params_index[slot])]

    def _reset(self, slot: int) -> None:
        self._ring[slot] = _EMPTY_BLOCK
        self._part[slot] = 0.0
        self._part_block[slot] = -1
        self._newest_block[slot] = -1
        self._last_t_s[slot] = -np.inf
        self._last_event_ts[slot] = -np.inf
        self._have_blocks[slot] = False
        self._part_open[slot] = False
        self._busy[slot] = False
        self._episodes.pop(slot, None)

    def state_nbytes(self, slot: int | None = None) -> int:
        """Bytes of state per device in the shared columns, plus, for ``slot``, its pending
        episodes (none most of the time). Python object headers are shared by all slots."""
        dense = sum(c.itemsize * (c.size // c.shape[0]) for c in self._columns())
        episodes = self._episodes.get(slot) if slot is not None else None
        if episodes is not None:
            dense += episodes.pend.nbytes + episodes.pend_ts.nbytes + 8 * 2
        return int(dense)

    # -- feeding -------------------------------------------------------------------------
    def feed(
        self, slot: int, t0_s: float, rate_hz: float, samples_g: npt.ArrayLike
    ) -> list[FallEvent]:
        """Process one window of one device; see :meth:`FallDetector.feed`."""
        if not (math.isfinite(rate_hz) and rate_hz > 0):
            raise ValueError(f"rate_hz must be a positive number, got {rate_hz!r}")
        if not math.isfinite(t0_s):
            raise ValueError(f"t0_s must be finite, got {t0_s!r}")
        acc = np.asarray(samples_g, dtype=np.float64)
        if acc.ndim != 2 or acc.shape[1] != 3:
            raise ValueError(f"samples_g must have shape (n, 3), got {acc.shape}")
        events: list[FallEvent] = []
        n = acc.shape[0]
        if n == 0:
            return events
        piece = max(1, int(_MAX_PIECE_S * rate_hz))
        state = _SlotState(self, slot)
        for start in range(0, n, piece):
            state.feed_piece(t0_s + start / rate_hz, rate_hz, acc[start : start + piece], events)
        state.store()
        return events

    def feed_many(
        self,
        slots: Sequence[int] | npt.NDArray[np.intp],
        t0_s: Sequence[float] | FloatArray,
        rate_hz: float,
        samples_g: npt.ArrayLike,
    ) -> list[tuple[int, FallEvent]]:
        """Feed window ``samples_g[i]`` (shape (k, n, 3)) starting at ``t0_s[i]`` to device
        ``slots[i]``; all windows share ``rate_hz`` and length, and the slots must differ.
        Returns (slot, event) pairs."""
        if not (math.isfinite(rate_hz) and rate_hz > 0):
            raise ValueError(f"rate_hz must be a positive number, got {rate_hz!r}")
        acc = np.asarray(samples_g, dtype=np.float64)
        starts = np.asarray(t0_s, dtype=np.float64)
        slot_arr = np.asarray(slots, dtype=np.intp)
        k = slot_arr.shape[0] if slot_arr.ndim == 1 else -1
        if acc.ndim != 3 or acc.shape[0] != k or acc.shape[2] != 3 or starts.shape != (k,):
            raise ValueError(
                f"need slots (k,), t0_s (k,) and samples_g (k, n, 3); got {slot_arr.shape}, "
                f"{starts.shape}, {acc.shape}"
            )
        # Refuse the batch before feeding any of it.
        if not np.isfinite(starts).all():
            raise ValueError("t0_s must be finite")
        if k and (slot_arr.min() < 0 or slot_arr.max() >= self._n_slots):
            raise ValueError("slots must be allocated slots of this bank")
        if np.unique(slot_arr).size != k:
            raise ValueError("a batch takes at most one window per device (slots must differ)")
        n = acc.shape[1]
        events: list[tuple[int, FallEvent]] = []
        if k == 0 or n == 0:
            return events
        slow: Sequence[int] = range(k)
        piece = max(1, int(_MAX_PIECE_S * rate_hz))
        if k >= _MIN_BATCH and n <= piece and rate_hz >= 1.0 / BLOCK_S:  # one piece, no times
            quiet = self._feed_quiet(slot_arr, starts, rate_hz, acc)
            slow = np.flatnonzero(~quiet).tolist()
        for i in slow:
            slot = int(slot_arr[i])
            events += [(slot, ev) for ev in self.feed(slot, float(starts[i]), rate_hz, acc[i])]
        return events

    def _feed_quiet(
        self, slots: npt.NDArray[np.intp], t0_s: FloatArray, rate_hz: float, acc: FloatArray
    ) -> npt.NDArray[np.bool_]:
        """Store the windows that ``feed`` would merely reduce to blocks, all at once.

        Each such window gets exactly the blocks ``_SlotState.ingest_blocks`` would give it
        (same formulas, same summation order), and the ring, the open block and the scalars
        end as ``_SlotState.store_blocks`` would leave them. Returns which windows were
        handled; the others are left untouched for ``feed``.
        """
        n = acc.shape[1]
        period_s = 1.0 / rate_hz
        tie_blocks = _TIME_TIE_S / BLOCK_S
        m2 = _magnitude2(acc)  # (k, n)
        last_t = t0_s + (n - 1) * period_s
        next_t = last_t + period_s
        first = np.floor(t0_s / BLOCK_S + tie_blocks).astype(np.int64)
        last = np.floor((next_t - 1.0 / rate_hz) / BLOCK_S + tie_blocks).astype(np.int64)
        have = self._have_blocks[slots]
        newest = np.where(have, self._newest_block[slots], np.iinfo(np.int64).min // 2)
        part_open = self._part_open[slots]
        part_block = self._part_block[slots]
        with np.errstate(invalid="ignore"):
            peaks = m2.max(axis=1)  # NaN for a window with a NaN row: never quiet
            quiet: npt.NDArray[np.bool_] = (
                (peaks < self._trigger2[self._params_index[slots]])
                & ~self._busy[slots]
                & (t0_s > self._last_t_s[slots] + 0.5 * period_s)
                # Every block written lies past the newest one kept (no rewrite of a
                # complete block after a jittered start): the plain case.
                & (first > newest)
                & (~part_open | ((first >= part_block) & (part_block > newest)))
            )
        if not quiet.any():
            return quiet
        if not quiet.all():
            sel = np.flatnonzero(quiet)
            slots, t0_s, acc, m2 = slots[sel], t0_s[sel], acc[sel], m2[sel]
            last_t, next_t, first, last = last_t[sel], next_t[sel], first[sel], last[sel]
            newest, part_open, part_block = newest[sel], part_open[sel], part_block[sel]
        k = slots.shape[0]  # from here on, the quiet windows only

        # Block sums, as in _SlotState.ingest_blocks, for all windows in one reduceat each.
        n_blocks = last - first + 1
        step = np.arange(int(n_blocks.max()))
        block_ids = first[:, None] + step[None, :]
        cut = np.ceil(((block_ids - tie_blocks) * BLOCK_S - t0_s[:, None]) * rate_hz)
        cut[:, 0] = 0
        valid = step[None, :] < n_blocks[:, None]
        flat_starts = (cut.astype(np.int64) + (np.arange(k) * n)[:, None])[valid]
        sums = np.empty((flat_starts.size, _NCOLS), dtype=np.float64)
        sums[:, :3] = np.add.reduceat(acc.reshape(k * n, 3), flat_starts, axis=0)
        flat_m2 = m2.reshape(k * n)
        sums[:, _SM2] = np.add.reduceat(flat_m2, flat_starts)
        sums[:-1, _N] = flat_starts[1:] - flat_starts[:-1]
        sums[-1, _N] = k * n - flat_starts[-1]
        # The last block is complete if the next sample would belong to a later block.
        last_complete = np.floor(next_t / BLOCK_S + tie_blocks).astype(np.int64) > last
        # Segments: the 50 ms sub-blocks, cut at the block starts too (as in
        # _SlotState._ingest_blocks, by the same arithmetic).
        first_sub = np.floor(t0_s / SUB_S + _TIE_SUBS).astype(np.int64)
        last_sub = np.floor((next_t - 1.0 / rate_hz) / SUB_S + _TIE_SUBS).astype(np.int64)
        sub_step = np.arange(1, int((last_sub - first_sub).max()) + 1)
        sub_ids = first_sub[:, None] + sub_step[None, :]
        sub_cut = np.ceil(((sub_ids - _TIE_SUBS) * SUB_S - t0_s[:, None]) * rate_hz)
        sub_cut_i = sub_cut.astype(np.int64)
        keep = (sub_ids <= last_sub[:, None]) & (sub_cut_i > 0) & (sub_cut_i < n)
        flat_is = np.zeros(k * n, dtype=np.bool_)
        flat_is[(sub_cut_i + (np.arange(k) * n)[:, None])[keep]] = True
        flat_is[flat_starts] = True
        sums[:, _MIN], carry_sum, carry_n = self._sub_block_mins(
            flat_m2,
            flat_is,
            flat_starts,
            first_sub=first_sub,
            last_sub=last_sub,
            slots=slots,
            first=first,
            next_t=next_t,
            last_complete=last_complete,
            part_open=part_open,
            part_block=part_block,
        )
        row_first = np.cumsum(n_blocks) - n_blocks

        # The block left open by the previous window: continued, or complete and stored.
        merge = part_open & (first == part_block)
        if merge.any():
            rows, owners = row_first[merge], slots[merge]
            sums[rows, :_MIN] += self._part[owners, :_MIN]
            sums[rows, _MIN] = np.minimum(sums[rows, _MIN], self._part[owners, _MIN])
        flush = part_open & (first > part_block)

        n_complete = n_blocks - (~last_complete)
        wrote = (n_complete > 0) | flush
        newest_after = np.where(n_complete > 0, first + n_complete - 1, part_block)
        ring_len = self.ring_len
        ring = self._ring.reshape(-1, _NCOLS)  # a view: slot * ring_len + block % ring_len

        # Blocks between the newest kept and the newest written read as empty unless
        # written now (a gap, or a block with no samples); beyond one ring, all of it.
        lo = np.maximum(newest + 1, newest_after - ring_len + 1)
        n_clear = np.where(wrote, newest_after - lo + 1, 0)
        total = int(n_clear.sum())
        if total:
            offs = np.repeat(np.cumsum(n_clear) - n_clear, n_clear)
            ids = np.repeat(lo, n_clear) + (np.arange(total) - offs)
            ring[np.repeat(slots, n_clear) * ring_len + ids % ring_len] = _EMPTY_BLOCK
        keep_flush = flush & (part_block > newest_after - ring_len)
        if keep_flush.any():
            owners = slots[keep_flush]
            ring[owners * ring_len + part_block[keep_flush] % ring_len] = self._part[
                owners, :_NCOLS
            ]
        total = int(n_complete.sum())
        if total:
            offs = np.repeat(np.cumsum(n_complete) - n_complete, n_complete)
            within = np.arange(total) - offs
            owner = np.repeat(np.arange(k), n_complete)
            ids = first[owner] + within
            ring[slots[owner] * ring_len + ids % ring_len] = sums[row_first[owner] + within]
        self._newest_block[slots[wrote]] = newest_after[wrote]
        self._have_blocks[slots[wrote]] = True

        still_open = ~last_complete
        owners = slots[still_open]
        self._part[owners, :_NCOLS] = sums[(row_first + n_blocks - 1)[still_open]]
        self._part[slots, _CSUM] = carry_sum
        self._part[slots, _CN] = carry_n
        self._part_block[owners] = last[still_open]
        self._part_open[slots] = still_open
        self._last_t_s[slots] = last_t
        return quiet

    def _sub_block_mins(
        self,
        flat_m2: FloatArray,
        flat_is: npt.NDArray[np.bool_],
        block_starts: npt.NDArray[np.int64],
        *,
        first_sub: npt.NDArray[np.int64],
        last_sub: npt.NDArray[np.int64],
        slots: npt.NDArray[np.intp],
        first: npt.NDArray[np.int64],
        next_t: FloatArray,
        last_complete: npt.NDArray[np.bool_],
        part_open: npt.NDArray[np.bool_],
        part_block: npt.NDArray[np.int64],
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """``_SlotState._sub_block_mins`` for k windows of n samples at once (``flat_is``
        marks the segment starts of all of them, flattened), with the same arithmetic.
        Folds finished carried sub-blocks into the open blocks' minimum; returns each block's
        lowest complete sub-block mean, and each window's new carry (sum, count; zeros when
        none)."""
        k = slots.shape[0]
        n = flat_m2.size // k
        seg = np.flatnonzero(flat_is)
        seg_sum = np.add.reduceat(flat_m2, seg)
        seg_n = np.diff(seg, append=k * n).astype(np.float64)
        first_seg = np.searchsorted(seg, np.arange(k) * n)
        last_seg = np.append(first_seg[1:], seg.size) - 1
        carried_n = self._part[slots, _CN]
        has_carry = part_open & (carried_n > 0)
        if has_carry.any():
            prev_sub = np.floor(self._last_t_s[slots] / SUB_S + _TIE_SUBS)
            cont = has_carry & (first_sub == prev_sub) & (first == part_block)
            seg_sum[first_seg[cont]] += self._part[slots[cont], _CSUM]
            seg_n[first_seg[cont]] += carried_n[cont]
            fold = has_carry & ~cont
            owners = slots[fold]
            self._part[owners, _MIN] = np.minimum(
                self._part[owners, _MIN], self._part[owners, _CSUM] / self._part[owners, _CN]
            )
        means = seg_sum / seg_n
        next_sub = np.floor(next_t / SUB_S + _TIE_SUBS).astype(np.int64)
        open_sub = (next_sub <= last_sub) & ~last_complete
        carry_sum = np.where(open_sub, seg_sum[last_seg], 0.0)
        carry_n = np.where(open_sub, seg_n[last_seg], 0.0)
        means[last_seg[open_sub]] = np.inf
        mins: FloatArray = np.minimum.reduceat(means, np.searchsorted(seg, block_starts))
        return mins, carry_sum, carry_n


class _SlotState:
    """One device's fall state taken out of its bank for the duration of one window.

    The ring and the open block are views into the bank's columns (written in place); the
    scalars are plain Python values while the window is worked on and go back on ``store``.
    This is the per-device path: any window, including impacts, overlaps and NaN rows.
    """

    __slots__ = (
        "_bank",
        "_cap",
        "_have_blocks",
        "_last_event_ts",
        "_last_t_s",
        "_n_pend",
        "_newest_block",
        "_open_end_s",
        "_part",
        "_part_block",
        "_part_open",
        "_pend",
        "_pend_ts",
        "_ring",
        "_ring_len",
        "_slot",
        "_trigger2",
        "params",
    )

    def __init__(self, bank: FallDetectorBank, slot: int) -> None:
        self._bank = bank
        self._slot = slot
        params_id = int(bank._params_index[slot])
        self.params = bank._params[params_id]
        self._trigger2 = float(bank._trigger2[params_id])
        self._cap = bank._episode_caps[params_id]
        self._ring_len = bank.ring_len
        self._ring = bank._ring[slot]
        self._part = bank._part[slot]
        self._newest_block = int(bank._newest_block[slot])
        self._have_blocks = bool(bank._have_blocks[slot])
        self._part_block = int(bank._part_block[slot])
        self._part_open = bool(bank._part_open[slot])
        self._last_t_s = float(bank._last_t_s[slot])
        self._last_event_ts = float(bank._last_event_ts[slot])
        episodes = bank._episodes.get(slot)
        if episodes is None:
            self._pend_ts = _NO_PEND_TS  # allocated when an episode opens
            self._pend = _NO_PEND
            self._n_pend = 0
            self._open_end_s = -math.inf
        else:
            self._pend_ts, self._pend = episodes.pend_ts, episodes.pend
            self._n_pend = episodes.n_pend
            self._open_end_s = episodes.open_end_s

    def store(self) -> None:
        bank, slot = self._bank, self._slot
        bank._newest_block[slot] = self._newest_block
        bank._have_blocks[slot] = self._have_blocks
        bank._part_block[slot] = self._part_block
        bank._part_open[slot] = self._part_open
        bank._last_t_s[slot] = self._last_t_s
        bank._last_event_ts[slot] = self._last_event_ts
        if self._n_pend:
            bank._episodes[slot] = _Episodes(
                self._pend_ts, self._pend, self._n_pend, self._open_end_s
            )
            bank._busy[slot] = True
        else:
            # No episode under way: the open-search end no longer matters (every later
            # sample is past it), so nothing is kept.
            bank._episodes.pop(slot, None)
            bank._busy[slot] = False

    # ----------------------------------------------------------------------------------
    def feed_piece(
        self, t0_s: float, rate_hz: float, acc: FloatArray, out: list[FallEvent]
    ) -> None:
        period_s = 1.0 / rate_hz
        m2 = _magnitude2(acc)
        times: FloatArray | None = None
        peak_m2 = float(m2.max())
        min_t_s = self._last_t_s + 0.5 * period_s
        if not math.isfinite(peak_m2) or t0_s <= min_t_s or rate_hz < 1.0 / BLOCK_S:
            # Rare path: drop bad rows and samples that overlap what we already have.
            times = cast(FloatArray, t0_s + np.arange(m2.size) * period_s)
            keep = np.isfinite(m2) & (times > min_t_s)
            if not keep.all():
                if not keep.any():
                    return
                acc, m2, times = acc[keep], m2[keep], times[keep]
                peak_m2 = float(m2.max())
            first_t_s = float(times[0])
            last_t_s = float(times[-1])
        else:
            first_t_s = t0_s
            last_t_s = t0_s + (m2.size - 1) * period_s

        self._ingest_blocks(
            acc, m2, t0_s=t0_s, rate_hz=rate_hz, times=times, next_t_s=last_t_s + period_s
        )
        self._last_t_s = last_t_s

        if self._open_end_s >= first_t_s - _TIME_TIE_S or peak_m2 >= self._trigger2:
            self._find_episodes(m2, t0_s=t0_s, rate_hz=rate_hz, times=times, out=out)
        if self._n_pend:
            self._advance_pending(out)

    def _ingest_blocks(
        self,
        acc: FloatArray,
        m2: FloatArray,
        *,
        t0_s: float,
        rate_hz: float,
        times: FloatArray | None,
        next_t_s: float,
    ) -> None:
        """Reduce samples to time-aligned blocks and push the complete ones into the ring."""
        tie_blocks = _TIME_TIE_S / BLOCK_S
        n = m2.size
        if times is None:
            # Evenly spaced samples (the usual case): block starts by arithmetic on a handful
            # of block numbers rather than per sample. Sample i is in block >= k iff
            # t0 + i / rate >= (k - tie) * BLOCK_S, the same rule as _block_of.
            first = _block_of(t0_s)
            last = _block_of(next_t_s - 1.0 / rate_hz)
            start_list = [0] + [
                math.ceil(((k - tie_blocks) * BLOCK_S - t0_s) * rate_hz)
                for k in range(first + 1, last + 1)
            ]
            starts: npt.NDArray[np.int64] | list[int] = start_list
            counts: npt.NDArray[np.int64] | list[int] = [
                b - a for a, b in zip(start_list, [*start_list[1:], n], strict=True)
            ]
            ids: npt.NDArray[np.int64] | None = None  # first, first + 1, ..., last
        else:
            blk = np.floor(times * (1.0 / BLOCK_S) + tie_blocks).astype(np.int64)
            start_arr = np.flatnonzero(blk[1:] != blk[:-1]) + 1
            start_arr = np.concatenate((np.zeros(1, dtype=np.int64), start_arr))
            starts = start_arr
            counts = np.diff(start_arr, append=n)
            ids = blk[start_arr]
            first, last = int(ids[0]), int(ids[-1])
            if ids.size == last - first + 1:
                ids = None  # contiguous after all: the cheap path below
        sums = np.empty((len(counts), _NCOLS), dtype=np.float64)
        sums[:, :3] = np.add.reduceat(acc, starts, axis=0)
        sums[:, _SM2] = np.add.reduceat(m2, starts)
        sums[:, _N] = counts
        # Segments: the 50 ms sub-blocks, cut at the block starts too.
        if times is None:
            # Like the blocks: sample i is in sub-block >= j iff t0 + i / rate >= (j - tie) *
            # SUB_S (FallDetectorBank._feed_quiet does the same for many windows). A handful
            # of numbers: plain Python is cheaper than numpy calls here.
            first_sub = _sub_of(t0_s)
            last_sub = _sub_of(next_t_s - 1.0 / rate_hz)
            cuts = {
                math.ceil(((j - _TIE_SUBS) * SUB_S - t0_s) * rate_hz)
                for j in range(first_sub + 1, last_sub + 1)
            }
            seg_list = sorted(cuts.union(start_list).intersection(range(n)))
            where = {start: i for i, start in enumerate(seg_list)}
            seg = np.array(seg_list, dtype=np.int64)
            seg_n = np.array(
                [b - a for a, b in zip(seg_list, [*seg_list[1:], n], strict=True)],
                dtype=np.float64,
            )
            block_pos: npt.NDArray[np.int64] | list[int] = [where[b] for b in start_list]
        else:
            sub = np.floor(times / SUB_S + _TIE_SUBS).astype(np.int64)
            is_start = np.zeros(n, dtype=np.bool_)
            is_start[starts] = True
            is_start[1:] |= sub[1:] != sub[:-1]
            first_sub, last_sub = int(sub[0]), int(sub[-1])
            seg = np.flatnonzero(is_start)
            seg_n = np.diff(seg, append=n).astype(np.float64)
            block_pos = np.searchsorted(seg, starts)
        sums[:, _MIN], carry_sum, carry_n = self._sub_block_mins(
            m2,
            seg,
            seg_n,
            block_pos,
            first=first,
            first_sub=first_sub,
            last_sub=last_sub,
            next_t_s=next_t_s,
            last_complete=_block_of(next_t_s) > last,
        )
        self._store_blocks(sums, first, last, ids, next_t_s)
        self._part[_CSUM] = carry_sum
        self._part[_CN] = carry_n

    def _sub_block_mins(
        self,
        m2: FloatArray,
        seg: npt.NDArray[np.int64],
        seg_n: FloatArray,
        block_pos: npt.NDArray[np.int64] | list[int],
        *,
        first: int,
        first_sub: int,
        last_sub: int,
        next_t_s: float,
        last_complete: bool,
    ) -> tuple[FloatArray, float, float]:
        """Each block's lowest mean |a|^2 over its complete 50 ms sub-blocks (inf if none).

        A free fall of the body lasts a few hundred milliseconds; the lowest single sample
        would also catch a dip of a few milliseconds (noise, a jolt), which a 200 Hz device
        sees and a 20 Hz one smooths away, so the same movement would look more like free
        fall the faster the device samples. A 50 ms mean (one sample at 20 Hz, ten at
        200 Hz) reads the same at any rate. The sub-block the window ends in may continue
        in the next window: it is carried (sum, count) and returned as the new carry; a
        carried one the window does not continue is folded into the open block's minimum
        here. ``seg`` holds the segments' first samples (sub-blocks, also cut where blocks
        start), ``seg_n`` their sample counts (updated in place when a carry continues),
        ``block_pos`` which segment each block starts with.
        ``FallDetectorBank._sub_block_mins`` does the same for many windows."""
        seg_sum = np.add.reduceat(m2, seg)
        part = self._part
        if self._part_open and part[_CN] > 0:
            if first_sub == _sub_of(self._last_t_s) and first == self._part_block:
                seg_sum[0] += part[_CSUM]
                seg_n[0] += part[_CN]
            else:
                part[_MIN] = min(part[_MIN], part[_CSUM] / part[_CN])
        means = seg_sum / seg_n
        carry_sum = carry_n = 0.0
        if _sub_of(next_t_s) <= last_sub and not last_complete:
            carry_sum, carry_n = float(seg_sum[-1]), float(seg_n[-1])
            means[-1] = math.inf
        mins: FloatArray = np.minimum.reduceat(means, block_pos)
        return mins, carry_sum, carry_n

    def _store_blocks(
        self,
        sums: FloatArray,
        first: int,
        last: int,
        ids: npt.NDArray[np.int64] | None,
        next_t_s: float,
    ) -> None:
        """Merge a window's block sums with the open block, keep complete ones in the ring."""
        if self._part_open:
            if first == self._part_block:
                # Continue the block left open by the previous window.
                sums[0, :_MIN] += self._part[:_MIN]
                sums[0, _MIN] = min(sums[0, _MIN], self._part[_MIN])
            else:
                self._write_blocks(self._part_block, self._part[None, :_NCOLS], None)
            self._part_open = False

        # The last block is complete if the next sample would belong to a later block.
        last_complete = _block_of(next_t_s) > last
        n_complete = sums.shape[0] if last_complete else sums.shape[0] - 1
        if n_complete:
            self._write_blocks(first, sums[:n_complete], None if ids is None else ids[:n_complete])
        if not last_complete:
            self._part_block = last
            self._part[:_NCOLS] = sums[-1]
            self._part_open = True

    def _write_blocks(
        self, first: int, rows: FloatArray, ids: npt.NDArray[np.int64] | None
    ) -> None:
        """Store complete blocks: ``first``, ``first + 1``, ... or, if given, ``ids``."""
        last = first + rows.shape[0] - 1 if ids is None else int(ids[-1])
        first_new = self._newest_block + 1
        if self._have_blocks and ids is None and first == first_new:
            pass  # continues what the ring holds: nothing to clear
        elif not self._have_blocks or last - first_new >= self._ring_len:
            self._ring[:] = _EMPTY_BLOCK
        elif last >= first_new:
            # Blocks skipped by a gap must read as empty, not as stale data.
            self._ring[np.arange(first_new, last + 1) % self._ring_len] = _EMPTY_BLOCK
        lo = first % self._ring_len
        if ids is None and lo + rows.shape[0] <= self._ring_len:
            self._ring[lo : lo + rows.shape[0]] = rows  # the usual case: a plain slice
        elif ids is None and rows.shape[0] <= self._ring_len:
            split = self._ring_len - lo  # wraps around the end: two slices
            self._ring[lo:] = rows[:split]
            self._ring[: rows.shape[0] - split] = rows[split:]
        else:
            slots = np.arange(first, last + 1) if ids is None else ids
            self._ring[slots % self._ring_len] = rows
        self._newest_block = max(last, self._newest_block)
        self._have_blocks = True

    def _block_stats(self, first: int, last: int) -> tuple[list[float], int]:
        """Column totals (the min column: minimum) over blocks first..last, inclusive, and
        how many of them hold samples. Empty and unheld blocks contribute nothing."""
        lo = max(first, self._newest_block - self._ring_len + 1)
        hi = min(last, self._newest_block)
        if not self._have_blocks or hi < lo:
            return [0.0, 0.0, 0.0, 0.0, 0.0, math.inf], 0
        a, b = lo % self._ring_len, hi % self._ring_len
        rows = (
            self._ring[a : b + 1]
            if a <= b
            else np.concatenate((self._ring[a:], self._ring[: b + 1]))
        )
        tot = rows.sum(axis=0, dtype=np.float64).tolist()
        tot[_MIN] = float(rows[:, _MIN].min())
        return tot, int(np.count_nonzero(rows[:, _N]))

    # ----------------------------------------------------------------------------------
    def _find_episodes(
        self,
        m2: FloatArray,
        *,
        t0_s: float,
        rate_hz: float,
        times: FloatArray | None,
        out: list[FallEvent],
    ) -> None:
        """Open impact episodes on samples above the trigger and track each one's peak.

        ``times`` is None for evenly spaced samples (sample j at t0 + j / rate), which spares
        building a time array on this path; otherwise it holds each sample's time.
        """
        period_s = 1.0 / rate_hz
        trigger2 = self.params.trigger_g**2
        pos = 0
        n = m2.size
        while pos < n:
            t_pos = t0_s + pos * period_s if times is None else float(times[pos])
            if self._n_pend and self._open_end_s >= t_pos - _TIME_TIE_S:
                # The newest episode's peak search covers samples up to its end.
                limit_s = self._open_end_s + _TIME_TIE_S
                if times is None:
                    stop = min(n, math.floor((limit_s - t0_s) * rate_hz) + 1)
                else:
                    stop = int(np.searchsorted(times, limit_s, side="right"))
                stop = max(stop, pos + 1)
                seg = m2[pos:stop]
                k = pos + int(seg.argmax())
                row = self._n_pend - 1
                if m2[k] > self._pend_ts[row, _T_PEAK]:
                    t_k = t0_s + k * period_s if times is None else float(times[k])
                    self._pend_ts[row] = t_k, m2[k]
                # Area of the magnitude above 1 g: the velocity the impact took away (g s).
                # Low-pass filtering keeps areas, so unlike the peak it hardly depends on
                # the sample rate. sum(max(|a|, 1)) - count = sum of the excess over 1 g.
                excess_gs = float(np.maximum(np.sqrt(seg), 1.0).sum()) - seg.size
                self._pend[row, _P_AREA] += excess_gs * period_s
                pos = stop
                continue
            above = m2[pos:] >= trigger2
            first = int(above.argmax())
            if not above[first]:
                return
            pos += first
            if self._n_pend == self._cap:
                # Older episodes may be decidable already (the ring holds this whole piece).
                self._advance_pending(out)
            if self._n_pend == self._cap:
                # Not reachable with the sizing in __init__; never grow: drop the weakest.
                weakest = int(np.argmin(self._pend_ts[: self._n_pend, _T_PEAK]))
                self._pend[weakest : self._n_pend - 1] = self._pend[weakest + 1 : self._n_pend]
                self._pend_ts[weakest : self._n_pend - 1] = self._pend_ts[
                    weakest + 1 : self._n_pend
                ]
                self._n_pend -= 1
            row = self._n_pend
            t_start = t0_s + pos * period_s if times is None else float(times[pos])
            if not self._pend.shape[0]:
                self._pend_ts = np.zeros((self._cap, 2), dtype=np.float64)
                self._pend = np.zeros((self._cap, _PCOLS), dtype=np.float32)
            self._pend[row] = 0.0
            self._pend_ts[row] = t_start, m2[pos]
            self._n_pend += 1
            self._open_end_s = t_start + self.params.peak_search_s

    def _advance_pending(self, out: list[FallEvent]) -> None:
        """Compute pre-impact features and decisions for episodes whose blocks are in."""
        p = self.params
        kept: list[int] = []
        stages = self._pend[: self._n_pend, _P_STAGE].tolist()
        peaks_ts = self._pend_ts[: self._n_pend, _T_TS].tolist()
        for row, (stage, peak_ts) in enumerate(zip(stages, peaks_ts, strict=True)):
            if stage == 0:
                # Pre-impact features need the final peak and the block holding it.
                is_newest = row == self._n_pend - 1
                search_done = not is_newest or self._last_t_s > self._open_end_s + _TIME_TIE_S
                if not search_done or self._newest_block < _block_of(peak_ts):
                    kept.append(row)
                    continue
                if not self._compute_pre(row, peak_ts):
                    continue  # no impact: most steps and jolts end here, cheaply
            last_block = _block_of(peak_ts + p.stillness_delay_s + p.stillness_s) - 1
            if self._newest_block < last_block:
                kept.append(row)
                continue
            event = self._decide(row, peak_ts, last_block)
            if event is not None:
                out.append(event)
        if len(kept) < self._n_pend:
            self._pend[: len(kept)] = self._pend[kept]
            self._pend_ts[: len(kept)] = self._pend_ts[kept]
            self._n_pend = len(kept)

    def _compute_pre(self, row: int, peak_ts: float) -> bool:
        """Free-fall dip and gravity before the impact; False if it is no impact at all."""
        p = self.params
        peak_g = math.sqrt(float(self._pend_ts[row, _T_PEAK]))
        hard = peak_g >= p.impact_g or float(self._pend[row, _P_AREA]) >= p.impact_area_gs
        if not hard and peak_g < p.soft_impact_g:
            return False
        ff, ff_blocks = self._block_stats(
            _block_of(peak_ts - p.freefall_window_s), _block_of(peak_ts)
        )
        ff_min_m2 = ff[_MIN] if ff_blocks else math.nan
        if not hard and not ff_min_m2 <= p.freefall_g**2:
            return False
        first_pre = _block_of(peak_ts - p.pre_start_s)
        pre, pre_blocks = self._block_stats(first_pre, _block_of(peak_ts - p.pre_end_s) - 1)
        if not pre_blocks:
            # The stream (or a gap) ended shortly before the impact: use what there is up to
            # the start of the descent rather than nothing.
            pre, pre_blocks = self._block_stats(
                first_pre, _block_of(peak_ts - _PRE_FALLBACK_END_S) - 1
            )
        if pre_blocks:
            n = pre[_N]
            gx, gy, gz = pre[_SX] / n, pre[_SY] / n, pre[_SZ] / n
            pre_var = max(0.0, pre[_SM2] / n - (gx * gx + gy * gy + gz * gz))
        else:
            gx = gy = gz = pre_var = math.nan  # no history (stream start or a gap)
        self._pend[row, :_P_AREA] = (gx, gy, gz, ff_min_m2, pre_var, 1.0)
        return True

    def _decide(self, row: int, peak_ts: float, last_block: int) -> FallEvent | None:
        p = self.params
        first_block = _block_of(peak_ts + p.stillness_delay_s)
        post, post_blocks = self._block_stats(first_block, last_block)
        if post_blocks * 2 < last_block - first_block + 1:
            return None  # too little data after the impact to confirm a fall
        n = post[_N]
        mx, my, mz = post[_SX] / n, post[_SY] / n, post[_SZ] / n
        post_m2 = mx * mx + my * my + mz * mz
        post_std_g = math.sqrt(max(0.0, post[_SM2] / n - post_m2))
        gx, gy, gz, ff_min_m2, pre_var, _, area_gs = self._pend[row].tolist()
        pre_m2 = gx * gx + gy * gy + gz * gz
        if pre_m2 > 0 and post_m2 > 0:
            cos = (gx * mx + gy * my + gz * mz) / math.sqrt(pre_m2 * post_m2)
            tilt_deg = math.degrees(math.acos(max(-1.0, min(1.0, cos))))
        else:
            tilt_deg = math.nan  # NaN pre-impact gravity: comparisons above are False
        peak_g = math.sqrt(float(self._pend_ts[row, _T_PEAK]))
        evidence = {
            "freefall_min_g": math.sqrt(ff_min_m2) if math.isfinite(ff_min_m2) else math.nan,
            "tilt_deg": tilt_deg,
            "post_std_g": post_std_g,
            "post_mean_g": math.sqrt(post_m2),
            "impact_area_gs": area_gs,
            "pre_std_g": math.sqrt(pre_var) if math.isfinite(pre_var) else math.nan,
        }
        if not self._bank.decide(p, peak_g, evidence):
            return None
        if peak_ts - self._last_event_ts < p.refractory_s - _TIME_TIE_S:
            return None  # (the tie margin keeps "exactly refractory_s later" chunk-proof)
        self._last_event_ts = peak_ts
        return FallEvent(
            impact_ts=peak_ts,
            detected_ts=(last_block + 1) * BLOCK_S,
            peak_g=peak_g,
            evidence=evidence,
        )


class FallDetector:
    """One device's streaming fall detector; feed it windows in time order.

    A view onto a one-slot :class:`FallDetectorBank`: the same code, so a device's events
    are the same whether it is fed alone, in a bank, or through the rule runner.
    """

    __slots__ = ("_bank", "params")

    def __init__(self, params: FallParams = FallParams()) -> None:
        self.params = params
        self._bank = FallDetectorBank(1, params, capacity=1)
        # Subclasses (the tuning bench) may override accepts(); the bank asks it.
        self._bank.decide = lambda _params, peak_g, evidence: self.accepts(peak_g, evidence)

    def feed(self, t0_s: float, rate_hz: float, samples_g: npt.ArrayLike) -> list[FallEvent]:
        """Process one window; return the falls decided with this window's data.

        ``samples_g`` is an (n, 3) array in g whose first sample is at ``t0_s`` and whose
        samples are ``1 / rate_hz`` apart. Rows with NaN or inf are ignored, samples that are
        not later than the last accepted one (overlap, replays) are dropped, and a gap simply
        leaves blocks empty. A rate change between windows needs nothing special because the
        history is kept per unit of time.
        """
        return self._bank.feed(0, t0_s, rate_hz, samples_g)

    def state_nbytes(self) -> int:
        """Bytes of per-device state (array payloads; pending episodes included).

        In a bank these are the device's share of the shared columns; a lone detector adds
        the headers of its own small arrays (see docs/fall-detection.md).
        """
        return self._bank.state_nbytes(0)

    def accepts(self, peak_g: float, evidence: Mapping[str, float]) -> bool:
        """The decision rule on one episode's figures (also used by the tuning bench)."""
        return fall_rule(self.params, peak_g, evidence)


def fall_rule(params: FallParams, peak_g: float, evidence: Mapping[str, float]) -> bool:
    """Impact (hard, or soft after free fall) and a turn of gravity and stillness after."""
    ff_min_g = evidence["freefall_min_g"]
    hard = peak_g >= params.impact_g or evidence["impact_area_gs"] >= params.impact_area_gs
    soft = peak_g >= params.soft_impact_g and ff_min_g <= params.freefall_g
    if not (hard or soft):
        return False
    tilt = evidence["tilt_deg"]
    # Without history before the impact (stream start, gap) the turn cannot be measured;
    # then stillness and impact alone decide, rather than missing a fall.
    if math.isfinite(tilt) and tilt < params.tilt_deg:
        return False
    if evidence["pre_std_g"] > params.pre_std_max_g:  # NaN (no history) passes
        return False
    return evidence["post_std_g"] <= params.stillness_std_g
