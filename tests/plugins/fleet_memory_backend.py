"""A tiny third-party capacity backend, as a plugin author would write one: instances in a dict (nothing to run).

Not part of fleet: tests install it through a `fleet.backends` entry point (a dist-info on PYTHONPATH, see
tests/unit/test_backend_driver.py) to prove the seam, and drive the driver's contract against it. Its `faults` make
it fail the ways real backends do: a temporary error (a 503) N times, a quota (HTTP 429), an SDK's own exception, a
call that hangs.
"""

from __future__ import annotations

import asyncio
import itertools
import time

from pydantic import Field

from fleet.plugins.base import (
    Backend,
    BackendSettings,
    Instance,
    InstanceSpec,
    QuotaExhausted,
    TemporaryError,
)


class MemorySettings(BackendSettings):
    capacity: int = Field(100, ge=0, description="How many instances the account may have at once.")


class MemoryBackend(Backend):
    name = "memory"
    description = "instances in memory (a test plugin)"
    settings_model = MemorySettings
    call_timeout_s = 0.5

    def __init__(self, settings: MemorySettings | None = None) -> None:
        self.settings = settings or MemorySettings()
        self.objects: dict[str, Instance] = {}  # what the "cloud" holds, owned or not
        self.faults: list[str] = []  # consumed one per call: "temporary", "quota", "sdk", "hang"
        self.calls: list[str] = []
        self.handed: dict[str, str] = {}  # instance ID -> the enrollment credential it was given (as a file would be)
        self._ids = itertools.count(1)
        self.set_up = self.torn_down = 0

    async def setup(self) -> None:
        self.set_up += 1

    async def teardown(self) -> None:
        self.torn_down += 1

    async def _fault(self, call: str) -> None:
        self.calls.append(call)
        fault = self.faults.pop(0) if self.faults else None
        if fault == "temporary":
            raise TemporaryError("memory: 503 from the API", delay=0.01)
        if fault == "quota":
            raise QuotaExhausted("memory: 429 too many instances", quota=self.settings.capacity)
        if fault == "sdk":
            raise KeyError("the SDK's own exception")
        if fault == "hang":
            await asyncio.sleep(3600)

    async def observe(self, pool: str, org: str) -> list[Instance]:
        await self._fault("observe")
        # like kmock, a label query the API does not honour: everything that says "fleet", the driver filters
        return [i for i in self.objects.values() if i.labels.get("app.kubernetes.io/managed-by") == "fleet"]

    async def create(self, spec: InstanceSpec) -> Instance:
        await self._fault("create")
        if len(self.objects) >= self.settings.capacity:
            raise QuotaExhausted("memory: 429 too many instances", quota=self.settings.capacity)
        inst = Instance(id=f"mem-{next(self._ids)}", labels=spec.labels(), state="starting", created_at=time.time())
        self.objects[inst.id] = inst
        self.handed[inst.id] = spec.enrollment
        return inst

    async def destroy(self, instance: Instance, grace: float) -> None:
        await self._fault("destroy")
        self.objects.pop(instance.id, None)  # already gone: done


class NotABackend:
    """What a broken plugin points its entry point at."""
