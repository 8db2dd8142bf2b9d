"""Errors keep their meaning across the wire (fleet.errors): one table from code to class, retry flags kept, exit
codes distinct for the outcomes a CD pipeline must tell apart. And the client retries what is retryable."""

from __future__ import annotations

import asyncio

import pytest

from fleet import errors
from fleet.errors import (
    EXIT_CODES,
    WIRE_ERRORS,
    FleetError,
    LockHeld,
    NotConverged,
    ServerUnavailable,
    StalePlan,
    TransientError,
    UsageError,
    from_wire,
)


@pytest.mark.parametrize("code", sorted(WIRE_ERRORS))
def test_every_code_comes_back_as_its_class_with_its_retry_meaning(code):
    cls = WIRE_ERRORS[code]
    sent = cls("it failed", hint="do this")
    wire = sent.to_wire()
    got = from_wire(wire["error"], wire["message"], wire["hint"], wire["retryable"])
    assert type(got) is cls and got.code == code
    assert (got.message, got.hint, got.retryable, got.exit_code) == ("it failed", "do this", cls.retryable, cls.exit_code)


def test_every_fleet_error_class_has_its_own_code():
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, FleetError)]
    assert sorted(c.code for c in classes) == sorted(WIRE_ERRORS)


@pytest.mark.parametrize("retryable, cls", [(True, TransientError), (False, FleetError), (None, FleetError)])
def test_a_code_from_a_newer_server_keeps_its_message_and_retry_meaning(retryable, cls):
    got = from_wire("quota_exceeded", "tenant over quota", None, retryable)
    assert type(got) is cls and got.code == "quota_exceeded" and got.message == "tenant over quota"
    assert got.retryable is bool(retryable)


def test_outcomes_a_pipeline_must_tell_apart_have_distinct_exit_codes():
    outcomes = [StalePlan, LockHeld, NotConverged, UsageError, TransientError, FleetError]
    codes = [c.exit_code for c in outcomes]
    assert len(set(codes)) == len(codes)
    assert set(codes) <= set(EXIT_CODES)
    assert 2 not in codes  # 2 is `fleet plan --detailed-exitcode`: "changes", never an error


class _FlakyBus:
    """Our own seam (fleet.bus.connection.Bus.request): answers `fails` transient errors, then the data."""

    url = "nats://test"

    def __init__(self, replies: list[bytes]) -> None:
        self.replies = replies
        self.calls = 0

    async def request(self, subject, payload, *, timeout, what=""):
        self.calls += 1
        return self.replies.pop(0)


def _reply(error=None, **kw) -> bytes:
    from fleet.bus.messages import ApiReply

    if error is None:
        return ApiReply(ok=True, data={"fine": True}).encode()
    return ApiReply(ok=False, **error.to_wire(), **kw).encode()


def test_the_client_retries_transient_errors_and_not_the_others():
    from fleet.errors import NotFound
    from fleet.hosts.client import call

    flaky = _FlakyBus([_reply(ServerUnavailable("busy")), _reply(ServerUnavailable("busy")), _reply()])
    assert asyncio.run(call(flaky, "fleet.v1.api.ping")) == {"fine": True}  # type: ignore[arg-type]
    assert flaky.calls == 3
    final = _FlakyBus([_reply(NotFound("no host"))] * 3)
    with pytest.raises(NotFound):
        asyncio.run(call(final, "fleet.v1.api.hosts.get"))  # type: ignore[arg-type]
    assert final.calls == 1
    stuck = _FlakyBus([_reply(ServerUnavailable("busy"))] * 3)
    with pytest.raises(ServerUnavailable):
        asyncio.run(call(stuck, "fleet.v1.api.ping"))  # type: ignore[arg-type]
    assert stuck.calls == 3
