"""The town: residents, their homes, and the device models they carry or have installed."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

Encoding = Literal["i16le", "f32le"]
Position = Literal["waist", "wrist", "chest", "pendant", "home"]


@dataclass(frozen=True, slots=True)
class DeviceModel:
    """What a kind of device is and how it talks (rates, encoding, battery life)."""

    name: str
    device_type: str  # the registry's device_type
    position: Position
    wearable: bool
    accel_rate_hz: float = 0.0
    accel_encoding: Encoding = "i16le"
    g_per_count: float = 1.0 / 256.0  # i16le only; 1/256 g = ADXL345 at +-8 g full resolution
    vitals: bool = False
    battery_life_h: float = 24.0 * 30  # full to empty without charging
    firmware: str = "1.0.0"


# A small catalogue spanning the rates and encodings devices really use.
WATCH = DeviceModel(
    "cw-watch-2", "watch", "wrist", wearable=True, accel_rate_hz=25.0,
    g_per_count=1.0 / 2048.0, vitals=True, battery_life_h=48.0, firmware="2.3.1",
)  # fmt: skip
PENDANT = DeviceModel(
    "cp-pendant-1", "pendant", "pendant", wearable=True, accel_rate_hz=50.0,
    accel_encoding="f32le", battery_life_h=24.0 * 7, firmware="1.4.0",
)  # fmt: skip
BELT = DeviceModel(
    "cb-belt-200", "belt", "waist", wearable=True, accel_rate_hz=200.0,
    g_per_count=1.0 / 256.0, battery_life_h=24.0 * 5, firmware="3.0.2",
)  # fmt: skip
CHEST_BAND = DeviceModel(
    "cc-band-1", "chest_band", "chest", wearable=True, accel_rate_hz=20.0,
    accel_encoding="f32le", vitals=True, battery_life_h=72.0, firmware="1.1.0",
)  # fmt: skip
GATEWAY = DeviceModel("ch-gateway-1", "home_gateway", "home", wearable=False, firmware="5.0.0")

WEARABLE_MODELS = (WATCH, PENDANT, BELT, CHEST_BAND)
ROOMS = ("bedroom", "bathroom", "kitchen", "living")


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    model: DeviceModel
    resident_key: str


@dataclass(frozen=True, slots=True)
class Resident:
    """One resident, their baseline physiology and habits, and their devices."""

    key: str  # stable within a run: "r007"
    name: str
    birth_year: int
    sex: Literal["female", "male"]
    community_id: str
    home_lat: float
    home_lon: float
    wake_h: float  # habitual wake-up hour
    bed_h: float  # habitual bedtime hour (may exceed 24)
    hr_bpm: float
    spo2_pct: float
    temp_c: float
    resp_rate_per_min: float
    sbp_mmhg: float
    dbp_mmhg: float
    wearables: tuple[Device, ...]
    gateway: Device

    @property
    def devices(self) -> tuple[Device, ...]:
        return (*self.wearables, self.gateway)


@dataclass(frozen=True, slots=True)
class Town:
    name: str
    city_id: str
    district_id: str
    street_id: str
    community_ids: tuple[str, ...]
    residents: tuple[Resident, ...]

    @property
    def devices(self) -> tuple[Device, ...]:
        return tuple(d for r in self.residents for d in r.devices)

    def resident(self, key: str) -> Resident:
        for r in self.residents:
            if r.key == key:
                return r
        raise KeyError(key)


_GIVEN = ("Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Zhao", "Huang", "Zhou", "Wu")
_FAMILY = ("Fang", "Min", "Jun", "Hua", "Lan", "Qiang", "Ying", "Ping", "Gang", "Mei")


def build_town(n_residents: int, *, seed: int, prefix: str = "sim") -> Town:
    """A deterministic town of ``n_residents``; device ids start with ``prefix``."""
    if n_residents < 1:
        raise ValueError("a town needs at least one resident")
    rng = random.Random(seed)
    n_communities = max(1, (n_residents + 24) // 25)
    communities = tuple(f"{prefix}_c{i + 1}" for i in range(n_communities))
    residents = []
    for i in range(n_residents):
        key = f"r{i + 1:04d}"
        # Every resident wears one device; about a third also wear a second (watch + belt).
        first = WEARABLE_MODELS[i % len(WEARABLE_MODELS)]
        models = [first]
        if rng.random() < 0.33:
            models.append(BELT if first is not BELT else WATCH)
        wearables = tuple(Device(f"{prefix}-{key}-{m.device_type}", m, key) for m in models)
        sex: Literal["female", "male"] = "female" if rng.random() < 0.6 else "male"
        residents.append(
            Resident(
                key=key,
                name=f"{rng.choice(_GIVEN)} {rng.choice(_FAMILY)}",
                birth_year=rng.randint(1930, 1958),
                sex=sex,
                community_id=communities[i % n_communities],
                home_lat=38.04 + rng.uniform(-0.02, 0.02),
                home_lon=114.51 + rng.uniform(-0.02, 0.02),
                wake_h=rng.gauss(6.8, 0.5),
                bed_h=rng.gauss(21.5, 0.6),
                hr_bpm=rng.gauss(72, 7),
                spo2_pct=min(99.0, rng.gauss(96.5, 1.0)),
                temp_c=rng.gauss(36.6, 0.2),
                resp_rate_per_min=rng.gauss(15, 1.5),
                sbp_mmhg=rng.gauss(128, 12),
                dbp_mmhg=rng.gauss(78, 7),
                wearables=wearables,
                gateway=Device(f"{prefix}-{key}-gw", GATEWAY, key),
            )
        )
    return Town(
        name="Simtown",
        city_id=f"{prefix}_city",
        district_id=f"{prefix}_dist",
        street_id=f"{prefix}_street",
        community_ids=communities,
        residents=tuple(residents),
    )
