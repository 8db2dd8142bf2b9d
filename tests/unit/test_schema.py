"""The JSON Schema of fleet.yaml: `fleet schema` is a valid 2020-12 schema, the example validates against it,
every property is described (editors show the descriptions), and the backends' settings fragments bite.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator

import fleet.cli.shared
from fleet.cli.main import cli
from fleet.plugins.registry import load_registry
from fleet.schema.api import load_fleet
from fleet.schema.loading import load_document
from fleet.schema.validation import base_schema, compose_schema

EXAMPLE = Path(__file__).resolve().parents[2] / "fleet.yaml.example"
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def schema_output(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["schema", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def composed() -> dict[str, Any]:
    return schema_output()


def example_data() -> Any:
    doc = load_document(EXAMPLE)
    assert doc.ok, doc.diagnostics
    return doc.data


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def test_fleet_schema_is_a_valid_2020_12_schema(composed: dict[str, Any]) -> None:
    assert composed["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(composed)
    Draft202012Validator.check_schema(schema_output("--base"))
    Draft202012Validator.check_schema(base_schema())


def test_fleet_schema_composes_every_installed_backend(composed: dict[str, Any]) -> None:
    names = set(load_registry().backends)
    assert {"local", "docker", "kubernetes", "e2b"} <= names
    assert {f"settings_{n}" for n in names} <= set(composed["$defs"])
    assert len(composed["$defs"]["pool"]["allOf"]) == len(names)
    assert schema_output("--base") == base_schema()


def test_fleet_schema_output_file(tmp_path: Path, composed: dict[str, Any]) -> None:
    out = tmp_path / "fleet.schema.json"
    result = CliRunner().invoke(cli, ["schema", "-o", str(out)])
    assert result.exit_code == 0
    assert json.loads(out.read_text(encoding="utf-8")) == composed


def _example_header() -> list[str]:
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    return lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))]


def _schema_line(lines: list[str]) -> str:
    [line] = [line for line in lines if line.startswith("# yaml-language-server: $schema=")]
    return line


def test_the_examples_schema_line_names_the_composed_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            composed: dict[str, Any]) -> None:
    # a user copies the example, runs the `fleet schema …` command its header gives, and their editor then reads
    # the file the `$schema` line names (relative to the YAML file): that file must exist and be the composed
    # schema, with the backends' settings, not the base schema checked in under fleet/schema/
    header = _example_header()
    target = _schema_line(header).split("$schema=", 1)[1].strip()
    [command] = [c for line in header for c in re.findall(r"`(fleet schema[^`]*)`", line)]
    args = shlex.split(command)[1:]
    (tmp_path / "fleet.yaml").write_text(EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    redirect = args.index(">") if ">" in args else None
    result = CliRunner().invoke(cli, args[:redirect])
    assert result.exit_code == 0, result.output
    if redirect is not None:
        Path(args[redirect + 1]).write_text(result.stdout, encoding="utf-8")
    named = tmp_path / target
    assert named.is_file(), f"{command!r} does not write {target!r}"
    schema = json.loads(named.read_text(encoding="utf-8"))
    assert {f"settings_{n}" for n in load_registry().backends} <= set(schema["$defs"])
    assert schema == composed


def test_readme_and_example_name_the_same_schema_file() -> None:
    readme = (EXAMPLE.parent / "README.md").read_text(encoding="utf-8").splitlines()
    assert _schema_line(readme) == _schema_line(_example_header())


@pytest.mark.parametrize("which", ["base", "composed"])
def test_the_example_validates_against_the_schema(which: str, composed: dict[str, Any]) -> None:
    schema = base_schema() if which == "base" else composed
    errors = [f"{e.json_path}: {e.message}" for e in validator(schema).iter_errors(example_data())]
    assert errors == []


def test_composed_schema_checks_backend_settings(composed: dict[str, Any]) -> None:
    data = example_data()
    docker = next(p for p in data["pools"] if p.get("backend") == "docker")
    docker["settings"] = {"imag": "fleet-agent:local"}  # a typo, and the required image is missing
    messages = [e.message for e in validator(composed).iter_errors(data)]
    assert any("'image' is a required property" in m for m in messages), messages
    assert any("'imag' was unexpected" in m for m in messages), messages


def _properties(node: Any, where: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (location, subschema) that is a property definition, anywhere in the schema."""
    if isinstance(node, dict):
        for name, sub in (node.get("properties") or {}).items():
            yield f"{where}.properties.{name}", sub
        for key, value in node.items():
            yield from _properties(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _properties(value, f"{where}[{i}]")


@pytest.mark.parametrize("which", ["base", "composed"])
def test_every_property_has_a_description(which: str, composed: dict[str, Any]) -> None:
    schema = base_schema() if which == "base" else composed
    props = list(_properties(schema))
    assert len(props) > 50
    missing = []
    for where, sub in props:
        if ".if." in where:  # `if: {properties: {backend: {const: docker}}}` is a condition, not a property
            continue
        described = isinstance(sub, dict) and bool(sub.get("description"))
        if not described and isinstance(sub, dict) and "$ref" in sub:
            # a bare $ref is described by its target (the editor shows the target's description)
            target = schema
            for part in sub["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            described = bool(target.get("description"))
        if not described:
            missing.append(where)
    assert missing == []


def test_every_object_in_the_base_schema_rejects_unknown_properties() -> None:
    def objects(node: Any, where: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
        if isinstance(node, dict):
            if "properties" in node:
                yield where, node
            for key, value in node.items():
                yield from objects(value, f"{where}.{key}")

    open_ = [w for w, node in objects(base_schema()) if node.get("additionalProperties") is not False]
    assert open_ == []


def test_example_passes_fleet_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    # a fixed clock: the example's keys carry real expiry dates
    monkeypatch.setattr(fleet.cli.shared, "load_fleet", functools.partial(load_fleet, now=NOW))
    result = CliRunner().invoke(cli, ["validate", "-f", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


def test_json_schema_and_loader_agree_on_the_example() -> None:
    # the checked-in schema is what the loader validates with; jsonschema alone must accept the same data
    jsonschema.validate(example_data(), base_schema(), cls=Draft202012Validator)


def test_compose_schema_without_backends_is_the_base() -> None:
    assert compose_schema({}) == base_schema()
