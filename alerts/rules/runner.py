"""The streaming rule runner: readings in, detections out, with small per-device state.

One ``RuleRunner`` serves the server, the evaluation CLI and backtests alike: feed it readings
with ``process`` (or ``process_batch``) and call ``tick`` regularly for the timer rules. It
owns time, lateness and per-device state; the detectors it calls are pure or per-device.

Event time. Rules run on the device's clock (``env.device_ts``). A reading more than
``lateness_allowance_s`` older than the newest reading already seen from the same device is
too late: acting on it could re-raise something that has since cleared, so it returns nothing
and is counted in ``counters["late_dropped"]``. The one exception is an SOS press, which is
always passed on: a device re-sends its SOS with the original time until it hears
"accepted", and a lost SOS costs more than a duplicate (the incident layer merges repeats).
Within the allowance, readings are used; the vitals state ignores a sample older than the
last one it used for that parameter (it cannot rewind a run).

Offline. A device is offline after a ``DeviceStatus`` "offline" (the broker's last will), an
explicit ``set_device_online(device_id, False)``, or ``offline_after_s`` without any message
(seen by ``tick``). Going offline emits one ``device_offline`` detection; while offline the
device's vitals are not evaluated and its home timers are not run (an offline gateway says
nothing about the resident). SOS, falls and smoke/gas/water are never inhibited: if such a
message arrives, the device is evidently talking.
"""

from __future__ import annotations

import array
import collections
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import numpy as np

from alerts.rules.config import RulesConfig, RulesConfigError, RuleSet
from alerts.rules.detection import Detection, DetectionKind, Evidence, Severity, make_detection
from alerts.rules.fall import FallDetectorBank, FallEvent, FallParams, ring_len_for
from alerts.rules.home import Finding, HomeBank, HomeSchedule
from alerts.rules.news2 import PARAMETERS as NEWS2_PARAMETERS
from alerts.rules.news2 import RiskBand, response_for
from alerts.rules.vitals import N_VITALS, VITAL_INDEX, VitalsBank, VitalsChange, VitalsLimits
from devices.readings import AccelWindow, DeviceStatus, HomeEvent, Reading, SosPress, Vitals

logger = logging.getLogger(__name__)

ResidentLookup = Callable[[str], str | None]
OverrideLookup = Callable[[str], Mapping[str, Any] | None]

# Why a device is offline; data arriving ends only the inferred kind.
_OFFLINE_STATUS: Final = "status"
_OFFLINE_MANUAL: Final = "manual"
_OFFLINE_SILENT: Final = "no_messages"

_NEWS2_SEVERITY: Final = {
    RiskBand.LOW_MEDIUM: Severity.LOW,
    RiskBand.MEDIUM: Severity.MEDIUM,
    RiskBand.HIGH: Severity.HIGH,
}
_LEVEL_WORD: Final = {1: "warn", 2: "critical"}
# Fewer accelerometer windows of one kind than this in a batch go one by one.
_MIN_ACCEL_BATCH: Final = 4


class _ResidentRules:
    """A resident's rule set with its compiled forms, shared by the resident's devices."""

    __slots__ = (
        "fall_by_position",
        "fall_params",
        "home",
        "lateness_allowance_s",
        "rules",
        "vitals_limits_index",
    )

    def __init__(self, rules: RuleSet, vitals_limits_index: int) -> None:
        self.rules = rules
        self.lateness_allowance_s = rules.device.lateness_allowance_s  # read on every reading
        self.vitals_limits_index = vitals_limits_index
        self.home = HomeSchedule.from_rules(rules.home)
        self.fall_params = FallParams.from_dict(rules.fall)
        self.fall_by_position: dict[str | None, FallParams] = {}

    def fall_params_for(self, position: str | None) -> FallParams:
        """The resident's fall overrides on top of the preset for where the device is worn
        (a wrist moves on its own and has its own cross-validated thresholds)."""
        params = self.fall_by_position.get(position)
        if params is None:
            try:
                base = FallParams.for_position(position)
            except ValueError:  # a position we have no preset for: trunk defaults
                base = FallParams()
            params = FallParams.from_dict(self.rules.fall, base=base)
            self.fall_by_position[position] = params
        return params


class _Device:
    """What the runner keeps about one device as Python values (fixed slots). Its numbers
    live in the runner's per-device columns at index ``row`` (``_DeviceColumns``), which is
    also its slot in the vitals bank."""

    __slots__ = ("battery_low", "device_id", "offline_reason", "resident_id", "row", "rules")

    def __init__(
        self, device_id: str, resident_id: str | None, rules: _ResidentRules, row: int
    ) -> None:
        self.device_id = device_id
        self.resident_id = resident_id
        self.rules = rules
        self.row = row
        self.offline_reason: str | None = None
        self.battery_low = False


class _DeviceColumns:
    """Per-device numbers of the runner, one entry per device row, in compact arrays
    (8 bytes a float, 4 an int, no Python object per value)."""

    __slots__ = ("fall_bank", "fall_slot", "heard_ts", "home_slot", "latest_ts")

    def __init__(self) -> None:
        self.latest_ts = array.array("d")  # newest device time seen (any reading)
        self.heard_ts = array.array("d")  # newest receive time (server clock), for liveness
        # The fall detector's state: a slot in one of the runner's banks (index into its
        # list of banks), taken on the first accelerometer window; -1: none.
        self.fall_bank = array.array("b")
        self.fall_slot = array.array("i")
        # The home rules' state: a slot in the runner's HomeBank, taken on the first home
        # event; -1: none.
        self.home_slot = array.array("i")

    def append(self) -> int:
        """Add a row for a new device; returns it."""
        self.latest_ts.append(-math.inf)
        self.heard_ts.append(-math.inf)
        self.fall_bank.append(-1)
        self.fall_slot.append(-1)
        self.home_slot.append(-1)
        return len(self.latest_ts) - 1

    def nbytes_per_device(self) -> int:
        """Bytes per device in these columns."""
        columns = (self.latest_ts, self.heard_ts, self.fall_bank, self.fall_slot, self.home_slot)
        return sum(c.itemsize for c in columns)


class RuleRunner:
    """Per-device streaming evaluation of every rule; see the module docstring."""

    def __init__(
        self,
        config: RulesConfig,
        *,
        resident_for: ResidentLookup,
        overrides_for: OverrideLookup | None = None,
        initial_capacity: int = 1024,
    ) -> None:
        self._config = config
        self._resident_for = resident_for
        self._overrides_for = overrides_for
        self._devices: dict[str, _Device] = {}
        self._residents: dict[str | None, _ResidentRules] = {}
        self._vitals = VitalsBank(initial_capacity)
        self._initial_capacity = initial_capacity
        # Fall state for all devices, in shared columns; one bank per ring length (only a
        # resident with unusual time spans needs a second one).
        self._fall_banks: dict[int, FallDetectorBank] = {}
        self._fall_bank_list: list[FallDetectorBank] = []  # the same, by _DeviceColumns index
        self._cols = _DeviceColumns()
        self._homes: HomeBank | None = None  # built on the first home event
        self._fall_capacity = initial_capacity  # of the first fall bank, when it is built
        self._home_capacity = initial_capacity
        self.counters: collections.Counter[str] = collections.Counter()

    def size_for(self, *, devices: int, wearables: int, homes: int) -> None:
        """Size the state columns for the fleet the registry lists, before readings flow.

        Columns grown on demand keep up to a quarter of their slots spare (bench/rules.py:
        1,147 B per device with every kind of state, against 989 B presized); sized here, a
        wearable's fall slots and a home's slots are only allocated for devices of that kind.
        Only state not yet in use is resized: later devices still grow the columns.
        """

        def planned(n: int) -> int:
            return max(64, n + n // 20 + 16)  # 5 % for devices added while running

        if not self._devices and not self._residents:
            self._vitals = VitalsBank(planned(devices))
        if not self._fall_banks:
            self._fall_capacity = planned(wearables)
        if self._homes is None:
            self._home_capacity = planned(homes)

    # -- devices and rules -------------------------------------------------------------
    def _rules_for(self, resident_id: str | None) -> _ResidentRules:
        cached = self._residents.get(resident_id)
        if cached is not None:
            return cached
        rules = self._config.for_resident(resident_id)
        override = None
        if resident_id is not None and self._overrides_for is not None:
            override = self._overrides_for(resident_id)
        if override:
            try:
                rules = self._config.with_override(resident_id, override)
            except RulesConfigError as exc:
                # A bad database override must not blind the resident's devices: fall back
                # to the file's rules, loudly.
                logger.error("ignoring invalid rule override: %s", exc)
                self.counters["bad_override"] += 1
        index = self._vitals.add_limits(VitalsLimits.from_rules(rules))
        compiled = _ResidentRules(rules, index)
        self._residents[resident_id] = compiled
        return compiled

    def _device(self, device_id: str) -> _Device:
        device = self._devices.get(device_id)
        if device is None:
            resident_id = self._resident_for(device_id)
            rules = self._rules_for(resident_id)
            slot = self._vitals.add_device(rules.vitals_limits_index)
            row = self._cols.append()
            assert row == slot  # vitals slots are handed out in order and never released
            device = _Device(device_id, resident_id, rules, row)
            self._devices[device_id] = device
        return device

    def refresh_device(self, device_id: str) -> None:
        """Look the device's resident up again (after a reassignment) and reset its state."""
        device = self._devices.get(device_id)
        if device is None:
            return
        device.resident_id = self._resident_for(device_id)
        device.rules = self._rules_for(device.resident_id)
        self._vitals.reset_slot(device.row, device.rules.vitals_limits_index)
        self._drop_fall(device)
        home_slot = self._cols.home_slot[device.row]
        if home_slot >= 0 and self._homes is not None:
            self._homes.release(home_slot)
        self._cols.home_slot[device.row] = -1
        device.battery_low = False

    def invalidate_resident(self, resident_id: str | None) -> None:
        """Re-read a resident's overrides (they changed); open alerts and timers are kept."""
        self._residents.pop(resident_id, None)
        for device in self._devices.values():
            if device.resident_id == resident_id:
                device.rules = self._rules_for(resident_id)
                self._vitals.set_limits(device.row, device.rules.vitals_limits_index)
                self._drop_fall(device)  # rebuilt with the new parameters on the next window

    def _fall_of(self, device: _Device, position: str | None) -> tuple[FallDetectorBank, int]:
        """The device's fall-detector slot, taken (with the preset for where the device is
        worn) on its first window."""
        cols, row = self._cols, device.row
        index = cols.fall_bank[row]
        if index >= 0:
            return self._fall_bank_list[index], cols.fall_slot[row]
        params = device.rules.fall_params_for(position)
        ring_len = ring_len_for(params)
        bank = self._fall_banks.get(ring_len)
        if bank is None:
            capacity = self._fall_capacity if not self._fall_banks else 64
            bank = FallDetectorBank(capacity=capacity, ring_len=ring_len)
            self._fall_banks[ring_len] = bank
            self._fall_bank_list.append(bank)
        cols.fall_bank[row] = self._fall_bank_list.index(bank)
        cols.fall_slot[row] = bank.add_device(params)
        return bank, cols.fall_slot[row]

    def _fall_bank_of(self, device: _Device) -> FallDetectorBank | None:
        index = self._cols.fall_bank[device.row]
        return self._fall_bank_list[index] if index >= 0 else None

    def _drop_fall(self, device: _Device) -> None:
        bank = self._fall_bank_of(device)
        if bank is not None:
            bank.release(self._cols.fall_slot[device.row])
        self._cols.fall_bank[device.row] = -1
        self._cols.fall_slot[device.row] = -1

    def fall_params(self, device_id: str) -> FallParams | None:
        """The fall thresholds a device is checked against (None before its first window)."""
        device = self._devices.get(device_id)
        bank = None if device is None else self._fall_bank_of(device)
        if device is None or bank is None:
            return None
        return bank.params_of(self._cols.fall_slot[device.row])

    def __len__(self) -> int:
        return len(self._devices)

    def vitals_status(self, device_id: str, now_ts: float) -> dict[str, str]:
        """Each vital sign's state for a device ("no_data" when stale or never seen)."""
        device = self._devices.get(device_id)
        if device is None:
            return dict.fromkeys(VITAL_INDEX, "no_data")
        return {k: str(v) for k, v in self._vitals.status(device.row, now_ts).items()}

    def is_online(self, device_id: str) -> bool:
        """False while the device is known to be offline (unknown devices count as online)."""
        device = self._devices.get(device_id)
        return device is None or device.offline_reason is None

    def vitals_state_nbytes(self) -> int:
        """Bytes of vitals/NEWS2 state per device in the shared columns."""
        return self._vitals.state_nbytes()

    def fall_state_nbytes(self) -> int:
        """Bytes of fall-detector state per wearable in the shared columns (pending impact
        episodes, which exist only for a few seconds after an impact, come on top)."""
        return FallDetectorBank(capacity=1).state_nbytes()

    # -- helpers -----------------------------------------------------------------------
    def _detection(
        self,
        device: _Device,
        kind: DetectionKind,
        *,
        event_ts: float,
        detected_ts: float,
        evidence: Evidence | None = None,
        severity: Severity | None = None,
        clears: bool = False,
    ) -> Detection:
        self.counters[f"detections.{kind.value}"] += 1
        return make_detection(
            device_id=device.device_id,
            resident_id=device.resident_id,
            kind=kind,
            event_ts=event_ts,
            detected_ts=detected_ts,
            evidence=evidence,
            severity=severity,
            clears=clears,
        )

    def _from_finding(self, device: _Device, finding: Finding, detected_ts: float) -> Detection:
        return self._detection(
            device,
            finding.kind,
            event_ts=finding.event_ts,
            detected_ts=detected_ts,
            evidence=finding.evidence,
            clears=finding.clears,
        )

    def _go_offline(
        self, device: _Device, reason: str, ts: float, now_ts: float
    ) -> list[Detection]:
        if device.offline_reason is not None:
            if reason == _OFFLINE_MANUAL:
                device.offline_reason = reason  # manual wins: only a manual online ends it
            return []
        device.offline_reason = reason
        evidence: Evidence = {"reason": reason, "last_event_ts": self._cols.latest_ts[device.row]}
        return [
            self._detection(
                device,
                DetectionKind.DEVICE_OFFLINE,
                event_ts=ts,
                detected_ts=now_ts,
                evidence=evidence,
            )
        ]

    def _go_online(self, device: _Device, ts: float, now_ts: float) -> list[Detection]:
        reason, device.offline_reason = device.offline_reason, None
        if reason is None:
            return []
        home_slot = self._cols.home_slot[device.row]
        if home_slot >= 0 and self._homes is not None:
            self._homes.resume(home_slot, ts)
        return [
            self._detection(
                device,
                DetectionKind.DEVICE_OFFLINE,
                event_ts=ts,
                detected_ts=now_ts,
                evidence={"reason": reason},
                clears=True,
            )
        ]

    def _battery(
        self, device: _Device, battery_pct: float | None, ts: float, now_ts: float
    ) -> list[Detection]:
        if battery_pct is None or not math.isfinite(battery_pct):
            return []
        rules = device.rules.rules.battery
        if not device.battery_low and battery_pct < rules.low_pct:
            device.battery_low = True
        elif device.battery_low and battery_pct >= rules.clear_pct:
            device.battery_low = False
        else:
            return []
        return [
            self._detection(
                device,
                DetectionKind.BATTERY_LOW,
                event_ts=ts,
                detected_ts=now_ts,
                evidence={"battery_pct": battery_pct},
                clears=not device.battery_low,
            )
        ]

    # -- readings ----------------------------------------------------------------------
    def _admit(self, device: _Device, reading: Reading) -> bool:
        """Lateness and liveness bookkeeping; False when the reading must not be used."""
        self.counters["readings"] += 1
        env = reading.env
        ts = env.device_ts
        cols, row = self._cols, device.row
        latest_ts = cols.latest_ts[row]
        if ts < latest_ts - device.rules.lateness_allowance_s and not (
            isinstance(reading, SosPress) and reading.action == "press"
        ):
            self.counters["late_dropped"] += 1
            return False
        if ts > latest_ts:
            cols.latest_ts[row] = ts
        cols.heard_ts[row] = max(cols.heard_ts[row], env.received_ts)
        if cols.home_slot[row] >= 0:
            self._observe_clock(device, ts, env.received_ts)
        return True

    def process(self, reading: Reading) -> list[Detection]:
        """Evaluate one reading of any kind; returns the detections it decides."""
        device = self._device(reading.env.device_id)
        if not self._admit(device, reading):
            return []
        if isinstance(reading, AccelWindow) and device.offline_reason is None:
            return self._accel(device, reading)  # the bulk of all traffic: shortest path
        detections = self._resume_if_silent(device, reading)
        if isinstance(reading, Vitals):
            detections.extend(self._vitals_pre(device, reading))
            if device.offline_reason is None:
                detections.extend(self._run_vitals_one(device, reading))
        else:
            detections.extend(self._process_other(device, reading))
        return detections

    def process_batch(self, readings: Iterable[Reading]) -> list[Detection]:
        """Like ``process`` for each reading, with vitals and accelerometer windows evaluated
        across devices at once.

        Each device's readings are still applied in order, and the detections, their
        evidence and every device's state are those of one-at-a-time ``process``; only the
        order of detections differs: vitals come out when their array step runs, falls at
        the end of the batch (the fall detector's state is read by nothing else).
        """
        detections: list[Detection] = []
        pending: dict[str, tuple[_Device, Vitals]] = {}
        accel: list[tuple[_Device, AccelWindow]] = []
        devices = self._devices
        latest_col, heard_col, home_col = (
            self._cols.latest_ts,
            self._cols.heard_ts,
            self._cols.home_slot,
        )
        admitted = late = 0
        try:
            for reading in readings:
                env = reading.env
                device = devices.get(env.device_id) or self._device(env.device_id)
                if pending and device.device_id in pending:
                    # One sample per device per array step: flush before its next one.
                    detections.extend(self._run_vitals(list(pending.values())))
                    pending.clear()
                # _admit, inlined (this loop runs for every reading of the server), with
                # the counters added up once.
                ts = env.device_ts
                row = device.row
                latest_ts = latest_col[row]
                if ts < latest_ts - device.rules.lateness_allowance_s and not (
                    isinstance(reading, SosPress) and reading.action == "press"
                ):
                    late += 1
                    continue
                admitted += 1
                if ts > latest_ts:
                    latest_col[row] = ts
                heard_col[row] = max(heard_col[row], env.received_ts)
                if home_col[row] >= 0:
                    self._observe_clock(device, ts, env.received_ts)
                if device.offline_reason == _OFFLINE_SILENT:
                    detections.extend(self._resume_if_silent(device, reading))
                if isinstance(reading, AccelWindow):
                    accel.append((device, reading))  # falls are never inhibited offline
                elif isinstance(reading, Vitals):
                    detections.extend(self._vitals_pre(device, reading))
                    if device.offline_reason is None:
                        pending[device.device_id] = (device, reading)
                else:
                    detections.extend(self._process_other(device, reading))
        finally:
            self.counters["readings"] += admitted + late
            if late:
                self.counters["late_dropped"] += late
        if pending:
            detections.extend(self._run_vitals(list(pending.values())))
        if accel:
            detections.extend(self._run_accel(accel))
        return detections

    def _observe_clock(self, device: _Device, device_ts: float, received_ts: float) -> None:
        # The home timers run on the gateway's clock, estimated from its admitted readings.
        homes = self._homes
        assert homes is not None  # a device has a home slot only once the bank exists
        homes.observe_clock(self._cols.home_slot[device.row], device_ts, received_ts)

    def _resume_if_silent(self, device: _Device, reading: Reading) -> list[Detection]:
        # Offline only because it went quiet: any message proves it is back.
        if device.offline_reason == _OFFLINE_SILENT:
            return self._go_online(device, reading.env.device_ts, reading.env.received_ts)
        return []

    def _vitals_pre(self, device: _Device, reading: Vitals) -> list[Detection]:
        detections = self._battery(
            device, reading.battery_pct, reading.env.device_ts, reading.env.received_ts
        )
        if device.offline_reason is not None:
            self.counters["vitals_inhibited_offline"] += 1
        return detections

    def _process_other(self, device: _Device, reading: Reading) -> list[Detection]:
        env = reading.env
        if isinstance(reading, SosPress):
            kind = DetectionKind.SOS if reading.action == "press" else DetectionKind.SOS_CANCEL
            evidence: Evidence = {
                "seq": env.seq,
                "lat": reading.lat,
                "lon": reading.lon,
                "accuracy_m": reading.accuracy_m,
                "late": env.device_ts < self._cols.latest_ts[device.row],
            }
            return [
                self._detection(
                    device,
                    kind,
                    event_ts=env.device_ts,
                    detected_ts=env.received_ts,
                    evidence=evidence,
                )
            ]
        if isinstance(reading, AccelWindow):
            return self._accel(device, reading)
        if isinstance(reading, HomeEvent):
            homes = self._homes
            if homes is None:
                homes = self._homes = HomeBank(self._home_capacity)
            home_slot = self._cols.home_slot[device.row]
            if home_slot < 0:
                home_slot = self._cols.home_slot[device.row] = homes.add(env.device_ts)
                homes.observe_clock(home_slot, env.device_ts, env.received_ts)
            findings = homes.on_event(home_slot, reading, device.rules.home)
            return [self._from_finding(device, f, env.received_ts) for f in findings]
        if isinstance(reading, DeviceStatus):
            detections = self._battery(device, reading.battery_pct, env.device_ts, env.received_ts)
            if reading.state == "offline":
                detections.extend(
                    self._go_offline(device, _OFFLINE_STATUS, env.device_ts, env.received_ts)
                )
            elif device.offline_reason != _OFFLINE_MANUAL:
                detections.extend(self._go_online(device, env.device_ts, env.received_ts))
            return detections
        raise TypeError(f"not a Reading: {type(reading).__name__}")

    def _accel(self, device: _Device, window: AccelWindow) -> list[Detection]:
        bank, slot = self._fall_of(device, window.position)
        try:
            samples_g = np.frombuffer(window.samples_g, "<f4").reshape(-1, 3)
            self.counters["accel_samples"] += samples_g.shape[0]
            events = bank.feed(slot, window.env.device_ts, window.rate_hz, samples_g)
        except ValueError:  # a truncated payload or a rate the detector refuses
            self.counters["accel_rejected"] += 1
            logger.warning("unusable accel window from %s", device.device_id, exc_info=True)
            return []
        return [self._fall_detection(device, event, window) for event in events]

    def _run_accel(self, windows: list[tuple[_Device, AccelWindow]]) -> list[Detection]:
        """A batch's accelerometer windows, through the banks many devices at a time.

        Rounds: the first window of each device goes in the first round, its next one in
        the next, and so on, so each device's windows are fed in order and a bank call never
        holds two of one device. Within a round, windows of the same bank, rate and length
        are fed together; anything ``feed`` would refuse takes the one-window path, which
        counts and logs it exactly as ``process`` does.
        """
        detections: list[Detection] = []
        while windows:
            groups: dict[tuple[int, float, int], list[tuple[_Device, AccelWindow]]] = {}
            seen: set[str] = set()
            later: list[tuple[_Device, AccelWindow]] = []
            for device, window in windows:
                if device.device_id in seen:
                    later.append((device, window))
                    continue
                seen.add(device.device_id)
                bank = self._fall_bank_of(device)
                if bank is None:
                    bank, _ = self._fall_of(device, window.position)
                key = (id(bank), window.rate_hz, len(window.samples_g))
                group = groups.get(key)
                if group is None:
                    groups[key] = [(device, window)]
                else:
                    group.append((device, window))
            for (_, rate_hz, n_bytes), group in groups.items():
                detections.extend(self._accel_group(group, rate_hz, n_bytes))
            windows = later
        return detections

    def _accel_group(
        self, group: list[tuple[_Device, AccelWindow]], rate_hz: float, n_bytes: int
    ) -> list[Detection]:
        if len(group) < _MIN_ACCEL_BATCH or not (
            n_bytes % 12 == 0 and math.isfinite(rate_hz) and rate_hz > 0
        ):
            return [d for device, window in group for d in self._accel(device, window)]
        detections: list[Detection] = []
        starts = np.fromiter((w.env.device_ts for _, w in group), np.float64, len(group))
        if not np.isfinite(starts).all():
            for i in np.flatnonzero(~np.isfinite(starts)).tolist():
                detections.extend(self._accel(*group[i]))
            group = [group[i] for i in np.flatnonzero(np.isfinite(starts)).tolist()]
            starts = starts[np.isfinite(starts)]
            if not group:
                return detections
        k, n = len(group), n_bytes // 12
        bank = self._fall_bank_of(group[0][0])  # the same for the whole group (in the key)
        assert bank is not None
        fall_slot = self._cols.fall_slot
        slots = np.fromiter((fall_slot[device.row] for device, _ in group), np.intp, k)
        samples_g = np.frombuffer(b"".join(w.samples_g for _, w in group), "<f4")
        self.counters["accel_samples"] += k * n
        events = bank.feed_many(slots, starts, rate_hz, samples_g.reshape(k, n, 3))
        if events:
            row_of = {int(slot): row for row, slot in enumerate(slots.tolist())}
            for slot, event in events:
                device, window = group[row_of[slot]]
                detections.append(self._fall_detection(device, event, window))
        return detections

    def _fall_detection(self, device: _Device, event: FallEvent, window: AccelWindow) -> Detection:
        evidence: Evidence = {"peak_g": event.peak_g, "position": window.position}
        evidence.update(event.evidence)
        evidence["decided_device_ts"] = event.detected_ts
        return self._detection(
            device,
            DetectionKind.FALL,
            event_ts=event.impact_ts,
            detected_ts=window.env.received_ts,
            evidence=evidence,
        )

    # -- vitals ------------------------------------------------------------------------
    def _run_vitals(self, batch: list[tuple[_Device, Vitals]]) -> list[Detection]:
        m = len(batch)
        slots = np.empty(m, np.intp)
        ts = np.empty(m)
        values = np.full((m, N_VITALS), np.nan)
        quality = np.full(m, np.nan)
        oxygen = np.full(m, -1, np.int8)
        for row, (device, sample) in enumerate(batch):
            slots[row] = device.row
            ts[row] = sample.env.device_ts
            values[row] = (
                sample.hr_bpm,
                sample.spo2_pct,
                sample.temp_c,
                sample.resp_rate_per_min,
                sample.sbp_mmhg,
                sample.dbp_mmhg,
            )  # None becomes NaN: "no data"
            if sample.signal_quality is not None:
                quality[row] = sample.signal_quality
            if sample.on_oxygen is not None:
                oxygen[row] = int(sample.on_oxygen)
        self.counters["vitals_samples"] += m
        by_slot = {device.row: (device, sample) for device, sample in batch}
        detections = []
        for change in self._vitals.step(slots, ts, values, quality, oxygen):
            device, sample = by_slot[change.slot]
            detections.append(self._vitals_detection(device, change, sample.env.received_ts))
        return detections

    def _run_vitals_one(self, device: _Device, sample: Vitals) -> list[Detection]:
        self.counters["vitals_samples"] += 1
        values = (
            sample.hr_bpm,
            sample.spo2_pct,
            sample.temp_c,
            sample.resp_rate_per_min,
            sample.sbp_mmhg,
            sample.dbp_mmhg,
        )  # VITAL_NAMES order
        changes = self._vitals.step_one(
            device.row,
            sample.env.device_ts,
            values,
            sample.signal_quality,
            sample.on_oxygen,
        )
        return [self._vitals_detection(device, c, sample.env.received_ts) for c in changes]

    def _vitals_detection(self, device: _Device, change: VitalsChange, now_ts: float) -> Detection:
        if change.parameter == "news2":
            return self._news2_detection(device, change, now_ts)
        evidence: Evidence = {
            "parameter": change.parameter,
            "value": change.value,
            "previous_level": change.old_level,
            "level": change.new_level,
            "since_ts": change.since_ts,
        }
        if change.new_level == 0:
            return self._detection(
                device,
                DetectionKind.VITALS_RECOVERED,
                event_ts=change.since_ts,  # the first sample of the recovered run
                detected_ts=now_ts,
                evidence=evidence,
                clears=True,
            )
        limits = self._vitals.limits(device.row)
        magnitude = abs(change.new_level)
        evidence["direction"] = "low" if change.new_level < 0 else "high"
        evidence["severity_level"] = _LEVEL_WORD[magnitude]
        evidence["limit"] = change.limit
        severity = limits.critical_severity if magnitude == 2 else limits.warn_severity
        return self._detection(
            device,
            DetectionKind.VITALS_ABNORMAL,
            event_ts=change.since_ts,
            detected_ts=now_ts,
            evidence=evidence,
            severity=severity,
        )

    def _news2_detection(self, device: _Device, change: VitalsChange, now_ts: float) -> Detection:
        total = int(change.value)
        evidence: Evidence = {
            "total": total,
            "spo2_scale": device.rules.rules.news2.spo2_scale,
            # Wearables cannot assess consciousness: scored as Alert, so the total is a
            # lower bound (any other level would add 3).
            "acvpu_assumed": "A",
            "since_ts": change.since_ts,
        }
        for name, score in zip(NEWS2_PARAMETERS, change.news2_scores or (), strict=False):
            evidence[f"score_{name}"] = score
        if change.new_level == 0:
            evidence["risk"] = "below " + RiskBand.from_code(change.old_level).value
            return self._detection(
                device,
                DetectionKind.NEWS2,
                event_ts=change.since_ts,
                detected_ts=now_ts,
                evidence=evidence,
                clears=True,
            )
        band = RiskBand.from_code(change.new_level)
        evidence["risk"] = band.value
        evidence["response"] = response_for(total, band)
        return self._detection(
            device,
            DetectionKind.NEWS2,
            event_ts=change.since_ts,
            detected_ts=now_ts,
            evidence=evidence,
            severity=_NEWS2_SEVERITY[band],
        )

    # -- time --------------------------------------------------------------------------
    def set_device_online(
        self, device_id: str, online: bool, *, now_ts: float | None = None
    ) -> list[Detection]:
        """Mark a device online or offline by hand (maintenance, a known outage).

        A manual offline holds until a manual online; a status heartbeat does not end it.
        """
        device = self._device(device_id)
        ts = now_ts if now_ts is not None else self._cols.latest_ts[device.row]
        if not math.isfinite(ts):
            ts = 0.0
        if online:
            return self._go_online(device, ts, ts)
        return self._go_offline(device, _OFFLINE_MANUAL, ts, ts)

    def tick(self, now_ts: float) -> list[Detection]:
        """Run the timer rules at server time ``now_ts`` (epoch seconds; call every few
        seconds).

        Liveness (``offline_after_s``) is judged on the server's clock, against when messages
        were received. The home timers (inactivity, a door left open, bed exit) are judged on
        each gateway's own clock: ``now_ts`` plus the offset of its device times from their
        receive times (``HomeBank.device_now``), so that a simulation whose clock runs in the
        past or faster than real time is timed on its own clock.
        """
        detections: list[Detection] = []
        homes = self._homes
        heard_col, home_col = self._cols.heard_ts, self._cols.home_slot
        for device in self._devices.values():
            heard_ts = heard_col[device.row]
            if device.offline_reason is None and heard_ts > -math.inf:
                silent_s = now_ts - heard_ts
                if silent_s > device.rules.rules.device.offline_after_s:
                    detections.extend(self._go_offline(device, _OFFLINE_SILENT, heard_ts, now_ts))
            home_slot = home_col[device.row]
            if home_slot >= 0 and device.offline_reason is None and homes is not None:
                for finding in homes.on_tick(home_slot, now_ts, device.rules.home):
                    detections.append(self._from_finding(device, finding, now_ts))
        return detections
