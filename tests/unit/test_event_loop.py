"""fleet.cli.shared.run_service: the long-lived processes (`fleet server`, `fleet agent run`) run on uvloop, a
dependency, unless FLEET_EVENT_LOOP=asyncio; anything else is a usage error before a loop starts."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from fleet.cli.shared import run_service
from fleet.errors import UsageError


async def _loop_type() -> type:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop())


def test_services_run_on_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEET_EVENT_LOOP", raising=False)
    assert run_service(_loop_type) is uvloop.Loop


def test_fleet_event_loop_asyncio_chooses_asyncios_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_EVENT_LOOP", "asyncio")
    loop_type = run_service(_loop_type)
    assert loop_type is not uvloop.Loop and issubclass(loop_type, asyncio.BaseEventLoop)


def test_an_unknown_event_loop_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_EVENT_LOOP", "trio\x1b[31m" * 10)
    with pytest.raises(UsageError, match="must be uvloop or asyncio"):
        run_service(_loop_type)
