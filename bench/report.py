"""One benchmark report: every bench/ script in one run, one Markdown file with PNG charts.

    .venv/bin/python bench/report.py [--quick] [--only NAME ...] [--out DIR]

Runs bench/ingest.py (with its Node-RED peer phase), bench/mqtt_clients.py, bench/rules.py,
bench/alerts.py (once per background rate, for SOS latency against load) and
bench/fall_cv.py one after another, each as its own subprocess, and takes the last line of
JSON each prints. Writes ``bench/results/<UTC time>/``:

* ``report.md``: the machine (cores, load average before the run, git commit), a table of
  figures and ratios measured in this run, each script's status, and the charts;
* ``throughput.png``, ``sos_latency.png``, ``fall_cv.png`` (matplotlib, the ``bench`` extra);
* ``results.json`` (everything parsed) and ``<job>.log`` (each script's output).

A script that fails does not stop the others: its rows say ``failed: <last stderr line>``.
``--quick`` uses small message counts (a smoke run of a few minutes, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
SCRIPTS = ("ingest", "mqtt_clients", "rules", "alerts", "fall_cv")
ALERT_RATES = (5_000, 10_000, 20_000)
QUICK_ALERT_RATES = (1_000, 4_000)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

Figures = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Job:
    """One subprocess: ``script`` (a name in SCRIPTS) with its arguments."""

    name: str  # unique in a run: "alerts@20000"
    script: str
    args: tuple[str, ...] = ()
    timeout_s: float = 1800.0

    @property
    def path(self) -> Path:
        return REPO / "bench" / f"{self.script}.py"


@dataclass(frozen=True, slots=True)
class JobResult:
    """What one job gave: its final JSON line, or why there is none."""

    job: Job
    figures: Figures | None
    error: str | None = None
    wall_s: float = 0.0
    stderr_tail: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.figures is not None


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the report's table."""

    area: str
    figure: str
    value: str


@dataclass
class Report:
    """Everything the Markdown and the charts are drawn from."""

    machine: dict[str, Any]
    results: list[JobResult]
    quick: bool = False
    selected: tuple[str, ...] = SCRIPTS
    charts: dict[str, str] = field(default_factory=dict)  # chart file -> why not drawn


# -- planning and running -----------------------------------------------------------------------


def plan(
    *,
    quick: bool,
    only: Iterable[str] = SCRIPTS,
    alert_rates: Sequence[int] | None = None,
    nodered: bool = True,
) -> list[Job]:
    """The jobs of a run, in the order they run (the heaviest phases first, on a quiet box)."""
    wanted = set(only)
    unknown = wanted - set(SCRIPTS)
    if unknown:
        raise ValueError(f"unknown bench script(s): {sorted(unknown)}; known: {SCRIPTS}")
    rates = tuple(alert_rates or (QUICK_ALERT_RATES if quick else ALERT_RATES))
    nr = () if nodered else ("--no-nodered",)
    jobs: list[Job] = []
    args: tuple[str, ...]
    if "ingest" in wanted:
        args = ("--messages", "20000", "--accel-windows", "4000", "--paced-rate", "1000")
        jobs.append(Job("ingest", "ingest", (args if quick else ()) + nr, 2400.0))
    if "mqtt_clients" in wanted:
        jobs.append(Job("mqtt_clients", "mqtt_clients", ("--messages", "20000") if quick else ()))
    if "rules" in wanted:
        args = ("--devices", "1000", "--seconds", "3", "--repeat", "1", "--vitals-rounds", "4")
        jobs.append(Job("rules", "rules", args if quick else (), 1200.0))
    if "alerts" in wanted:
        for rate in rates:
            args = ("--rate", str(rate))
            if quick:
                args += ("--seconds", "8", "--sos", "20")
            jobs.append(Job(f"alerts@{rate}", "alerts", args, 600.0))
    if "fall_cv" in wanted:
        jobs.append(Job("fall_cv", "fall_cv", ("--quick",) if quick else (), 3600.0))
    return jobs


def last_json_line(text: str) -> Figures | None:
    """The last line of ``text`` that is a JSON object (the scripts print it last)."""
    for raw in reversed(text.splitlines()):
        line = raw.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def run_job(job: Job, *, python: str = sys.executable, log_dir: Path | None = None) -> JobResult:
    """Run one script to completion and parse its final JSON line; never raises for the
    script's own failure (a failed row is a result too)."""
    started = time.monotonic()
    cmd = [python, str(job.path), *job.args]
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=job.timeout_s, check=False
        )
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout = _text(exc.stdout)
        stderr = _text(exc.stderr) + f"\ntimed out after {job.timeout_s:.0f} s"
        rc = None
    except OSError as exc:
        stdout, stderr, rc = "", f"could not start: {exc}", None
    wall_s = time.monotonic() - started
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / f"{job.name}.log").write_text(
            f"$ {' '.join(cmd)}\n# exit {rc}, {wall_s:.1f} s\n\n## stdout\n{stdout}\n"
            f"## stderr\n{stderr}\n"
        )
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    # The last lines say why a script failed; "not measured" notes may come earlier.
    tail = tuple(ln for ln in lines[:-20] if "not measured" in ln) + tuple(lines[-20:])
    figures = last_json_line(stdout) if rc == 0 else None
    if figures is not None:
        return JobResult(job, figures, None, wall_s, tail)
    if rc == 0:
        why = "printed no JSON line"
    else:
        why = _last_line(stderr) or _last_line(stdout) or f"exit code {rc}"
    return JobResult(job, None, why, wall_s, tail)


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def machine_info() -> dict[str, Any]:
    """What the figures were measured on; the load average is read before anything runs."""
    load = os.getloadavg()
    info: dict[str, Any] = {
        "utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cores": os.cpu_count(),
        "load_avg_before": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "mem_total_gb": _mem_total_gb(),
    }
    git = shutil.which("git")
    if git:
        head = subprocess.run(
            [git, "rev-parse", "--short=12", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        dirty = subprocess.run(
            [git, "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        if head.returncode == 0:
            info["git_commit"] = head.stdout.strip()
            info["git_dirty"] = bool(dirty.stdout.strip())
    return info


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        return None
    return None


# -- figures -> rows ----------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def _pick(figures: Mapping[str, Any], *keys: str) -> float | None:
    """The first of ``keys`` that holds a number (scripts rename keys over time)."""
    for key in keys:
        value = figures.get(key)
        if isinstance(value, Mapping):  # {"median": ..., "min": ..., "max": ...}
            value = value.get("median")
        number = _num(value)
        if number is not None:
            return number
    return None


def _fmt(value: float | None, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "not reported"
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}".rstrip()


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "not measured"
    return f"{a / b:.2f}x"


class _Rows:
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, area: str, figure: str, value: str) -> None:
        self.rows.append(Row(area, figure, value))


def rows_for(report: Report) -> list[Row]:
    """The table: one section per script, every figure measured in this run."""
    by_script: dict[str, list[JobResult]] = {}
    for r in report.results:
        by_script.setdefault(r.job.script, []).append(r)
    out = _Rows()
    builders = {
        "ingest": _ingest_rows,
        "mqtt_clients": _client_rows,
        "rules": _rules_rows,
        "alerts": _alerts_rows,
        "fall_cv": _fall_rows,
    }
    for script in SCRIPTS:
        area = f"{script}"
        results = by_script.get(script, [])
        if script not in report.selected:
            out.add(area, f"bench/{script}.py", "not measured: not selected (--only)")
            continue
        if not results:
            out.add(area, f"bench/{script}.py", "not measured: no job ran")
            continue
        for r in results:
            if not r.ok:
                out.add(area, f"bench/{script}.py {' '.join(r.job.args)}".rstrip(), _failed(r))
        good = [r for r in results if r.ok]
        if good:
            builders[script](out, good)
    return out.rows


def _failed(r: JobResult) -> str:
    return f"failed: {r.error}"


def _ingest_rows(out: _Rows, results: list[JobResult]) -> None:
    r = results[0]
    f = r.figures or {}
    a = "ingest"
    n = _pick(f, "messages")
    gm = _pick(f, "ceiling_gmqtt_msgs_per_s")
    own = _pick(f, "ceiling_own_client_msgs_per_s")
    pipe = _pick(f, "pipeline_vitals_msgs_per_s")
    out.add(a, "messages per phase, publishers", f"{_fmt(n)}, {_fmt(_pick(f, 'publishers'))}")
    out.add(a, "ceiling: gmqtt, QoS 1, acks on receipt (not durable)", _fmt(gm, "msg/s"))
    out.add(a, "ceiling: our MQTT client, acks on receipt (not durable)", _fmt(own, "msg/s"))
    out.add(a, "durable pipeline, vitals (PUBACK after COPY + commit)", _fmt(pipe, "msg/s"))
    out.add(a, "ratio: durable pipeline / gmqtt ceiling", _ratio(pipe, gm))
    out.add(a, "ratio: durable pipeline / our client ceiling", _ratio(pipe, own))
    out.add(
        a,
        "receive -> durable at saturation, p50 / p99",
        f"{_fmt(_pick(f, 'pipeline_p50_ms'), 'ms', 1)} / "
        f"{_fmt(_pick(f, 'pipeline_p99_ms'), 'ms', 1)}",
    )
    paced = _pick(f, "paced_rate_msgs_per_s")
    out.add(
        a,
        f"receive -> durable paced at {_fmt(paced)} msg/s, p50 / p99",
        f"{_fmt(_pick(f, 'paced_p50_ms'), 'ms', 1)} / {_fmt(_pick(f, 'paced_p99_ms'), 'ms', 1)}",
    )
    out.add(
        a,
        "accelerometer, 50-sample windows",
        _fmt(_pick(f, "accel50_samples_per_s"), "samples/s"),
    )
    out.add(
        a,
        "accelerometer, 200-sample windows",
        f"{_fmt(_pick(f, 'accel200_samples_per_s'), 'samples/s')} "
        f"({_fmt(_pick(f, 'accel200_windows_per_s'), 'windows/s')})",
    )
    out.add(
        a,
        "pipeline RSS: before the burst -> peak during it",
        f"{_fmt(_pick(f, 'pipeline_rss_before_mb'), 'MB')} -> "
        f"{_fmt(_pick(f, 'pipeline_rss_peak_during_mb'), 'MB')}",
    )
    nr = _pick(f, "nodered_msgs_per_s_not_durable", "nodered_msgs_per_s")
    if nr is None:
        why = nodered_absent_reason(r)
        out.add(a, "Node-RED peer (same messages, same table)", f"not measured: {why}")
        out.add(a, "ratio: CareCall / Node-RED", f"not measured: {why}")
    else:
        out.add(a, "Node-RED peer, acks on receipt (not durable)", _fmt(nr, "msg/s"))
        out.add(a, "ratio: CareCall durable pipeline / Node-RED", _ratio(pipe, nr))


def nodered_absent_reason(r: JobResult) -> str:
    """Why bench/ingest.py has no Node-RED figure: its own message, else a likely cause."""
    for line in reversed(r.stderr_tail):
        if "Node-RED" in line and "not measured" in line:
            return line.split("not measured:", 1)[-1].strip() or line
    if "--no-nodered" in r.job.args:
        return "skipped (--no-nodered)"
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm not on PATH"
    return "bench/ingest.py printed no Node-RED figure"


CLIENT_LABELS = {
    "gmqtt_optimistic_not_durable": "gmqtt, acks on receipt (not durable)",
    "gmqtt_held_ack": "gmqtt, held ack",
    "paho_auto_ack_not_durable": "paho, auto ack (not durable)",
    "paho_manual_ack": "paho, manual ack",
    "aiomqtt_not_durable": "aiomqtt, acks on receipt (not durable)",
    "ours_held_ack_batched": "ours (ingest.mqtt), held acks, batched",
}


def _client_rows(out: _Rows, results: list[JobResult]) -> None:
    f = results[0].figures or {}
    a = "mqtt_clients"
    top = _pick(f, "gmqtt_optimistic_not_durable")
    for key, label in CLIENT_LABELS.items():
        v = _pick(f, key)
        out.add(a, label, f"{_fmt(v, 'msg/s')} ({_ratio(v, top)} gmqtt optimistic)")
    out.add(
        a,
        "ratio: ours (held) / gmqtt (held)",
        _ratio(_pick(f, "ours_held_ack_batched"), _pick(f, "gmqtt_held_ack")),
    )


def _rules_rows(out: _Rows, results: list[JobResult]) -> None:
    f = results[0].figures or {}
    a = "rules"
    batch = int(_pick(f, "batch") or 5000)
    out.add(
        a, "devices in memory, repeats", f"{_fmt(_pick(f, 'devices'))}, {_fmt(_pick(f, 'repeat'))}"
    )
    for hz in (50, 200):
        out.add(
            a,
            f"fall detector via RuleRunner.process_batch ({batch:,}/batch), {hz} Hz",
            _fmt(_pick(f, f"accel_{hz}hz_runner_batch{batch}_samples_per_s"), "samples/s"),
        )
        out.add(
            a,
            f"fall detector via RuleRunner.process (one at a time), {hz} Hz",
            _fmt(_pick(f, f"accel_{hz}hz_runner_process_samples_per_s"), "samples/s"),
        )
    out.add(
        a,
        "vitals + NEWS2 via process_batch",
        _fmt(_pick(f, "vitals_batch_samples_per_s"), "samples/s"),
    )
    out.add(
        a,
        "rule state per wearable (vitals + fall), presized",
        _fmt(_pick(f, "state_wearable_presized_bytes_per_device"), "B"),
    )
    out.add(
        a,
        "rule state per device, vitals + fall + home, presized",
        _fmt(_pick(f, "state_all_kinds_presized_bytes_per_device"), "B"),
    )
    for key, label in (
        ("accel_target_met", "target >= 5M samples/s at 50 Hz (median)"),
        ("state_target_met_wearable", "target <= 1 KB state per wearable"),
        ("state_target_met", "target <= 1 KB state per device, all kinds"),
    ):
        v = f.get(key)
        out.add(a, label, "not reported" if v is None else ("met" if v else "NOT met"))


def alert_points(results: Iterable[JobResult]) -> list[dict[str, float | None]]:
    """Per successful alerts run: background rate and SOS latency percentiles."""
    points = []
    for r in results:
        if not r.ok or r.job.script != "alerts":
            continue
        f = r.figures or {}
        target = _pick(f, "target_rate_msg_s", "target_rate_msgs_per_s", "rate")
        if target is None and "--rate" in r.job.args:
            target = float(r.job.args[r.job.args.index("--rate") + 1])
        points.append(
            {
                "target": target,
                "acked": _pick(f, "background_acked_rate_msg_s", "background_rate_msg_s"),
                "stored": _pick(f, "stored_rate_msg_s"),
                "p50": _pick(f, "sos_to_console_p50_ms", "sos_p50_ms"),
                "p99": _pick(f, "sos_to_console_p99_ms", "sos_p99_ms"),
                "max": _pick(f, "sos_to_console_max_ms", "sos_max_ms"),
                "sent": _pick(f, "sos_sent"),
                "received": _pick(f, "sos_received"),
                "dropped": _pick(f, "rule_inputs_dropped"),
            }
        )
    points.sort(key=lambda p: p["target"] or 0.0)
    return points


def _alerts_rows(out: _Rows, results: list[JobResult]) -> None:
    a = "alerts"
    for p in alert_points(results):
        label = f"background {_fmt(p['target'])} msg/s"
        out.add(
            a,
            f"{label}: reached (broker acked / stored)",
            f"{_fmt(p['acked'], 'msg/s')} / {_fmt(p['stored'], 'msg/s')}",
        )
        out.add(
            a,
            f"{label}: SOS -> console p50 / p99 / max",
            f"{_fmt(p['p50'], 'ms', 1)} / {_fmt(p['p99'], 'ms', 1)} / {_fmt(p['max'], 'ms', 1)}"
            f" ({_fmt(p['received'])}/{_fmt(p['sent'])} received)",
        )
        if p["dropped"] is not None:
            out.add(a, f"{label}: rule inputs dropped", _fmt(p["dropped"]))


def fall_points(figures: Mapping[str, Any]) -> list[tuple[str, float, float]]:
    """(source, sensitivity, specificity) per held-out source of bench/fall_cv.py."""
    held = figures.get("held_out")
    if not isinstance(held, Mapping):
        return []
    points = []
    for name, s in held.items():
        if not isinstance(s, Mapping):
            continue
        sens, spec = _num(s.get("sensitivity")), _num(s.get("specificity"))
        if sens is not None and spec is not None:
            points.append((str(name), sens, spec))
    return points


def _fall_rows(out: _Rows, results: list[JobResult]) -> None:
    f = results[0].figures or {}
    a = "fall_cv"
    held = f.get("held_out") if isinstance(f.get("held_out"), Mapping) else {}
    assert isinstance(held, Mapping)
    for name, sens, spec in fall_points(f):
        s = held[name]
        extra = ""
        if _num(s.get("delay_median_s")) is not None:
            extra = f", delay median {s['delay_median_s']:.2f} s"
        out.add(
            a,
            f"held-out {name}: sensitivity / specificity",
            f"{100 * sens:.1f} % / {100 * spec:.1f} %"
            f" ({s.get('falls_detected', '?')}/{s.get('falls', '?')} falls, "
            f"{s.get('adl_false_alarms', '?')}/{s.get('adl', '?')} ADL alarms{extra})",
        )
    if not fall_points(f):
        out.add(a, "held-out sources", "not reported")


# -- charts -------------------------------------------------------------------------------------


def throughput_bars(report: Report) -> list[tuple[str, float, str]]:
    """(label, msg/s, group) for the throughput chart."""
    bars: list[tuple[str, float, str]] = []
    for r in report.results:
        f = r.figures or {}
        if not r.ok:
            continue
        if r.job.script == "ingest":
            for key, label, group in (
                ("ceiling_gmqtt_msgs_per_s", "gmqtt ceiling (not durable)", "ceiling"),
                ("ceiling_own_client_msgs_per_s", "our client ceiling (not durable)", "ceiling"),
                ("pipeline_vitals_msgs_per_s", "CareCall durable pipeline", "pipeline"),
                ("nodered_msgs_per_s_not_durable", "Node-RED peer (not durable)", "peer"),
            ):
                v = _pick(f, key)
                if v is not None:
                    bars.append((label, v, group))
        elif r.job.script == "mqtt_clients":
            for key, label in CLIENT_LABELS.items():
                v = _pick(f, key)
                if v is not None:
                    bars.append((f"client: {label}", v, "client"))
    return bars


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def draw_charts(report: Report, out_dir: Path) -> dict[str, str]:
    """Draws what this run measured; returns chart file -> "" when drawn, else why not."""
    import matplotlib  # noqa: PLC0415 - only the report needs it (the bench extra)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    status: dict[str, str] = {}
    colours = {"ceiling": "#9aa5b1", "pipeline": "#1f77b4", "peer": "#d62728", "client": "#bcbd22"}

    bars = throughput_bars(report)
    if bars:
        fig, ax = plt.subplots(figsize=(9, 0.45 * len(bars) + 1.6))
        labels = [b[0] for b in bars]
        ax.barh(labels, [b[1] for b in bars], color=[colours[b[2]] for b in bars])
        for i, (_, v, _) in enumerate(bars):
            ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("messages per second (QoS 1)")
        ax.set_title("Ingest throughput per client and pipeline (same run)")
        fig.tight_layout()
        fig.savefig(out_dir / "throughput.png", dpi=110)
        plt.close(fig)
        status["throughput.png"] = ""
    else:
        status["throughput.png"] = "no ingest or client figures in this run"

    points = [p for p in alert_points(report.results) if p["p50"] is not None]
    if points:
        fig, ax = plt.subplots(figsize=(7, 4))
        xs = [_or_nan(p["acked"] if p["acked"] is not None else p["target"]) for p in points]
        for key, style in (("p50", "o-"), ("p99", "s-"), ("max", "^--")):
            ys = [_or_nan(p[key]) for p in points]
            ax.plot(xs, ys, style, label=f"SOS -> console {key}")
        ax.set_xlabel("background vitals reached (msg/s)")
        ax.set_ylabel("latency (ms)")
        ax.set_title("SOS latency under background load")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "sos_latency.png", dpi=110)
        plt.close(fig)
        status["sos_latency.png"] = ""
    else:
        status["sos_latency.png"] = "no SOS latency figures in this run"

    fall = next((r.figures for r in report.results if r.ok and r.job.script == "fall_cv"), None)
    fpoints = fall_points(fall or {})
    if fpoints:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(fpoints) + 2), 4.2))
        xs_i = list(range(len(fpoints)))
        width = 0.38
        ax.bar(
            [x - width / 2 for x in xs_i], [100 * p[1] for p in fpoints], width, label="sensitivity"
        )
        ax.bar(
            [x + width / 2 for x in xs_i], [100 * p[2] for p in fpoints], width, label="specificity"
        )
        ax.set_xticks(xs_i, [p[0].replace(":", "\n") for p in fpoints], fontsize=7)
        low = min(min(p[1], p[2]) for p in fpoints)
        ax.set_ylim(max(0.0, 100 * low - 5), 100.5)
        ax.set_ylabel("%")
        ax.set_title("Fall detector, held-out subjects: per source and rate")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="lower left")
        fig.tight_layout()
        fig.savefig(out_dir / "fall_cv.png", dpi=110)
        plt.close(fig)
        status["fall_cv.png"] = ""
    else:
        status["fall_cv.png"] = "no fall cross-validation figures in this run"
    return status


# -- Markdown -----------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report) -> str:
    m = report.machine
    load = m.get("load_avg_before") or []
    commit = m.get("git_commit", "unknown")
    if m.get("git_dirty"):
        commit += " (with uncommitted changes)"
    lines = [
        "# CareCall benchmark report",
        "",
        f"Measured {m.get('utc', '?')}"
        + (" with `--quick` (smoke run: small counts, not a measurement)" if report.quick else "")
        + ". Every figure below comes from this one run; ratios compare figures of this run.",
        "",
        "## Machine",
        "",
        f"- cores: {m.get('cores', '?')}; CPU: {m.get('cpu') or '?'}; "
        f"memory: {m.get('mem_total_gb', '?')} GB",
        "- load average before the run (1/5/15 min): "
        + (" / ".join(f"{x:.2f}" for x in load) if load else "?"),
        f"- git commit: {commit}",
        f"- Python {m.get('python', '?')} on {m.get('platform', '?')}",
        "",
        "## Figures",
        "",
        "| area | figure | value |",
        "|---|---|---|",
    ]
    lines += [
        f"| {_cell(r.area)} | {_cell(r.figure)} | {_cell(r.value)} |" for r in rows_for(report)
    ]
    lines += ["", "## Scripts", "", "| job | arguments | wall time | status |", "|---|---|---|---|"]
    for r in report.results:
        status = "ok" if r.ok else _failed(r)
        args = " ".join(r.job.args) or "(defaults)"
        lines.append(
            f"| {_cell(r.job.name)} | `{_cell(args)}` | {r.wall_s:,.0f} s | {_cell(status)} |"
        )
    lines += ["", "## Charts", ""]
    for name, title in (
        ("throughput.png", "Throughput per client and pipeline"),
        ("sos_latency.png", "SOS latency percentiles against background rate"),
        ("fall_cv.png", "Fall detection: sensitivity and specificity per source and rate"),
    ):
        why = report.charts.get(name)
        if why == "":
            lines += [f"![{title}]({name})", ""]
        else:
            lines += [f"- {title}: not drawn: {why or 'charts not drawn'}", ""]
    lines += [
        "Raw figures: `results.json`; each script's output: `<job>.log`.",
        "",
    ]
    return "\n".join(lines)


def write_report(report: Report, out_dir: Path) -> Path:
    """Charts, Markdown and raw JSON into ``out_dir``; returns the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report.charts = draw_charts(report, out_dir)
    path = out_dir / "report.md"
    path.write_text(render_markdown(report))
    raw = {
        "machine": report.machine,
        "quick": report.quick,
        "jobs": [
            {
                "name": r.job.name,
                "script": r.job.script,
                "args": list(r.job.args),
                "wall_s": round(r.wall_s, 1),
                "error": r.error,
                "figures": r.figures,
            }
            for r in report.results
        ],
    }
    (out_dir / "results.json").write_text(json.dumps(raw, indent=1, allow_nan=False) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    ap.add_argument(
        "--only", action="append", choices=SCRIPTS, help="run only this script (repeatable)"
    )
    ap.add_argument("--out", type=Path, help="output directory (default bench/results/<UTC>)")
    ap.add_argument(
        "--alert-rates",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        help="background msg/s for bench/alerts.py, comma-separated",
    )
    ap.add_argument("--no-nodered", action="store_true", help="skip the Node-RED peer phase")
    args = ap.parse_args(argv)
    selected = tuple(args.only or SCRIPTS)
    machine = machine_info()  # before anything runs: the load average is the box's own
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir: Path = args.out or RESULTS_DIR / stamp
    jobs = plan(
        quick=args.quick, only=selected, alert_rates=args.alert_rates, nodered=not args.no_nodered
    )
    results = []
    for i, job in enumerate(jobs, 1):
        print(f"[{i}/{len(jobs)}] bench/{job.script}.py {' '.join(job.args)}", flush=True)
        result = run_job(job, log_dir=out_dir)
        status = "ok" if result.ok else _failed(result)
        print(f"      {result.wall_s:,.0f} s: {status}", flush=True)
        results.append(result)
    report = Report(machine, results, quick=args.quick, selected=selected)
    path = write_report(report, out_dir)
    for row in rows_for(report):
        print(f"{row.area:12} {row.figure:62} {row.value}")
    print(f"report: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
