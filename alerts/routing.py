"""Who is told about an incident: the four-level network, walked upwards.

Level 0 is the resident's community, 1 its street, 2 its district, 3 the city. An incident is
routed to the on-duty dispatchers whose scope is exactly that level's area *or any level
below it down to the community* (a street dispatcher serves its communities too). If nobody
is on duty at a level, routing moves up; escalation (T1 elapsed without acknowledgement)
widens it one more level. Supervisors are paged separately (T2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

LEVELS = ("community", "street", "district", "city")
TOP_LEVEL = len(LEVELS) - 1


@dataclass(frozen=True, slots=True)
class Route:
    level: int  # 0 community .. 3 city
    usernames: tuple[str, ...]

    @property
    def level_name(self) -> str:
        return LEVELS[self.level]


def level_path(area_path: str, level: int) -> str:
    """The ancestor of a community path at a routing level (level 0 is the path itself)."""
    parts = area_path.split(".")
    return ".".join(parts[: max(1, len(parts) - level)])


async def route(
    conn: psycopg.AsyncConnection[Any], area_path: str | None, *, from_level: int = 0
) -> Route:
    """The lowest level >= ``from_level`` with someone on duty, and who they are.

    With nobody on duty anywhere the route is the city level with no one: the incident still
    shows on every in-scope console and the T2 page to the supervisor still fires.
    """
    if area_path is None:
        return Route(TOP_LEVEL, ())
    depth = len(area_path.split("."))
    cur = await conn.execute(
        """SELECT username, nlevel(scope_path) FROM staff_users
           WHERE on_duty AND retired_at IS NULL AND role = 'dispatcher'
             AND scope_path @> %s::ltree""",
        (area_path,),
    )
    staff = [(str(u), int(n)) for u, n in await cur.fetchall()]
    for level in range(from_level, TOP_LEVEL + 1):
        # Serving level L means a scope at most L levels above the community.
        min_depth = max(1, depth - level)
        names = tuple(sorted(u for u, n in staff if n >= min_depth))
        if names or level == TOP_LEVEL:
            return Route(level, names)
    raise AssertionError("unreachable: the loop returns at the top level")


async def supervisors(
    conn: psycopg.AsyncConnection[Any], area_path: str | None
) -> list[tuple[str, str | None]]:
    """Supervisors whose scope covers the area (on duty first): (username, phone)."""
    if area_path is None:
        # Nobody can place the device: only the root of the area tree covers it.
        cur = await conn.execute(
            """SELECT username, phone FROM staff_users
               WHERE role = 'supervisor' AND retired_at IS NULL
                 AND carecall_scope_is_root(scope_path)
               ORDER BY on_duty DESC, username"""
        )
    else:
        cur = await conn.execute(
            """SELECT username, phone FROM staff_users
               WHERE role = 'supervisor' AND retired_at IS NULL AND scope_path @> %s::ltree
               ORDER BY on_duty DESC, nlevel(scope_path) DESC, username""",
            (area_path,),
        )
    return [(str(u), None if p is None else str(p)) for u, p in await cur.fetchall()]


@dataclass(frozen=True, slots=True)
class PolicyStep:
    """One row of ``escalation_policy``."""

    t1_s: float
    t2_s: float | None
    call_contacts: bool
    contact_ring_s: float


async def policy_for(conn: psycopg.AsyncConnection[Any], level: int, severity: str) -> PolicyStep:
    cur = await conn.execute(
        "SELECT t1_s, t2_s, call_contacts, contact_ring_s FROM escalation_policy"
        " WHERE level = %s AND severity = %s",
        (LEVELS[level], severity),
    )
    row = await cur.fetchone()
    if row is None:
        # A policy row deleted by mistake must not stop escalation: fall back to a short T1.
        return PolicyStep(60.0, 120.0 if severity == "critical" else None, True, 45.0)
    return PolicyStep(
        float(row[0]), None if row[1] is None else float(row[1]), bool(row[2]), float(row[3])
    )
