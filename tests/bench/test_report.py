"""bench/report.py: the table and charts from realistic results, failed scripts, and one real
quick run of a bench script through the runner."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from bench.report import (
    PNG_MAGIC,
    Job,
    JobResult,
    Report,
    last_json_line,
    plan,
    render_markdown,
    rows_for,
    run_job,
    write_report,
)

MACHINE = {
    "utc": "2026-11-23 15:00:00 UTC",
    "cores": 2,
    "load_avg_before": [0.43, 0.34, 0.15],
    "python": "3.11.7",
    "platform": "Linux-x86_64",
    "cpu": "Test CPU",
    "mem_total_gb": 23.5,
    "git_commit": "1d15877abcde",
    "git_dirty": False,
}

# Shaped like the final JSON lines the scripts print (figures from docs/ingest.md's run).
INGEST = {
    "messages": 200000, "publishers": 2, "ceiling_gmqtt_msgs_per_s": 28297,
    "ceiling_own_client_msgs_per_s": 41422, "pipeline_vitals_msgs_per_s": 39238,
    "pipeline_over_ceiling": 1.387, "pipeline_p50_ms": 310.2, "pipeline_p99_ms": 702.5,
    "pipeline_rss_before_mb": 62.0, "pipeline_rss_peak_during_mb": 111.0,
    "accel50_samples_per_s": 700000, "accel200_samples_per_s": 2000000,
    "accel200_windows_per_s": 10000, "pipeline_over_own_client_ceiling": 0.947,
    "paced_rate_msgs_per_s": 5000, "paced_p50_ms": 6.7, "paced_p99_ms": 12.7,
    "nodered_msgs_per_s_not_durable": 12352, "carecall_over_nodered": 3.177,
}  # fmt: skip
CLIENTS = {
    "gmqtt_optimistic_not_durable": 28000, "gmqtt_held_ack": 18000,
    "paho_auto_ack_not_durable": 9000, "paho_manual_ack": 8000, "aiomqtt_not_durable": 6600,
    "ours_held_ack_batched": 56000, "messages": 100000, "publishers": 2,
}  # fmt: skip
RULES = {
    "devices": 10000, "batch": 5000, "repeat": 3,
    "accel_50hz_runner_batch5000_samples_per_s": {"median": 8.1e6, "min": 6.0e6, "max": 10.3e6},
    "accel_50hz_runner_process_samples_per_s": {"median": 0.9e6, "min": 0.7e6, "max": 1.2e6},
    "accel_200hz_runner_batch5000_samples_per_s": {"median": 9.0e6, "min": 8e6, "max": 9.5e6},
    "accel_200hz_runner_process_samples_per_s": {"median": 2.0e6, "min": 1.9e6, "max": 2.1e6},
    "vitals_batch_samples_per_s": {"median": 450000.0, "min": 400000.0, "max": 500000.0},
    "state_wearable_presized_bytes_per_device": 882.0,
    "state_all_kinds_presized_bytes_per_device": 1125.0,
    "accel_target_met": True, "state_target_met": False, "state_target_met_wearable": True,
}  # fmt: skip


def alerts(rate: int, p50: float, p99: float) -> dict[str, object]:
    return {
        "bench": "alerts", "target_rate_msg_s": rate, "background_acked_rate_msg_s": rate - 50,
        "stored_rate_msg_s": rate - 80, "sos_sent": 100, "sos_received": 100,
        "sos_to_console_p50_ms": p50, "sos_to_console_p99_ms": p99,
        "sos_to_console_max_ms": p99 * 1.3, "rule_inputs_dropped": 0, "cpus": 2,
    }  # fmt: skip


def summary(sens: float, spec: float) -> dict[str, object]:
    return {
        "sensitivity": sens, "specificity": spec, "false_alarms_per_hour_adl": 0.5,
        "falls_detected": 98, "falls": 100, "adl_false_alarms": 1, "adl": 120,
        "adl_hours": 2.0, "trials_scored": 220, "trials_skipped": 0, "delay_median_s": 2.3,
        "delay_p95_s": 2.6, "detector_msamples_per_s": 3.1,
    }  # fmt: skip


FALL_CV = {
    "protocol": "leave-one-subject-out",
    "final_params": {"trunk": {"impact_g": 4.0}},
    "held_out": {
        "trunk:sisfall_waist@200Hz": summary(0.981, 0.989),
        "trunk:sisfall_waist@20Hz": summary(0.973, 0.995),
        "trunk:umafall_waist@20Hz": summary(0.971, 0.966),
        "wrist:umafall_wrist@20Hz": summary(0.914, 0.970),
    },
}


def ok(job: Job, figures: dict[str, object]) -> JobResult:
    return JobResult(job, dict(figures), None, 12.0)


def full_report() -> Report:
    results = [
        ok(Job("ingest", "ingest"), INGEST),
        ok(Job("mqtt_clients", "mqtt_clients"), CLIENTS),
        ok(Job("rules", "rules"), RULES),
        ok(Job("alerts@5000", "alerts", ("--rate", "5000")), alerts(5000, 4.1, 9.0)),
        ok(Job("alerts@10000", "alerts", ("--rate", "10000")), alerts(10000, 6.3, 19.5)),
        ok(Job("alerts@20000", "alerts", ("--rate", "20000")), alerts(20000, 14.8, 61.2)),
        ok(Job("fall_cv", "fall_cv"), FALL_CV),
    ]
    return Report(dict(MACHINE), results)


def table(markdown: str) -> dict[str, str]:
    """figure -> value, from the report's Markdown table."""
    out = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("area", "---"):
            out[cells[1]] = cells[2]
    return out


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def test_report_table_and_charts(tmp_path: Path) -> None:
    path = write_report(full_report(), tmp_path)
    md = path.read_text()
    rows = table(md)
    assert rows["durable pipeline, vitals (PUBACK after COPY + commit)"] == "39,238 msg/s"
    assert rows["ceiling: gmqtt, QoS 1, acks on receipt (not durable)"] == "28,297 msg/s"
    assert rows["ratio: durable pipeline / gmqtt ceiling"] == "1.39x"
    assert rows["ratio: durable pipeline / our client ceiling"] == "0.95x"
    assert rows["ratio: CareCall durable pipeline / Node-RED"] == "3.18x"
    assert rows["receive -> durable paced at 5,000 msg/s, p50 / p99"] == "6.7 ms / 12.7 ms"
    assert rows["pipeline RSS: before the burst -> peak during it"] == "62 MB -> 111 MB"
    assert rows["ours (ingest.mqtt), held acks, batched"] == "56,000 msg/s (2.00x gmqtt optimistic)"
    assert rows["fall detector via RuleRunner.process_batch (5,000/batch), 50 Hz"] == (
        "8,100,000 samples/s"
    )
    assert rows["rule state per wearable (vitals + fall), presized"] == "882 B"
    assert rows["target <= 1 KB state per device, all kinds"] == "NOT met"
    assert rows["background 20,000 msg/s: SOS -> console p50 / p99 / max"] == (
        "14.8 ms / 61.2 ms / 79.6 ms (100/100 received)"
    )
    assert rows["held-out trunk:sisfall_waist@200Hz: sensitivity / specificity"].startswith(
        "98.1 % / 98.9 % (98/100 falls, 1/120 ADL alarms"
    )
    # The machine the figures belong to.
    assert "cores: 2" in md and "0.43 / 0.34 / 0.15" in md and "1d15877abcde" in md
    for chart in ("throughput.png", "sos_latency.png", "fall_cv.png"):
        assert f"]({chart})" in md
        width, height = png_size(tmp_path / chart)
        assert width >= 500 and height >= 300
        assert (tmp_path / chart).stat().st_size > 10_000
    raw = json.loads((tmp_path / "results.json").read_text())
    assert [j["name"] for j in raw["jobs"]][:3] == ["ingest", "mqtt_clients", "rules"]
    assert raw["jobs"][0]["figures"]["pipeline_vitals_msgs_per_s"] == 39238


def test_failed_script_and_missing_figures(tmp_path: Path) -> None:
    ingest_without_nr = {k: v for k, v in INGEST.items() if "nodered" not in k}
    report = Report(
        dict(MACHINE),
        [
            JobResult(
                Job("ingest", "ingest"),
                ingest_without_nr,
                None,
                300.0,
                ("Node-RED peer not measured: npm install failed (exit 1)", "other"),
            ),
            JobResult(
                Job("mqtt_clients", "mqtt_clients"),
                None,
                "RuntimeError: broker closed the publisher",
                4.0,
            ),
            # A changed output format: keys missing must read "not reported", not crash.
            ok(Job("alerts@5000", "alerts", ("--rate", "5000")), {"sos_sent": 3}),
        ],
        selected=("ingest", "mqtt_clients", "alerts"),
    )
    path = write_report(report, tmp_path)
    md = path.read_text()
    rows = table(md)
    assert rows["bench/mqtt_clients.py"] == "failed: RuntimeError: broker closed the publisher"
    assert rows["Node-RED peer (same messages, same table)"] == (
        "not measured: npm install failed (exit 1)"
    )
    assert rows["ratio: CareCall / Node-RED"] == "not measured: npm install failed (exit 1)"
    assert rows["background 5,000 msg/s: reached (broker acked / stored)"] == (
        "not reported / not reported"
    )
    assert rows["bench/rules.py"] == "not measured: not selected (--only)"
    assert rows["bench/fall_cv.py"] == "not measured: not selected (--only)"
    assert "| mqtt_clients | `(defaults)` | 4 s | failed: RuntimeError" in md
    # Charts are drawn from what there is, and say why when there is nothing.
    assert png_size(tmp_path / "throughput.png")[0] > 0
    assert not (tmp_path / "sos_latency.png").exists()
    assert "not drawn: no SOS latency figures in this run" in md
    assert "not drawn: no fall cross-validation figures in this run" in md


def test_runner_reports_a_script_that_fails(tmp_path: Path) -> None:
    result = run_job(Job("rules", "rules", ("--devices", "many")), log_dir=tmp_path)
    assert not result.ok
    assert result.error is not None
    assert "invalid int value: 'many'" in result.error
    rows = rows_for(Report(dict(MACHINE), [result], selected=("rules",)))
    failed = [r for r in rows if r.area == "rules"]
    assert [r.value for r in failed] == [f"failed: {result.error}"]
    assert "invalid int value" in (tmp_path / "rules.log").read_text()


def test_real_quick_rules_run_through_the_runner(tmp_path: Path) -> None:
    job = Job(
        "rules",
        "rules",
        ("--devices", "40", "--seconds", "3", "--repeat", "1", "--vitals-rounds", "3",
         "--batch", "100"),
        timeout_s=120,
    )  # fmt: skip
    result = run_job(job, log_dir=tmp_path)
    assert result.ok, result.error
    assert result.figures is not None and result.figures["devices"] == 40
    report = Report(dict(MACHINE), [result], selected=("rules",))
    md = render_markdown(report)
    rows = table(md)
    value = rows["fall detector via RuleRunner.process_batch (100/batch), 50 Hz"]
    assert value.endswith(" samples/s")
    assert float(value.split()[0].replace(",", "")) > 0
    assert rows["rule state per wearable (vitals + fall), presized"].endswith(" B")
    assert rows["target <= 1 KB state per wearable"] in ("met", "NOT met")


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [
        ('table\n{"a": 1}\n', {"a": 1}),
        ('{"a": 1}\n{"b": 2}\n# elapsed 3 s\n', {"b": 2}),
        ('{"a": 1}\n{not json}\n', {"a": 1}),
        ("[1, 2]\nno json here\n", None),
        ("", None),
    ],
)
def test_last_json_line(stdout: str, expected: dict[str, int] | None) -> None:
    assert last_json_line(stdout) == expected


def test_plan_quick_only_and_rates() -> None:
    full = plan(quick=False)
    assert [j.name for j in full] == [
        "ingest", "mqtt_clients", "rules", "alerts@5000", "alerts@10000", "alerts@20000",
        "fall_cv",
    ]  # fmt: skip
    assert all(j.path.exists() for j in full)
    quick = plan(quick=True, only=["alerts", "ingest"], alert_rates=[2000], nodered=False)
    assert [j.name for j in quick] == ["ingest", "alerts@2000"]
    assert "--no-nodered" in quick[0].args and "--messages" in quick[0].args
    assert quick[1].args == ("--rate", "2000", "--seconds", "8", "--sos", "20")
    with pytest.raises(ValueError, match="unknown bench script"):
        plan(quick=True, only=["nope"])
