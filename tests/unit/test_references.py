"""Table-driven tests of the pure parts of reading fleet.yaml: positions, `extends` resolution, reference and
invariant checks (fleet.schema.references), 'did you mean' hints and JSON paths (fleet.schema.diagnostics).
"""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path
from typing import Any

import pytest

from fleet.plugins.registry import load_registry
from fleet.schema.api import load_fleet, load_fleet_text
from fleet.schema.diagnostics import Diagnostic, did_you_mean, json_path
from fleet.schema.loading import load_text
from fleet.schema.references import check_references

EXAMPLE = Path(__file__).resolve().parents[2] / "fleet.yaml.example"
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
BACKENDS = load_registry().settings_validators()

HEAD = """\
version: 1
org: {id: acme}
tenants: [{id: fin-prod}, {id: health-prod}]
"""


def fleet(body: str) -> str:
    return HEAD + textwrap.dedent(body)


def errors(text: str, **kw: Any) -> list[Diagnostic]:
    return load_fleet_text(text, backends=BACKENDS, now=kw.pop("now", NOW), **kw).errors


# -- positions ---------------------------------------------------------------------------------------------

POSITIONS_DOC = """\
version: 1
org:
  id: acme
pools:
  - id: p1
    hosts: {min: 2, max: 4}
    labels: [gpu, region=eu]
    settings:
      env:
        A: "1"
  -   id: p2
keys:
  - pools:
      - p1
"""


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        (("version",), (1, 10), (1, 1)),
        (("org", "id"), (3, 7), (3, 3)),
        (("pools", 0), (5, 5), None),
        (("pools", 0, "id"), (5, 9), (5, 5)),
        (("pools", 0, "hosts", "min"), (6, 18), (6, 13)),
        (("pools", 0, "hosts", "max"), (6, 26), (6, 21)),
        (("pools", 0, "labels", 1), (7, 19), None),
        (("pools", 0, "settings", "env", "A"), (10, 12), (10, 9)),
        (("pools", 1, "id"), (11, 11), (11, 7)),
        (("keys", 0, "pools", 0), (14, 9), None),
        # a path that does not exist falls back to its nearest ancestor
        (("pools", 0, "hosts", "nope"), (6, 12), (6, 12)),
        (("nope", 3), (1, 1), (1, 1)),
    ],
)
def test_positions_of_nested_values(path: tuple, value: tuple[int, int], key: tuple[int, int] | None) -> None:
    doc = load_text(POSITIONS_DOC)
    assert doc.ok, doc.diagnostics
    assert doc.positions.of_value(path) == value
    assert doc.positions.of_key(path) == (key or value)


# -- extends -----------------------------------------------------------------------------------------------


def test_extends_in_the_example_merges_capacity_settings_and_cost() -> None:
    result = load_fleet(EXAMPLE, backends=BACKENDS, now=NOW)
    assert result.ok, [d.format() for d in result.diagnostics]
    assert result.config is not None
    pool = result.config.pool("pool-k8s-batch")
    assert pool is not None
    assert (pool.tenant, pool.backend, pool.mode, pool.abstract) == ("fin-prod", "kubernetes", "hybrid", False)
    assert (pool.hosts.min, pool.hosts.max) == (1, 20)
    assert (pool.capacity.max_concurrent_sessions, pool.capacity.pool_max_disk_gb) == (8, 200)
    assert pool.settings == {"namespace": "fleet-fin", "image": "ghcr.io/acme/fleet-agent:1.4.2", "cpu": "2", "memory": "4Gi"}
    assert pool.labels == ("region=eu-west", "batch")  # lists are replaced, not merged
    assert pool.cost.per_host_hour == 0.12
    assert (pool.disconnect_grace_s, pool.idle_timeout_s) == (20.0, 600.0)
    template = result.config.pool("k8s-defaults")
    assert template is not None and template.abstract
    assert ("pool:pool-k8s-batch", "pool:k8s-defaults") in result.graph.edges


CHAIN = fleet("""\
    pools:
      - id: base
        abstract: true
        tenant: fin-prod
        backend: kubernetes
        mode: hybrid
        hosts: {min: 1, max: 4}
        capacity: {max_concurrent_sessions: 8, pool_max_disk_gb: 100}
        labels: [region=eu-west]
        settings: {namespace: fleet, image: "agent:1", cpu: "1"}
      - id: mid
        abstract: true
        extends: base
        capacity: {max_concurrent_sessions: 4}
        settings: {cpu: "2"}
      - id: leaf
        extends: mid
        hosts: {max: 9}
        labels: [gpu]
        settings: {memory: 8Gi}
""")


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("tenant", "fin-prod"),
        ("backend", "kubernetes"),
        ("abstract", False),  # abstract is never inherited
        ("hosts", {"min": 1, "max": 9}),  # merged key by key, through two levels
        ("capacity", {"max_concurrent_sessions": 4, "pool_max_disk_gb": 100.0}),
        ("settings", {"namespace": "fleet", "image": "agent:1", "cpu": "2", "memory": "8Gi"}),
        ("labels", ("gpu",)),
    ],
)
def test_extends_chain_resolution(field: str, expected: Any) -> None:
    result = load_fleet_text(CHAIN, backends=BACKENDS, now=NOW)
    assert result.ok, [d.format() for d in result.diagnostics]
    assert result.config is not None
    leaf = result.config.pool("leaf")
    assert leaf is not None
    value = getattr(leaf, field)
    assert (value.model_dump() if hasattr(value, "model_dump") else value) == expected


def test_min_greater_than_max_after_extends_points_at_the_pool_that_set_hosts() -> None:
    text = CHAIN.replace("hosts: {max: 9}", "hosts: {max: 0}")
    [err] = errors(text)
    assert err.message == "hosts.min (1) is greater than hosts.max (0)"
    # leaf's merged hosts came from leaf's own `hosts:` block (it set the field), so the error points there
    assert err.json_path == "$.pools[2].hosts.min"
    assert err.line == text.splitlines().index("    hosts: {max: 0}") + 1


# -- reference and invariant checks ------------------------------------------------------------------------

POOLS = """\
    pools:
      - {id: pa, tenant: fin-prod, backend: local, mode: persistent, hosts: {min: 1, max: 2}, capacity: {max_concurrent_sessions: 1}}
      - {id: pb, tenant: fin-prod, backend: local, mode: persistent, hosts: {min: 1, max: 2}, capacity: {max_concurrent_sessions: 1}}
      - {id: ph, tenant: health-prod, backend: local, mode: persistent, hosts: {min: 1, max: 2}, capacity: {max_concurrent_sessions: 1}}
"""


def routed(routing: str, tenant: str = "fin-prod") -> str:
    return fleet(POOLS + f"    projects:\n      - id: app\n        tenant: {tenant}\n        routing: {routing}\n")


@pytest.mark.parametrize(
    ("text", "messages"),
    [
        (routed("{mode: preferred-with-fallback, preferred_pool: pa, fallback_pool: pb}"), []),
        (routed("{mode: adaptive, preferred_pool: pa, candidates: [pb]}"), []),
        (routed("{mode: preferred-only, preferred_pool: pa}"), []),
        (routed("{mode: preferred-with-fallback, preferred_pool: pa, fallback_pool: pa}"),
         ["fallback_pool is the same as preferred_pool"]),
        (routed("{mode: adaptive, preferred_pool: pa, fallback_pool: pb}"), ["fallback_pool is ignored in mode 'adaptive'"]),
        (routed("{mode: preferred-only, preferred_pool: pa, candidates: [pb]}"),
         ["candidates are only used in mode 'adaptive', not 'preferred-only'"]),
        # adaptive samples the preferred pool and the candidates: the preferred pool is not a candidate too
        (routed("{mode: adaptive, preferred_pool: pa, candidates: [pb, pa]}"),
         ["preferred_pool 'pa' is also listed in candidates"]),
        # outside adaptive the candidates are ignored altogether: reported once, as such
        (routed("{mode: preferred-only, preferred_pool: pa, candidates: [pa]}"),
         ["candidates are only used in mode 'adaptive', not 'preferred-only'"]),
        (routed("{mode: adaptive, preferred_pool: pa, candidates: [ph]}"),
         ["project 'app' of tenant 'fin-prod' is routed to pool 'ph' of tenant 'health-prod'"]),
        (routed("{mode: adaptive, preferred_pool: pa, candidates: [pc]}"), ["unknown pool 'pc'"]),
        # an unknown tenant is reported once, where it is named, not again as a cross-tenant route
        (routed("{mode: preferred-only, preferred_pool: pa}", tenant="fin"), ["unknown tenant 'fin'"]),
        (fleet(POOLS + "    keys:\n      - {id: k, tenant: health-prod, pools: [ph, pa], secret: {generate: true}}\n"),
         ["key 'k' of tenant 'health-prod' is scoped to pool 'pa' of tenant 'fin-prod'"]),
        (fleet(POOLS + "    keys:\n      - {id: k, tenant: nobody, pools: [ph, pa], secret: {generate: true}}\n"),
         ["unknown tenant 'nobody'"]),
        (fleet(POOLS + "      - {id: c1, extends: c2}\n      - {id: c2, extends: c3}\n      - {id: c3, extends: c1}\n"),
         ["pools extend each other in a cycle: c1 -> c2 -> c3 -> c1"]),
        # a pool that extends a broken chain is not also reported as missing every field
        (fleet(POOLS + "      - {id: c1, extends: c1}\n      - {id: c2, extends: c1}\n"), ["pool 'c1' extends itself"]),
        (fleet(POOLS + "      - {id: c1, extends: nope}\n      - {id: c2, extends: c1}\n"), ["unknown pool 'nope'"]),
    ],
)
def test_reference_rules(text: str, messages: list[str]) -> None:
    assert [d.message for d in errors(text)] == messages


@pytest.mark.parametrize(
    ("expires", "expired"),
    [
        ('"2025-12-31T23:59:59Z"', True),
        ('"2026-01-01T00:00:00Z"', True),  # expires at `now`: no longer valid
        ('"2026-01-01T00:00:01Z"', False),
        ('"2026-01-01T01:00:00+02:00"', True),  # 23:00 UTC the day before
        ("2026-06-01T00:00:00Z", False),  # unquoted: YAML reads a timestamp; the loader turns it back into text
    ],
)
def test_key_expiry_against_a_fixed_now(expires: str, expired: bool) -> None:
    text = fleet(POOLS + f"    keys:\n      - id: k\n        tenant: fin-prod\n        pools: [pa]\n"
                         f"        expires: {expires}\n        secret: {{from_env: K}}\n")
    found = [d for d in errors(text) if d.code == "invariant.expired-key"]
    assert bool(found) is expired
    if expired:
        assert found[0].json_path == "$.keys[0].expires"


def test_a_timestamp_without_time_zone_is_a_schema_error_not_a_crash() -> None:
    text = fleet(POOLS + '    keys:\n      - {id: k, tenant: fin-prod, pools: [pa], expires: "2020-01-01T00:00:00", secret: {generate: true}}\n')
    [err] = errors(text)
    assert "is not an RFC 3339 date-time" in err.message


def test_warnings_are_not_errors() -> None:
    text = fleet("""\
        pools:
          - {id: od, tenant: fin-prod, backend: e2b, mode: on_demand, hosts: {min: 1}, capacity: {max_concurrent_sessions: 1}, settings: {template: t}}
        projects:
          - {id: app, tenant: fin-prod, routing: {mode: preferred-with-fallback, preferred_pool: od}}
        """)
    result = load_fleet_text(text, backends=BACKENDS, now=NOW)
    assert result.ok
    assert sorted(d.code for d in result.warnings) == ["invariant.no-fallback", "invariant.on-demand-min"]


def test_backends_are_only_checked_when_given() -> None:
    text = fleet("    pools:\n      - {id: p, tenant: fin-prod, backend: nomad, mode: persistent, capacity: {max_concurrent_sessions: 1}}\n")
    assert load_fleet_text(text, now=NOW).ok
    [err] = errors(text)
    assert err.message == "unknown backend 'nomad'"
    assert err.hint == "installed backends: docker, e2b, kubernetes, local"


@pytest.mark.parametrize(
    "data",
    [
        "version: 1\ntenants: 3\npools: {a: 1}\nprojects: [1, null, [2]]\nkeys: oops\n",
        "tenants: [{id: 1}, {id: [a]}, {}]\npools: [{id: p, extends: [x]}, {id: q, hosts: 7}, {id: r, hosts: {min: a, max: 1}}]\n",
        "projects: [{id: p, tenant: [t], routing: {mode: adaptive, preferred_pool: {a: 1}, candidates: 5}}]\n",
        "keys: [{id: k, tenant: t, pools: [1, null, {}], expires: 20}, {id: k2, expires: 'not a date'}]\n",
    ],
)
def test_reference_checks_survive_wrong_types(data: str) -> None:
    doc = load_text(data)
    checked = check_references(doc, backends=BACKENDS, now=NOW)
    assert all(d.line >= 1 for d in checked.diagnostics)
    assert not load_fleet_text(data, backends=BACKENDS, now=NOW).ok


def test_every_problem_is_reported_at_once_in_file_order() -> None:
    text = fleet("""\
        pools:
          - {id: p1, tenant: fin-prd, backend: local, mode: ondemand, capacity: {max_concurrent_sessions: 0}}
        projects:
          - {id: app, tenant: fin-prod, routing: {mode: preferred-only, preferred_pool: p2}}
        """)
    errs = errors(text)
    assert [d.code for d in errs] == ["ref.undefined-tenant", "schema.enum", "schema.minimum", "ref.undefined-pool"]
    assert [d.line for d in errs] == sorted(d.line for d in errs)


def test_reference_graph() -> None:
    result = load_fleet(EXAMPLE, backends=BACKENDS, now=NOW)
    g = result.graph
    assert g is not None
    assert g.edges["project:my-fintech-app", "pool:pool-cloud-e2b"]["rel"] == "route"
    assert g.edges["key:ci-runners", "pool:pool-k8s-batch"]["rel"] == "scope"
    assert g.edges["pool:pool-docker-gpu", "tenant:health-prod"]["rel"] == "tenant"
    assert g.nodes["tenant:fin-prod"]["kind"] == "tenant"


# -- hints and paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "choices", "hint"),
    [
        ("ondemand", ["persistent", "on_demand", "hybrid"], "did you mean 'on_demand'?"),
        ("ON-DEMAND", ["persistent", "on_demand", "hybrid"], "did you mean 'on_demand'?"),
        ("pool-loacl-main", ["pool-local-main", "pool-cloud-e2b"], "did you mean 'pool-local-main'?"),
        ("disconect_grace", ["disconnect_grace", "idle_timeout"], "did you mean 'disconnect_grace'?"),
        ("kubernetes", [], None),
        ("zzz", ["persistent", "on_demand"], None),
        (3, ["3"], None),
        (None, ["none"], None),
    ],
)
def test_did_you_mean(word: object, choices: list[str], hint: str | None) -> None:
    assert did_you_mean(word, choices) == hint


@pytest.mark.parametrize(
    ("parts", "text"),
    [
        ((), "$"),
        (("pools", 2, "mode"), "$.pools[2].mode"),
        (("pools", 0, "settings", "node_selector", "kubernetes.io/arch"), "$.pools[0].settings.node_selector['kubernetes.io/arch']"),
        (("a b",), "$['a b']"),
        (("1x",), "$['1x']"),
        (("",), "$['']"),
    ],
)
def test_json_path(parts: tuple, text: str) -> None:
    assert json_path(parts) == text


def test_diagnostic_format() -> None:
    d = Diagnostic("'ondemand' is not one of …", "fleet.yaml", 12, 11, ("pools", 2, "mode"), hint="did you mean 'on_demand'?")
    assert d.format() == "fleet.yaml:12:11: error: 'ondemand' is not one of … (at $.pools[2].mode)\n    hint: did you mean 'on_demand'?"
    assert Diagnostic("no such file", "x.yaml").format() == "x.yaml: error: no such file"
    assert d.to_json()["path"] == "$.pools[2].mode"
