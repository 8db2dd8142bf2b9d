"""fleet.schema.vocabulary is fleet.schema.json's words in Python, and every module uses it rather than its own copy.

Which bug each test catches: the schema gains a pool mode (or a status, a routing mode, an isolation) and the Python
side still refuses it, or accepts one the schema dropped; a name pattern or length limit changes in the schema and
the CLI, the wire or the models keep the old one (labels were once limited to 192 characters in one module and 200
in another); a module defines its own copy of a set again.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import get_args

import pytest

import fleet
from fleet.bus import messages, subjects
from fleet.cli import options
from fleet.hosts import model as host_model
from fleet.routing import rules
from fleet.scheduler import core as sched_core
from fleet.schema import models as schema_models
from fleet.schema import vocabulary as v

SCHEMA = Path(fleet.__file__).parent / "schema" / "fleet.schema.json"
DEFS = json.loads(SCHEMA.read_text(encoding="utf-8"))["$defs"]


@pytest.mark.parametrize(("values", "where"), [
    (v.POOL_MODES, DEFS["pool"]["properties"]["mode"]),
    (v.ROUTING_MODES, DEFS["routing"]["properties"]["mode"]),
    (v.ISOLATION_MODES, DEFS["pool"]["properties"]["isolation"]),
    (v.ADMIN_STATUSES, DEFS["host"]["properties"]["status"]),
])
def test_enums_are_the_schemas(values, where) -> None:
    assert tuple(where["enum"]) == values


@pytest.mark.parametrize(("pattern", "key"), [(v.ID_PATTERN, "id"), (v.LABEL_PATTERN, "label"),
                                              (v.MODEL_PATTERN, "model")])
def test_patterns_are_the_schemas(pattern, key) -> None:
    assert DEFS[key]["pattern"] == pattern + v.SCHEMA_PATTERN_END


def test_machine_ids_the_server_assigns_are_the_schemas_and_the_wire_takes_them() -> None:
    assert DEFS["host"]["properties"]["id"]["pattern"] == v.MACHINE_ID_V4_PATTERN + v.SCHEMA_PATTERN_END
    for _ in range(200):
        mid = str(uuid.uuid4())  # what fleet.hosts.enrollment assigns
        assert re.match(v.MACHINE_ID_V4_PATTERN, mid) and subjects.is_machine_id(mid)
    assert not subjects.is_machine_id("AA11BB22-CC33-DD44-EE55-FF6677889900")
    assert _pattern(messages.MachineId) == v.MACHINE_ID_PATTERN


@pytest.mark.parametrize(("pattern", "longest", "limit"), [
    (v.ID_PATTERN, "a" * v.ID_MAX, v.ID_MAX),
    (v.LABEL_PATTERN, "n" * v.LABEL_NAME_MAX + "=" + "v" * v.LABEL_VALUE_MAX, v.LABEL_MAX),
    (v.MODEL_PATTERN, "m" * v.MODEL_MAX, v.MODEL_MAX),
])
def test_length_limits_are_what_the_patterns_allow(pattern, longest, limit) -> None:
    """The limit is the longest name the pattern accepts: the longest accepted, one more character refused."""
    assert len(longest) == limit and re.match(pattern, longest)
    assert not re.match(pattern, longest + "x")
    if "=" in longest:  # the label's name and its value are each at their own limit
        name, value = longest.split("=")
        assert not re.match(pattern, name + "n=" + value) and not re.match(pattern, name + "=" + value + "v")


def test_the_host_statuses_are_the_admin_ones_plus_offline_and_revoked() -> None:
    assert v.HOST_STATUSES[:len(v.ADMIN_STATUSES)] == v.ADMIN_STATUSES == v.LIVE_STATUSES
    assert set(v.HOST_STATUSES) == set(v.LIVE_STATUSES) | set(v.GONE_STATUSES) == {*v.ADMIN_STATUSES, "offline",
                                                                                    "revoked"}
    assert set(v.ELASTIC_MODES) < set(v.POOL_MODES) and v.ACTIVE in v.ADMIN_STATUSES


def test_every_module_uses_the_one_definition() -> None:
    """Not equal copies: the same objects, so that a copy cannot come back unnoticed."""
    assert messages.PoolMode is schema_models.PoolMode is v.PoolMode
    assert messages.HostStatus is v.HostStatus and messages.AdminStatus is v.AdminStatus
    assert host_model.STATUSES is v.HOST_STATUSES and host_model.LIVE_STATUSES is v.LIVE_STATUSES
    assert sched_core.LIVE_STATUSES is v.LIVE_STATUSES and rules.ELASTIC_MODES is v.ELASTIC_MODES
    assert options.ID_PATTERN is v.ID_PATTERN and options.LABEL_PATTERN is v.LABEL_PATTERN
    assert options.MODEL_PATTERN is v.MODEL_PATTERN
    assert get_args(schema_models.HostState.model_fields["status"].annotation) == v.ADMIN_STATUSES


@pytest.mark.parametrize(("name", "limit"), [("ID", v.ID_MAX), ("LABEL", v.LABEL_MAX), ("MODEL", v.MODEL_MAX)])
def test_cli_names_have_the_schemas_limits(name, limit) -> None:
    assert getattr(options, name).max_length == limit


def _pattern(annotated) -> str:
    return next(m.pattern for m in annotated.__metadata__ if getattr(m, "pattern", None) is not None)


def _max_length(annotated) -> int:
    return next(m.max_length for m in annotated.__metadata__ if getattr(m, "max_length", None) is not None)


def test_wire_names_have_the_schemas_limits() -> None:
    """A label or model the schema cannot hold is refused where it enters (a submit, an enrollment), not stored."""
    assert _max_length(messages.Ident) == v.ID_MAX
    assert _max_length(messages.Label) == v.LABEL_MAX
    assert _max_length(messages.Model) == v.MODEL_MAX
    ok = messages.SubmitRequest(project="p", command=["true"], labels=["n" * 63 + "=" + "v" * 128])
    assert len(ok.labels[0]) == v.LABEL_MAX
    with pytest.raises(ValueError, match="labels"):
        messages.SubmitRequest(project="p", command=["true"], labels=["x" * (v.LABEL_MAX + 1)])
    with pytest.raises(ValueError, match="model"):
        messages.SubmitRequest(project="p", command=["true"], model="m" * (v.MODEL_MAX + 1))


def test_the_host_envelope_is_one_model() -> None:
    """What an agent asks for, what enrollment grants and what is stored share one definition of pools, labels,
    models and slots (and so one set of bounds): a bound changed in one of them cannot drift from the others."""
    from fleet.hosts.enrollment import Decision

    for cls in (messages.EnrollRequest, messages.HostRecord, Decision):
        assert issubclass(cls, messages.Envelope)
        for name in messages.Envelope.model_fields:
            assert repr(cls.model_fields[name]) == repr(messages.Envelope.model_fields[name]), (cls, name)
    with pytest.raises(ValueError, match="models"):
        messages.EnrollRequest(key="k", hostname="h", version="1", models=["m" * (v.MODEL_MAX + 1)])
