"""Request and response bodies of the registry API (pydantic, converted once at the edge)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

AreaLevel = Literal["city", "district", "street", "community"]
Role = Literal["dispatcher", "supervisor", "operator", "admin"]
Sex = Literal["female", "male", "other"]
ContactRole = Literal["family", "community_helper", "grid_worker", "doctor", "neighbour", "other"]
DeviceType = Literal[
    "watch",
    "pendant",
    "belt",
    "chest_band",
    "home_gateway",
    "door_sensor",
    "motion_sensor",
    "bed_sensor",
    "smoke_sensor",
    "gas_sensor",
    "water_sensor",
]
Position = Literal["waist", "wrist", "chest", "pendant", "home"]
AREA_ID = r"^[a-z0-9_]{1,48}$"
DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
LTREE = r"^([a-z0-9_]{1,48}(\.[a-z0-9_]{1,48}){0,3})?$"

T = TypeVar("T")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Page(BaseModel, Generic[T]):
    """One page of a listing; ``total`` counts every match in the caller's scope."""

    items: list[T]
    total: int
    limit: int
    offset: int


# -- areas -------------------------------------------------------------------------------------


class AreaIn(_In):
    area_id: str = Field(pattern=AREA_ID, description="unique id; the last label of the path")
    parent_id: str | None = Field(default=None, description="the enclosing area; none for a city")
    name: str = Field(min_length=1, max_length=200)
    name_zh: str | None = Field(default=None, max_length=200)


class AreaPatch(_In):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    name_zh: str | None = Field(default=None, max_length=200)


class AreaOut(BaseModel):
    area_id: str
    path: str
    level: AreaLevel
    name: str
    name_zh: str | None
    created_at: dt.datetime
    retired_at: dt.datetime | None


# -- residents ---------------------------------------------------------------------------------


class ResidentIn(_In):
    full_name: str = Field(min_length=1, max_length=200)
    birth_year: int | None = Field(default=None, ge=1890, le=2100)
    sex: Sex | None = None
    phone: str | None = Field(default=None, max_length=40)
    address: str = Field(default="", max_length=500)
    community_id: str = Field(pattern=AREA_ID)
    home_lat: float | None = Field(default=None, ge=-90, le=90)
    home_lon: float | None = Field(default=None, ge=-180, le=180)
    medical_notes: str = Field(default="", max_length=5000)
    spo2_scale: Literal[1, 2] = 1
    waking_start: dt.time = dt.time(7, 0)
    waking_end: dt.time = dt.time(21, 30)


class ResidentPatch(_In):
    full_name: str | None = Field(default=None, min_length=1, max_length=200)
    birth_year: int | None = Field(default=None, ge=1890, le=2100)
    sex: Sex | None = None
    phone: str | None = Field(default=None, max_length=40)
    address: str | None = Field(default=None, max_length=500)
    community_id: str | None = Field(default=None, pattern=AREA_ID)
    home_lat: float | None = Field(default=None, ge=-90, le=90)
    home_lon: float | None = Field(default=None, ge=-180, le=180)
    medical_notes: str | None = Field(default=None, max_length=5000)
    spo2_scale: Literal[1, 2] | None = None
    waking_start: dt.time | None = None
    waking_end: dt.time | None = None


class ResidentOut(BaseModel):
    resident_id: int
    full_name: str
    birth_year: int | None
    sex: Sex | None
    phone: str | None
    address: str
    community_id: str
    area_path: str
    home_lat: float | None
    home_lon: float | None
    medical_notes: str
    spo2_scale: int
    waking_start: dt.time
    waking_end: dt.time
    created_at: dt.datetime
    updated_at: dt.datetime
    retired_at: dt.datetime | None


# -- contacts ----------------------------------------------------------------------------------


class ContactIn(_In):
    priority: int = Field(ge=1, le=20, description="1 is called first")
    role: ContactRole
    name: str = Field(min_length=1, max_length=200)
    phone: str = Field(min_length=3, max_length=40)
    relation: str | None = Field(default=None, max_length=100)


class ContactPatch(_In):
    priority: int | None = Field(default=None, ge=1, le=20)
    role: ContactRole | None = None
    name: str | None = Field(default=None, min_length=1, max_length=200)
    phone: str | None = Field(default=None, min_length=3, max_length=40)
    relation: str | None = Field(default=None, max_length=100)


class ContactOut(BaseModel):
    contact_id: int
    resident_id: int
    priority: int
    role: ContactRole
    name: str
    phone: str
    relation: str | None
    retired_at: dt.datetime | None


# -- devices -----------------------------------------------------------------------------------


class DeviceIn(_In):
    device_id: str = Field(pattern=DEVICE_ID)
    device_type: DeviceType
    model: str | None = Field(default=None, max_length=100)
    firmware: str | None = Field(default=None, max_length=100)
    resident_id: int | None = Field(default=None, description="the wearer, or the home's resident")
    community_id: str | None = Field(
        default=None, pattern=AREA_ID, description="for a shared sensor without a resident"
    )
    position: Position | None = None


class DevicePatch(_In):
    model: str | None = Field(default=None, max_length=100)
    firmware: str | None = Field(default=None, max_length=100)
    resident_id: int | None = None
    position: Position | None = None
    active: bool | None = None


class PresenceOut(BaseModel):
    """Live presence from the bridge's tracker; ``unknown``: never heard from."""

    state: Literal["online", "offline", "unknown"]
    last_seen_at: dt.datetime | None = None
    battery_pct: float | None = None
    battery_low: bool = False
    offline_reason: str | None = None


class DeviceOut(BaseModel):
    device_id: str
    device_type: str
    model: str | None
    firmware: str | None
    active: bool
    resident_id: int | None
    area_path: str | None
    position: Position | None
    provisioned: bool = Field(description="broker credentials have been issued")
    created_at: dt.datetime
    retired_at: dt.datetime | None
    presence: PresenceOut


class CredentialsOut(BaseModel):
    """Shown once: only a hash is kept. Regenerate the broker files to activate them."""

    device_id: str
    mqtt_username: str
    mqtt_password: str


# -- staff -------------------------------------------------------------------------------------


class StaffIn(_In):
    username: str = Field(pattern=r"^[A-Za-z0-9_.@-]{2,64}$")
    full_name: str = Field(min_length=1, max_length=200)
    role: Role
    scope_path: str = Field(pattern=LTREE, description="the subtree served, e.g. sjz.changan")
    password: str = Field(min_length=12, max_length=200)
    phone: str | None = Field(default=None, max_length=40)
    on_duty: bool = False


class StaffPatch(_In):
    full_name: str | None = Field(default=None, min_length=1, max_length=200)
    role: Role | None = None
    scope_path: str | None = Field(default=None, pattern=LTREE)
    password: str | None = Field(default=None, min_length=12, max_length=200)
    phone: str | None = Field(default=None, max_length=40)
    on_duty: bool | None = None


class StaffOut(BaseModel):
    user_id: int
    username: str
    full_name: str
    role: Role
    scope_path: str
    phone: str | None
    on_duty: bool
    created_at: dt.datetime
    retired_at: dt.datetime | None


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth2 scheme name
    expires_in: int


# -- audit -------------------------------------------------------------------------------------


class AuditOut(BaseModel):
    audit_id: int
    at: dt.datetime
    actor: str
    actor_role: str | None
    action: str
    record_type: str | None
    record_id: str | None
    scope_path: str | None
    source_ip: str | None
    detail: dict[str, Any]
