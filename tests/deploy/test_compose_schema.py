"""deploy/docker-compose.yml against the Compose Specification's JSON schema.

Docker and its compose plugin do not run here, so `docker compose config` cannot check the
file. The schema comes from PyPI inside check-jsonschema (its vendored copy of the
compose-spec schema, `vendor.compose-spec`, Apache-2.0); jsonschema validates against it.
What this does not check: image names, interpolated values, or that the stack starts.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "docker-compose.yml"


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    text = (
        resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    ).read_text()
    schema = json.loads(text)
    assert schema["title"] == "Compose Specification"
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def errors(validator: Draft202012Validator, doc: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def test_compose_file_follows_the_compose_spec(
    validator: Draft202012Validator, compose: dict[str, Any]
) -> None:
    assert errors(validator, compose) == []


@pytest.mark.parametrize(
    ("path", "value", "complaint"),
    [
        (("services", "carecall", "restart_policy"), "always", "restart_policy"),  # unknown key
        (("services", "mosquitto", "ports"), "1883:1883", "is not of type 'array'"),
        (("services", "timescaledb", "healthcheck", "intervall"), "5s", "intervall"),
        (("volumes", "pgdata", "drivr"), "local", "drivr"),
    ],
)
def test_the_schema_refuses_a_broken_file(
    validator: Draft202012Validator,
    compose: dict[str, Any],
    path: tuple[str, ...],
    value: object,
    complaint: str,
) -> None:
    """The check has teeth: one wrong key or type in a copy of our file is reported."""
    broken = copy.deepcopy(compose)
    node = broken
    for key in path[:-1]:
        if node.get(key) is None:  # `pgdata:` (null) is a volume with every default
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    found = errors(validator, broken)
    assert found and any(complaint in e for e in found), found
