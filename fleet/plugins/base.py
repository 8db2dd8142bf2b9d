"""The Backend base class: the seam every capacity backend (local, docker, kubernetes, e2b, third-party) plugs into.

A backend declares `name` and a pydantic `settings_model`; its JSON Schema fragment (`settings_schema()`) is
composed into `fleet schema`, and `validate_settings()` checks a pool's `settings:` block, returning plain
(path, message) problems that fleet.schema.api turns into positioned diagnostics. Subclassed by fleet.plugins.* and
found through the `fleet.backends` entry-point group by fleet.plugins.registry.

Lifecycle (what a backend implements; fleet.plugins.driver.BackendDriver calls it and owns retries, timeouts,
error wrapping and ownership, as Prefect's BaseWorker owns them for its workers):
- `observe(pool, org)`: the instances the backend finds for that pool, by the ownership labels (`OWNERSHIP`) only:
  it may return look-alikes (a label query that the API does not honour), the driver sorts them out;
- `create(spec)`: start one instance of `spec` (an `InstanceSpec`: its name, its labels, the pool's settings and the
  instance's one-use enrollment credential, which the backend hands over as a file, never in an environment
  variable, a label, a command line or a log); the driver makes it idempotent (an owned instance of that name
  already there is returned, not made again);
- `destroy(instance, grace)`: stop it, its processes given `grace` seconds; an instance already gone is done;
- optional `setup()` / `teardown()` of the backend's SDK client.
A backend says what went wrong by the type of what it raises: `TemporaryError` (retried, after its `delay` when it
says one), `QuotaExhausted` (not retried: the pool is capped at what exists; with the `quota` when the backend
says it), `PermanentError` (not retried). Anything else it raises is a bug or an SDK surprise: the driver wraps it
as a PermanentError that names the backend and the exception's type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from fleet.errors import FleetError

#: the labels (Docker, Kubernetes) or metadata (e2b) every object fleet creates carries; observation and removal
#: touch only objects with all of them, and the right values
MANAGED_BY, MANAGED_BY_VALUE = "app.kubernetes.io/managed-by", "fleet"
ORG, POOL, INSTANCE, CONFIG_HASH = "fleet.dev/org", "fleet.dev/pool", "fleet.dev/instance", "fleet.dev/config-hash"
OWNERSHIP = (MANAGED_BY, ORG, POOL, INSTANCE, CONFIG_HASH)

InstanceState = Literal["starting", "running", "stopping", "stopped", "unknown"]


class BackendError(FleetError):
    """A backend's operation failed (the message names the backend and what it was doing)."""


class TemporaryError(BackendError):
    """Worth trying again (a timeout, a 5xx, a conflict), after `delay` seconds when the backend says so."""

    retryable = True

    def __init__(self, message: str, *, delay: float | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = delay


class PermanentError(BackendError):
    """Trying again will not help (bad settings, an image that does not exist, refused credentials)."""


class QuotaExhausted(BackendError):
    """The backend's account may not have more (e2b's HTTP 429 at its concurrent-sandbox cap): the pool is capped at
    what exists; `quota` is the cap when the backend says it."""

    def __init__(self, message: str, *, quota: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.quota = quota


@dataclass(frozen=True)
class InstanceSpec:
    """One instance to create: its name, where it belongs, the pool's settings and its enrollment credential."""

    org: str
    pool: str
    instance: str  # unique in the pool, chosen by the controller (the idempotency key)
    config_hash: str  # of the pool's settings: an instance of an older hash is replaced
    settings: BackendSettings
    enrollment: str = field(repr=False, default="")  # one-use, short-lived; handed to the instance as a file only

    def labels(self) -> dict[str, str]:
        return {MANAGED_BY: MANAGED_BY_VALUE, ORG: self.org, POOL: self.pool, INSTANCE: self.instance,
                CONFIG_HASH: self.config_hash}


@dataclass(frozen=True)
class Instance:
    """An object a backend found or made: its own ID (container, pod, sandbox), its labels, its state."""

    id: str
    labels: Mapping[str, str]
    state: InstanceState = "unknown"
    created_at: float | None = None

    @property
    def name(self) -> str | None:
        return self.labels.get(INSTANCE)

    def owned_by(self, org: str, pool: str) -> bool:
        """Whether it carries every ownership label, with this org and pool."""
        lb = self.labels
        return (lb.get(MANAGED_BY) == MANAGED_BY_VALUE and lb.get(ORG) == org and lb.get(POOL) == pool
                and bool(lb.get(INSTANCE)) and bool(lb.get(CONFIG_HASH)))


class BackendSettings(BaseModel):
    """Base of every backend's settings model: unknown keys are errors (typos must be caught)."""

    model_config = ConfigDict(extra="forbid")


class Backend:
    """A capacity backend. Subclasses set `name`, `description` and `settings_model`, and implement the lifecycle
    (see the module doc); `settings_schema` and `validate_settings` work without an instance."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    settings_model: ClassVar[type[BackendSettings]] = BackendSettings
    #: seconds one call (observe, create, destroy) may take before the driver gives up on it (a TemporaryError)
    call_timeout_s: ClassVar[float] = 60.0

    async def setup(self) -> None:
        """Make the SDK client (called once by the driver before the first call)."""

    async def teardown(self) -> None:
        """Close the SDK client."""

    async def observe(self, pool: str, org: str) -> list[Instance]:
        raise NotImplementedError(f"the {self.name} backend cannot observe instances")

    async def create(self, spec: InstanceSpec) -> Instance:
        raise NotImplementedError(f"the {self.name} backend cannot create instances")

    async def destroy(self, instance: Instance, grace: float) -> None:
        raise NotImplementedError(f"the {self.name} backend cannot destroy instances")

    @classmethod
    def settings_schema(cls) -> dict[str, Any]:
        """The JSON Schema fragment of this backend's `settings:` block."""
        schema = cls.settings_model.model_json_schema()
        schema.setdefault("description", f"Settings of the {cls.name} backend.")
        return schema

    @classmethod
    def validate_settings(cls, settings: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
        """Problems with a pool's settings, as (path inside settings, message); empty when valid."""
        try:
            cls.settings_model.model_validate(settings)
        except ValidationError as exc:
            out = []
            for err in exc.errors():
                loc = tuple(err["loc"])
                if err["type"] == "extra_forbidden":
                    msg = f"unknown {cls.name} setting {loc[-1]!r}"
                elif err["type"] == "missing":
                    msg = f"missing required {cls.name} setting {loc[-1]!r}"
                else:
                    msg = f"{cls.name} setting {'.'.join(map(str, loc))}: {err['msg']}"
                out.append((loc, msg))
            return out
        return []
