"""Property tests of the loader: whatever text it is given, `load_fleet_text` returns a valid config or positioned
diagnostics, and never raises.

Three sources of documents: random YAML-ish text; random JSON-like values dumped as YAML; and mutations of
fleet.yaml.example (of its data: delete a key, change a scalar's type, duplicate a list item, swap two values;
of its text: insert garbage, truncate). How fast it returns (hostile input must not make it slow: 1 s per
document) is measured by bench/loader.py, not here: a timed unit test fails when the machine is busy. hypothesis'
own deadline is off for the same reason.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import math
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.plugins.registry import load_registry
from fleet.schema.api import LoadResult, load_fleet_text
from fleet.schema.loading import load_text, make_yaml

EXAMPLE_TEXT = (Path(__file__).resolve().parents[2] / "fleet.yaml.example").read_text(encoding="utf-8")
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
BACKENDS = load_registry().settings_validators()

# FLEET_PROPERTY_EXAMPLES=5000 for a longer soak; the default keeps the whole file under ~30 s
PROPERTY = settings(max_examples=int(os.environ.get("FLEET_PROPERTY_EXAMPLES", "250")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def check(text: str) -> LoadResult:
    """The property every document must have; returns the result for further checks."""
    result = load_fleet_text(text, "fleet.yaml", backends=BACKENDS, now=NOW)
    if result.ok:
        assert result.config is not None
        assert not result.errors
    else:
        assert result.config is None
        assert result.errors, "invalid without an error diagnostic"
    for d in result.diagnostics:
        assert d.line >= 1 and d.col >= 1, d  # text always has a position; 0 is for whole-file problems
        assert d.message and d.file == "fleet.yaml"
        assert "\n" not in d.format().split("\n    hint: ")[0], d  # one line per problem
    return result


def dump(data: Any) -> str:
    out = io.StringIO()
    make_yaml().dump(data, out)
    return out.getvalue()


# -- random text -------------------------------------------------------------------------------------------

YAMLISH = st.lists(
    st.one_of(
        st.sampled_from(list(" \t\n\n\n  :-[]{},#&*!|>'\"?%@`\\=~.0123456789")),
        st.sampled_from(["version: 1\n", "org:\n  id: acme\n", "tenants:\n  - id: a\n", "pools:\n", "  - ", "&a ", "*a",
                         "!!str ", "!!python/object ", "---\n", "<<: ", "\ufeff", "\x85", "\u2028"]),
        st.characters(),
    ),
    max_size=200,
).map("".join)


@PROPERTY
@given(YAMLISH)
def test_random_text(text: str) -> None:
    check(text)


# -- random JSON-like documents ----------------------------------------------------------------------------

# printable text: ruamel's dumper mangles some control characters (NEL, line separators), which is not ours to test
TEXT = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=30)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT,
    st.sampled_from(["1", "yes", "no", "~", "null", "2027-06-30", "0x1F", "1e3", ".inf", "on_demand", "fin-prod"]),
)
KEYS = st.one_of(TEXT, st.sampled_from(["version", "org", "tenants", "projects", "pools", "keys", "id"]))
JSONISH = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(KEYS, inner, max_size=5),
                       max_leaves=40)


@PROPERTY
@given(JSONISH)
def test_random_documents_dumped_as_yaml(doc: Any) -> None:
    text = dump(doc)
    check(text)
    if isinstance(doc, dict) and doc:
        # what the loader reads back is what was written
        assert load_text(text).data == doc


@PROPERTY
@given(st.dictionaries(KEYS, JSONISH, min_size=1, max_size=6))
def test_random_mappings_as_json_text(doc: dict) -> None:
    import json

    text = json.dumps(doc)  # JSON is YAML too
    check(text)


# -- mutations of the example ------------------------------------------------------------------------------

EXAMPLE = load_text(EXAMPLE_TEXT).data


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


PATHS = _paths(EXAMPLE)[1:]


def _get(data: Any, path: tuple) -> Any:
    for part in path:
        data = data[part]
    return data


def _set(data: Any, path: tuple, value: Any) -> None:
    _get(data, path[:-1])[path[-1]] = value


def _delete(data: Any, path: tuple) -> None:
    del _get(data, path[:-1])[path[-1]]


OTHER_TYPES = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False, allow_infinity=True),
                        st.text(max_size=8), st.builds(list), st.builds(dict), st.builds(lambda: ["x"]),
                        st.builds(lambda: {"id": "x"}))  # a fresh object each time: shared ones made cycles


@st.composite
def data_mutations(draw: st.DrawFn) -> dict:
    data = copy.deepcopy(EXAMPLE)
    for _ in range(draw(st.integers(1, 3))):
        live = [p for p in _paths(data)[1:]]
        path = draw(st.sampled_from(live))
        op = draw(st.sampled_from(["delete", "retype", "duplicate", "swap"]))
        parent = _get(data, path[:-1])
        if op == "delete":
            _delete(data, path)
        elif op == "retype":
            _set(data, path, draw(OTHER_TYPES))
        elif op == "duplicate" and isinstance(parent, list):
            parent.insert(path[-1], copy.deepcopy(parent[path[-1]]))
        elif op == "swap":
            other = draw(st.sampled_from(live))
            if path[: len(other)] != other and other[: len(path)] != path:  # neither contains the other
                a, b = copy.deepcopy(_get(data, path)), copy.deepcopy(_get(data, other))
                _set(data, path, b)
                _set(data, other, a)
    return data


@PROPERTY
@given(data_mutations())
def test_mutated_example_data(data: dict) -> None:
    check(dump(data))


GARBAGE = st.text(alphabet=st.sampled_from(list(":-[]{}#&*!|>'\"\t\n \x00\x7f") + ["é", "\ud7ff", "\ufffd"]),
                  min_size=1, max_size=8)


@PROPERTY
@given(st.integers(0, len(EXAMPLE_TEXT)), GARBAGE, st.booleans())
def test_example_text_with_garbage(at: int, garbage: str, replace: bool) -> None:
    end = at + len(garbage) if replace else at
    check(EXAMPLE_TEXT[:at] + garbage + EXAMPLE_TEXT[end:])


@PROPERTY
@given(st.integers(0, len(EXAMPLE_TEXT)))
def test_truncated_example(at: int) -> None:
    check(EXAMPLE_TEXT[:at])


def test_the_example_itself_is_valid() -> None:
    result = check(EXAMPLE_TEXT)
    assert result.ok, [d.format() for d in result.diagnostics]


def test_a_redefined_anchor_is_legal_and_silent(recwarn: pytest.WarningsRecorder) -> None:
    doc = load_text("a: &x 1\nb: &x 2\nc: *x\n")
    assert doc.data == {"a": 1, "b": 2, "c": 2}
    assert not recwarn.list


def test_nan_and_infinity_do_not_crash() -> None:
    for text in ("version: .nan\n", "version: 1\norg: {id: acme}\ntenants: [{id: a}]\npools: [{id: p, cost: {per_host_hour: .inf}}]\n"):
        result = check(text)
        assert not result.ok
    assert math.isnan(load_text("a: .nan\n").data["a"])
