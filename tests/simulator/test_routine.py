"""Routines, towns and scenario plans are deterministic for a seed."""

from __future__ import annotations

import itertools

import pytest

from simulator.clock import SimClock
from simulator.routine import DAY_S, HOUR_S, build_routine
from simulator.scenarios import ScenarioRates, plan_scenarios
from simulator.town import build_town

START_S = 1_763_000_000.0


def _events(seed: int, days: float = 3.0) -> list[tuple[float, str, str, str]]:
    town = build_town(5, seed=seed)
    out = []
    for r in town.residents:
        routine = build_routine(r, START_S, START_S + days * DAY_S, seed=seed)
        out += [(e.sim_s, e.resident_key, e.sensor, e.state) for e in routine.events]
    return out


def test_same_seed_same_routine_other_seed_other_routine() -> None:
    assert _events(7) == _events(7)
    assert _events(7) != _events(8)


def test_routine_shape() -> None:
    town = build_town(3, seed=1)
    r = town.residents[0]
    routine = build_routine(r, START_S, START_S + 2 * DAY_S, seed=1)
    times = [e.sim_s for e in routine.events]
    assert times == sorted(times)
    assert all(START_S <= t < START_S + 2 * DAY_S for t in times)
    sensors = {e.sensor for e in routine.events}
    assert {"bed", "motion"} <= sensors
    # Asleep at 03:00 local (UTC+8), awake at 12:00 local.
    day = START_S - (START_S + 8 * HOUR_S) % DAY_S + DAY_S  # a local midnight
    assert routine.asleep(day + 3 * HOUR_S)
    assert not routine.asleep(day + 12 * HOUR_S)


def test_adding_a_resident_does_not_change_the_others() -> None:
    small = build_town(3, seed=4)
    big = build_town(6, seed=4)
    for a, b in zip(small.residents, big.residents, strict=False):
        assert build_routine(a, START_S, START_S + DAY_S, seed=4) == build_routine(
            b, START_S, START_S + DAY_S, seed=4
        )


def test_scenario_plan_is_deterministic_and_spaced() -> None:
    town = build_town(8, seed=3)
    end_s = START_S + 4 * DAY_S
    routines = {r.key: build_routine(r, START_S, end_s, seed=3) for r in town.residents}
    a = plan_scenarios(town, routines, START_S, end_s, seed=3, rates=ScenarioRates.busy())
    b = plan_scenarios(town, routines, START_S, end_s, seed=3, rates=ScenarioRates.busy())
    assert a == b and len(a) > 20
    kinds = {s.kind for s in a}
    assert {"fall", "adl", "sos", "smoke"} <= kinds
    for r in town.residents:
        times = sorted(s.sim_s for s in a if s.resident == r.key)
        assert all(t2 - t1 >= 2 * HOUR_S for t1, t2 in itertools.pairwise(times))


@pytest.mark.parametrize(("days", "speed"), [(1.0, 1440.0), (0.01, 60.0), (3.0, 10_000.0)])
def test_past_anchored_clock_keeps_device_time_behind_the_wall(days: float, speed: float) -> None:
    wall = [1_800_000_000.0]
    clock = SimClock(days=days, speed=speed, wall=lambda: wall[0])
    assert clock.sim_end_s <= wall[0]
    assert clock.sim_end_s - clock.sim_start_s == pytest.approx(days * DAY_S)
    run_s = days * DAY_S / speed
    wall[0] += run_s / 2
    mid = clock.sim_now_s()
    assert mid == pytest.approx(clock.sim_start_s + days * DAY_S / 2)
    assert clock.device_ts(mid) <= wall[0]
    assert clock.wall_at(clock.sim_end_s) == pytest.approx(clock.wall_start_s + run_s)
    # The last simulated second is (just) in the past when it is due.
    wall[0] = clock.wall_at(clock.sim_end_s)
    assert clock.device_ts(clock.sim_end_s) <= wall[0]
    assert wall[0] - clock.sim_end_s < 2.0 + run_s


def test_the_simulator_is_a_client_only() -> None:
    """simulator/ talks to CareCall over MQTT and HTTP; it imports none of the server."""
    import ast  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    package = Path(__file__).resolve().parents[2] / "simulator"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in {"ingest", "alerts", "devices"}, (path, name)
