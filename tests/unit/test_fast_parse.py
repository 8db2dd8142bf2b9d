"""The fast parse (ruamel safe loader, C parser) must yield exactly the round-trip loader's data, or decline.

fleet.schema.api takes the fast path for plain documents and re-parses exactly only to place diagnostics; this
property keeps the two paths indistinguishable: whenever fast_parse returns data, it equals what the round-trip
parse and conversion produce, for random documents, YAML-ish text and the example with garbage inserted.
"""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from fleet.schema.api import load_fleet_text
from fleet.schema.loading import fast_parse, load_text

EXAMPLE = (Path(__file__).resolve().parents[2] / "fleet.yaml.example").read_text()
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def same_as_exact(text: str) -> None:
    fast = fast_parse(text)
    if fast is None:
        return
    exact = load_text(text)
    assert exact.diagnostics == [], f"fast path accepted what the exact parse rejects: {exact.diagnostics}"
    assert fast == exact.data


def dump(data: Any) -> str:
    out = io.StringIO()
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.dump(data, out)
    return out.getvalue()


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=False),
                    st.text(max_size=20), st.sampled_from(["yes", "no", "on", "0x1F", "1_000", "2027-06-30",
                                                           "2027-06-30T00:00:00Z", "~", "null", ".inf", "1e3"]),
                    st.dates(), st.datetimes(timezones=st.just(dt.UTC)))
JSONISH = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                            max_size=4), max_leaves=25)


@PROPERTY
@given(st.dictionaries(st.text(max_size=10), JSONISH, min_size=1, max_size=5))
def test_random_documents(doc: dict) -> None:
    same_as_exact(dump(doc))


YAMLISH = st.lists(st.sampled_from(["a: 1", "b: [x, y]", "c: {d: e}", "- f", "  g: h", "version: 1", "k: 'q'",
                                    'm: "n\\t"', "p: 2027-01-01", "r: 0o17", "s: yes", "t:", "u: |", "  v", "w: 1.5e3"]),
                   max_size=10).map("\n".join)


@PROPERTY
@given(YAMLISH)
def test_yamlish_text(text: str) -> None:
    same_as_exact(text)


@PROPERTY
@given(st.integers(0, len(EXAMPLE)), st.text(alphabet=list(":-[]{}#|>'\"\t\n ,?") + ["é"], max_size=6))
def test_example_with_garbage(at: int, garbage: str) -> None:
    same_as_exact(EXAMPLE[:at] + garbage + EXAMPLE[at:])


def test_example_takes_the_fast_path_and_errors_are_still_placed():
    assert fast_parse(EXAMPLE) is not None
    bad = EXAMPLE.replace("mode: on_demand", "mode: ondemand", 1)
    assert fast_parse(bad) is not None  # syntactically plain: fast ...
    result = load_fleet_text(bad, "fleet.yaml")
    [err] = result.errors  # ... but the diagnostic still has its exact position
    assert err.line > 1 and err.col > 1 and "did you mean 'on_demand'?" in (err.hint or "")
    assert load_fleet_text(EXAMPLE, exact=True).document.tree is not None


def test_documents_with_anchors_tags_or_duplicates_decline():
    assert fast_parse("a: &x 1\nb: *x\n") is None
    assert fast_parse("a: !!str 1\n") is None
    assert fast_parse("a: 1\na: 2\n") is None
    assert fast_parse("- 1\n") is None
