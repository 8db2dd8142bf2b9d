"""The framework side of the backend seam: one BackendDriver per backend instance owns what no backend should
write itself — retries with backoff, a timeout per call, error wrapping, ownership and idempotency.

Called by the capacity controller (and by the backend contract tests, tests/unit/test_backend_driver.py, which
run it against a third-party backend found through its entry point). A backend implements the lifecycle of
fleet.plugins.base.Backend; through the driver:
- `observe(pool, org)` returns an `Observed`: the instances that carry every ownership label with this org and
  pool, and apart the look-alikes (managed by fleet, this pool's label, but not every label or another org): those
  are reported, never touched;
- `create(spec)` returns the owned instance of that name if one exists already (a create retried after a lost
  answer, or a second controller pass), else creates it;
- `destroy(instance, org, pool, grace)` refuses an instance that is not owned (PermanentError) and does nothing
  for one already gone.
Each call runs within the backend's `call_timeout_s` (over it: a TemporaryError); a TemporaryError is retried up to
ATTEMPTS times with fleet.retry's Backoff (its `delay` honoured, capped); QuotaExhausted and PermanentError leave at
once; anything else the backend raises is wrapped as a PermanentError naming the backend and the exception's type
(its text, cut at 300 characters), so that an SDK's surprise never escapes as a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from fleet.plugins.base import (
    MANAGED_BY,
    MANAGED_BY_VALUE,
    POOL,
    Backend,
    BackendError,
    Instance,
    InstanceSpec,
    PermanentError,
    TemporaryError,
)
from fleet.retry import Backoff, retrying

log = logging.getLogger(__name__)
T = TypeVar("T")

ATTEMPTS = 4
RETRY = Backoff(0.5, 10.0, floor=0.5, honour_retry_after=True)


@dataclass
class Observed:
    owned: list[Instance] = field(default_factory=list)
    lookalikes: list[Instance] = field(default_factory=list)  # ours by some labels, not all: reported, never deleted


class BackendDriver:
    def __init__(self, backend: Backend, *, attempts: int = ATTEMPTS, wait: Backoff = RETRY) -> None:
        self.backend = backend
        self.attempts = attempts
        self.wait = wait
        self._set_up = False

    @property
    def name(self) -> str:
        return self.backend.name

    async def close(self) -> None:
        if self._set_up:
            self._set_up = False
            await self._once("tear down", self.backend.teardown)

    async def observe(self, pool: str, org: str) -> Observed:
        found = await self._call(f"observe pool {pool}", lambda: self.backend.observe(pool, org))
        out = Observed()
        for inst in found:
            if inst.owned_by(org, pool):
                out.owned.append(inst)
            elif inst.labels.get(MANAGED_BY) == MANAGED_BY_VALUE and inst.labels.get(POOL) == pool:
                out.lookalikes.append(inst)
        if out.lookalikes:
            log.warning("%s: %d object(s) look like pool %s's but are not owned by org %s (left alone): %s",
                        self.name, len(out.lookalikes), pool, org, ", ".join(i.id for i in out.lookalikes[:5]))
        return out

    async def create(self, spec: InstanceSpec) -> Instance:
        """The instance `spec` names: the one already there if owned, else a new one (idempotent)."""
        for inst in (await self.observe(spec.pool, spec.org)).owned:
            if inst.name == spec.instance:
                return inst
        made = await self._call(f"create instance {spec.instance} of pool {spec.pool}",
                                lambda: self.backend.create(spec))
        if not made.owned_by(spec.org, spec.pool) or made.name != spec.instance:
            raise PermanentError(f"the {self.name} backend made {made.id} without fleet's ownership labels for "
                                 f"{spec.instance}: a bug in the backend")
        return made

    async def destroy(self, instance: Instance, org: str, pool: str, grace: float = 30.0) -> None:
        if not instance.owned_by(org, pool):
            raise PermanentError(f"{self.name}: {instance.id} is not owned by pool {pool} of org {org}: not deleted")
        await self._call(f"destroy {instance.id}", lambda: self.backend.destroy(instance, grace))

    # ------------------------------------------------------------------------------------------ the framework
    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        if not self._set_up:
            await self._once("set up", self.backend.setup)
            self._set_up = True

        def retry_log(attempt: int, exc: BaseException, delay: float) -> None:
            log.warning("%s: %s failed (%s); retrying in %.1fs", self.name, what, exc, delay)

        async for attempt in retrying(retry_on=TemporaryError, attempts=self.attempts, wait=self.wait,
                                      on_retry=retry_log):
            with attempt:
                return await self._once(what, fn)
        raise AssertionError("unreachable")  # retrying raises the last error

    async def _once(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        timeout = self.backend.call_timeout_s
        try:
            return await asyncio.wait_for(fn(), timeout)
        except BackendError:
            raise
        except TimeoutError:
            raise TemporaryError(f"{self.name}: {what} took longer than {timeout:g}s") from None
        except NotImplementedError as exc:
            raise PermanentError(str(exc) or f"the {self.name} backend cannot {what}") from None
        except Exception as exc:  # an SDK's surprise, or a bug in the backend: never a traceback to the user
            raise PermanentError(f"{self.name}: {what} failed: {type(exc).__name__}: {str(exc)[:300]}") from exc
