"""Live-state models: what the control plane has applied and what hosts and backends report now.

Plain pydantic data, no I/O: fleet.reconciler.gather fills them from NATS; the pure diff, drift and
consequence functions read them; tests build them by hand. Applied resources keep the KV revision they were
read at, so apply can compare-and-set against exactly what the plan saw. An observed host is
fleet.hosts.model.Host, the one host model (as the registry resolves it), named ObservedHost here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fleet.hosts.model import Host as ObservedHost
from fleet.hosts.model import Session as ObservedSession

__all__ = ["ACTIVE", "AppliedResource", "LiveState", "ObservedHost", "ObservedInstance", "ObservedSession",
           "QueuedSession"]

ACTIVE = "active"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class AppliedResource(_Model):
    """One record of the applied config: `kind.id` -> spec, at a KV revision."""

    kind: str
    id: str
    spec: dict[str, Any]
    revision: int = 0

    @property
    def address(self) -> str:
        return f"{self.kind}.{self.id}"


class ObservedInstance(_Model):
    """A backend object (process, container, pod, sandbox) carrying fleet ownership labels."""

    backend: str
    pool: str
    instance_id: str
    state: str = "running"


class QueuedSession(_Model):
    """A session waiting in the pending queue."""

    session_id: str
    project: str
    tenant: str
    required_labels: tuple[str, ...] = ()
    model: str | None = None
    submitted_at: float = 0.0
    reason: str | None = None  # why it waits, as the dispatcher says


class LiveState(_Model):
    """Everything the reconciler reads from the live fleet."""

    applied: dict[str, AppliedResource] = Field(default_factory=dict)
    revision: int = 0
    hosts: tuple[ObservedHost, ...] = ()
    instances: tuple[ObservedInstance, ...] = ()
    instances_observed: bool = False
    queued: tuple[QueuedSession, ...] = ()
    hosts_observed: bool = True

    def applied_of(self, kind: str) -> dict[str, AppliedResource]:
        return {r.id: r for r in self.applied.values() if r.kind == kind}
