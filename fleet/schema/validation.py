"""JSON Schema validation of fleet.yaml, with errors turned into positioned, readable diagnostics.

`base_schema()` is the checked-in fleet.schema.json; `compose_schema(backend_fragments)` adds each backend's
settings fragment (from its pydantic settings model) as an if/then on `pool.backend`, for editors and
`fleet schema`; `validate_data(doc)` checks a LoadedDocument against the base schema with jsonschema
(draft 2020-12) and returns every problem at once. Called by fleet.schema.api and `fleet schema`.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError, best_match

from fleet.schema.diagnostics import Diagnostic, did_you_mean
from fleet.schema.loading import LoadedDocument

SCHEMA_FILE = "fleet.schema.json"

_format_checker = FormatChecker(formats=())


@_format_checker.checks("date-time", raises=ValueError)
def _is_datetime(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if "T" not in value.upper():
        raise ValueError("not a date-time")
    parsed = dt.datetime.fromisoformat(value.replace("z", "Z"))
    if parsed.tzinfo is None:
        raise ValueError("no time zone")
    return True


@functools.cache
def _base_schema_text() -> str:
    return resources.files("fleet.schema").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


def base_schema() -> dict[str, Any]:
    """The checked-in JSON Schema (a fresh copy)."""
    return json.loads(_base_schema_text())


def compose_schema(backend_fragments: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The base schema plus, per backend, `if backend == NAME then settings: <fragment>`."""
    schema = base_schema()
    pool = schema["$defs"]["pool"]
    branches = []
    for name, fragment in sorted(backend_fragments.items()):
        frag = copy.deepcopy(fragment)
        defs = frag.pop("$defs", {})
        for def_name, definition in defs.items():
            schema["$defs"][f"{name}_{def_name}"] = definition
        frag = json.loads(json.dumps(frag).replace('"#/$defs/', f'"#/$defs/{name}_'))
        schema["$defs"][f"settings_{name}"] = frag
        branches.append(
            {
                "if": {"properties": {"backend": {"const": name}}, "required": ["backend"]},
                "then": {"properties": {"settings": {"$ref": f"#/$defs/settings_{name}"}}},
            }
        )
    if branches:
        pool["allOf"] = branches
        pool["properties"]["backend"]["examples"] = sorted(backend_fragments)
    return schema


@functools.cache
def _validator() -> Draft202012Validator:
    schema = base_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=_format_checker)


def _what(schema: Mapping[str, Any]) -> str:
    desc = schema.get("description", "")
    return desc.split(":", 1)[0].split(".", 1)[0].lower() if desc else "the expected pattern"


def _join(values: list[Any]) -> str:
    return ", ".join(repr(v) for v in values)


def _error_to_diagnostics(err: ValidationError, doc: LoadedDocument) -> list[Diagnostic]:
    path = tuple(err.absolute_path)
    value = err.instance
    kind = err.validator
    # jsonschema types these as possibly unset (or a boolean schema); an error we handle always has them
    schema: Mapping[str, Any] = err.schema if isinstance(err.schema, Mapping) else {}

    def diag(message: str, p: tuple = path, *, key: bool = True, h: str | None = None) -> Diagnostic:
        line, col = doc.positions.of_key(p) if key else doc.positions.of_value(p)
        return Diagnostic(message, doc.file, line, col, p, code=f"schema.{kind}", hint=h)

    if kind == "additionalProperties" and isinstance(value, dict):
        allowed = list(schema.get("properties", {}))
        extras = [k for k in value if k not in allowed]
        return [
            diag(f"unknown property {k!r}", (*path, k), h=did_you_mean(k, allowed) or f"allowed here: {', '.join(allowed)}")
            for k in extras
        ]
    if kind == "required":
        missing = err.message.split("'")[1] if "'" in err.message else str(err.validator_value)
        where = path[-1] if path else "the top level"
        subject = f"{where!r}" if isinstance(where, str) and path else ("item" if path else "the top level")
        if len(path) >= 2 and isinstance(path[-2], str) and isinstance(value, dict) and isinstance(value.get("id"), str):
            subject = f"{path[-2].removesuffix('s')} {value['id']!r}"  # e.g. "pool 'pool-a'", not "item"
        return [diag(f"missing required property {missing!r} in {subject}", key=True)]
    if kind == "enum":
        choices = err.validator_value if isinstance(err.validator_value, list) else []
        hint = did_you_mean(value, choices)
        return [diag(f"{value!r} is not one of {_join(choices)}", key=False, h=hint)]
    if kind == "const":
        return [diag(f"must be {err.validator_value!r}, not {value!r}", key=False)]
    if kind == "type":
        expected = err.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        got = _json_type(value)
        return [diag(f"expected {expected}, got {got} {_short(value)}".rstrip(), key=False)]
    if kind == "pattern":
        return [diag(f"{value!r} is not valid: expected {_what(schema)}", key=False)]
    if kind == "format":
        return [diag(f"{value!r} is not an RFC 3339 {err.validator_value}", key=False,
                     h="write a full timestamp with a time zone, e.g. \"2027-06-30T00:00:00Z\"")]
    if kind in ("oneOf", "anyOf"):
        if path and path[-1] == "secret":
            if isinstance(value, str):
                return [diag("a secret must never be written in fleet.yaml", key=False,
                             h="use `secret: {from_env: VAR_NAME}` or `secret: {generate: true}`")]
            return [diag("secret must be {from_env: VAR_NAME} or {generate: true}", key=False)]
        inner = best_match(err.context) if err.context else None
        if inner is not None:
            return _error_to_diagnostics(inner, doc)
    if kind == "minItems":
        return [diag(f"must have at least {err.validator_value} item(s)", key=False)]
    if kind == "uniqueItems":
        dupes = sorted({repr(v) for v in value if value.count(v) > 1}) if isinstance(value, list) else []
        return [diag(f"has duplicate items: {', '.join(dupes)}", key=False)]
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength"):
        words = {
            "minimum": "must be ≥", "maximum": "must be ≤", "exclusiveMinimum": "must be >",
            "exclusiveMaximum": "must be <", "minLength": "must have at least this many characters:",
            "maxLength": "must have at most this many characters:",
        }
        return [diag(f"{_short(value)} {words[kind]} {err.validator_value}", key=False)]
    return [diag(err.message, key=False)]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _short(value: Any) -> str:
    if isinstance(value, dict | list):
        return ""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


def validate_data(doc: LoadedDocument) -> list[Diagnostic]:
    """All JSON Schema problems of a parsed document, positioned, sorted by line."""
    out: list[Diagnostic] = []
    seen: set[tuple] = set()
    for err in _validator().iter_errors(doc.data):
        for d in _error_to_diagnostics(err, doc):
            key = (d.line, d.col, d.message)
            if key not in seen:
                seen.add(key)
                out.append(d)
    out.sort(key=lambda d: (d.line, d.col))
    return out


def check_meta_schema(schema: Mapping[str, Any]) -> None:
    """Raise jsonschema.SchemaError unless `schema` is valid under the 2020-12 meta-schema."""
    jsonschema.Draft202012Validator.check_schema(schema)
