"""Lint what can be linted here of deploy/ (Docker does not run on this machine): the YAML
parses, the compose file is consistent with itself and with the server's settings, the
Dockerfile has its steps, Prometheus scrapes the server, and every metric the Grafana
dashboard queries is one the server really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from ingest.metrics import IngestMetrics
from ingest.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = load_yaml(DEPLOY / "docker-compose.yml")
    assert isinstance(doc, dict)
    return doc


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Series names as Prometheus sees them (counters get _total, histograms _bucket...)."""
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count", "_created")}
        else:
            names.add(family.name)
    return names


def test_every_yaml_file_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yml")) + sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 4
    for f in files:
        assert load_yaml(f) is not None, f


def test_compose_has_the_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"timescaledb", "mosquitto", "carecall", "prometheus", "grafana"} <= set(services)
    assert services["timescaledb"]["image"] == "timescale/timescaledb:latest-pg16"
    assert services["carecall"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / services["carecall"]["build"]["context"] / "deploy/Dockerfile").is_file()
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"


def _volumes(svc: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for v in svc.get("volumes", []):
        # "${VAR:-default}:/target:ro": the source may itself contain a colon.
        source, target = re.split(r":(?=/)", v, maxsplit=1)
        out.append((source, target.split(":")[0]))
    return out


def test_compose_volumes_and_ports_are_consistent(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes", {}))
    used: set[str] = set()
    for name, svc in compose["services"].items():
        for source, target in _volumes(svc):
            assert target.startswith("/"), (name, target)
            if source.startswith((".", "/", "$")):
                if "$" not in source:
                    assert (DEPLOY / source).exists(), f"{name}: bind mount {source} missing"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
                used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"
    host_ports = [
        str(p).split(":")[0] for svc in compose["services"].values() for p in svc.get("ports", [])
    ]
    assert len(host_ports) == len(set(host_ports)), host_ports
    assert "8080:8080" in compose["services"]["carecall"]["ports"]
    assert "1883:1883" in compose["services"]["mosquitto"]["ports"]


def test_compose_mosquitto_gets_the_shipped_config(compose: dict[str, Any]) -> None:
    services = compose["services"]
    conf = (DEPLOY / "mosquitto/mosquitto.conf").read_text()
    # Persistence on, into a named volume mounted where the config says.
    assert re.search(r"^persistence true$", conf, re.M)
    location = re.search(r"^persistence_location (\S+)$", conf, re.M)
    assert location is not None
    mosq = {t: s for s, t in _volumes(services["mosquitto"])}
    assert location.group(1).rstrip("/") in mosq
    assert mosq[location.group(1).rstrip("/")] in compose["volumes"]
    # The config directory (conf, limits, generated passwords + ACL) is one shared volume,
    # written by the broker-config one-shot from ./mosquitto and the registry.
    assert "/mosquitto/config" in mosq
    writer = {t: s for s, t in _volumes(services["broker-config"])}
    assert writer["/mosquitto/config"] == mosq["/mosquitto/config"]
    assert writer["/shipped"] == "./mosquitto"
    script = services["broker-config"]["command"][0]
    assert "conf.d" in script and "carecall broker-config --out /mosquitto/config" in script
    assert (DEPLOY / "mosquitto/conf.d/limits.conf").is_file()
    assert "include_dir /mosquitto/config/conf.d" in conf
    for generated in (
        "password_file /mosquitto/config/passwords",
        "acl_file /mosquitto/config/acl",
    ):
        assert generated in conf
    assert services["mosquitto"]["depends_on"]["broker-config"]["condition"] == (
        "service_completed_successfully"
    )


def test_compose_environment_names_real_settings(compose: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    env = compose["services"]["carecall"]["environment"]
    assert env["CARECALL_MQTT_HOST"] == "mosquitto"
    assert "@timescaledb:5432/" in env["CARECALL_DATABASE_URL"]
    for key in env:
        assert key.startswith("CARECALL_"), key
        assert key.removeprefix("CARECALL_").lower() in fields, f"{key} is not a setting"
    assert env["CARECALL_ENVIRONMENT"] == "production"
    # Secrets come from the environment / .env, never from the file.
    for secret in ("CARECALL_SECRET_KEY", "CARECALL_MQTT_PASSWORD"):
        assert str(env[secret]).startswith("${"), secret


def test_dockerfile_has_the_needed_steps() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    assert "pip install ." in text
    assert re.search(r"^EXPOSE 8080$", text, re.M)
    assert re.search(r"^USER (?!root)\S+", text, re.M), "runs as a non-root user"
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert "CARECALL_HTTP_HOST=0.0.0.0" in text, "must listen beyond loopback in a container"
    assert re.search(r'^CMD \["serve"\]$', text, re.M)
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for part in src.split():
            assert (REPO / part).exists(), f"COPY source {part} missing"


def test_prometheus_scrapes_the_server(compose: dict[str, Any]) -> None:
    doc = load_yaml(DEPLOY / "prometheus.yml")
    jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
    job = jobs["carecall"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["carecall:8080"]
    mounts = {t: s for s, t in _volumes(compose["services"]["prometheus"])}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./prometheus.yml"


def test_grafana_provisioning_points_at_the_dashboards(compose: dict[str, Any]) -> None:
    (ds_file,) = (DEPLOY / "grafana/provisioning/datasources").glob("*.yml")
    (datasource,) = load_yaml(ds_file)["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    (prov_file,) = (DEPLOY / "grafana/provisioning/dashboards").glob("*.yml")
    (provider,) = load_yaml(prov_file)["providers"]
    mounts = {t: s for s, t in _volumes(compose["services"]["grafana"])}
    assert mounts[provider["options"]["path"]] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    dash = json.loads((DEPLOY / "grafana/dashboards/carecall.json").read_text())
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]


def _exprs(dash: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dash["panels"] if p["type"] != "row" for t in p["targets"]]


def test_dashboard_queries_only_exported_metrics() -> None:
    dash = json.loads((DEPLOY / "grafana/dashboards/carecall.json").read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
    exported = exported_names(IngestMetrics().registry)
    named = {m for e in _exprs(dash) for m in re.findall(r"\b(carecall_[a-z0-9_]+)", e)}
    ingest_named = {m for m in named if not m.startswith("carecall_alert_")}
    assert ingest_named, "the dashboard shows ingest metrics"
    assert ingest_named <= exported, f"not exported by the server: {ingest_named - exported}"
    # The core figures have panels (new metrics may arrive before their panel does).
    for core in (
        "messages_received",
        "messages_stored",
        "messages_rejected",
        "db_up",
        "receive_to_durable_seconds",
        "pending_messages",
        "spool_bytes",
    ):
        assert any(m.startswith(f"carecall_ingest_{core}") for m in ingest_named), core
    assert "carecall_broker_dropped_per_min" in ingest_named


def test_dashboard_alert_panels_match_the_alert_metrics_if_present() -> None:
    alerts_metrics = pytest.importorskip("alerts.metrics")
    registry = CollectorRegistry()
    alerts_metrics.AlertMetrics(registry)
    exported = exported_names(registry)
    dash = json.loads((DEPLOY / "grafana/dashboards/carecall.json").read_text())
    named = {m for e in _exprs(dash) for m in re.findall(r"\b(carecall_alert_[a-z0-9_]+)", e)} - {
        "carecall_alert_"
    }
    assert named <= exported, named - exported


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_units_verify(tmp_path: Path) -> None:
    units = sorted((DEPLOY / "systemd").glob("*.service")) + sorted(
        (DEPLOY / "systemd").glob("*.timer")
    )
    assert {u.name for u in units} >= {"carecall.service", "carecall-migrate.service"}
    for unit in units:
        shutil.copy(unit, tmp_path / unit.name)
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(tmp_path / u.name) for u in units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # The binary is installed on the target host, not here: that complaint is expected.
    problems = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if line.strip() and "is not executable" not in line
    ]
    assert not problems, problems
