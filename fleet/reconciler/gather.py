"""Gathering live state (the edge): the applied config from the store, plus hosts observed by the caller.

`gather(store, hosts)` reads one consistent snapshot of the applied config and builds the LiveState the pure
diff works on. Hosts come from the control plane's host API, which the CLI queries (fleet.service is a layer
above the reconciler) and passes in. `key_hashes(cfg, env)` turns each enrollment key's secret source into the
SHA-256 the diff compares (a missing environment variable is a warning at plan time: the secret becomes
"known after apply"; apply then requires it). Called by `fleet plan` and `fleet apply`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fleet.bus.applied import ConfigStore, Snapshot
from fleet.reconciler.live import AppliedResource, LiveState, ObservedHost, ObservedInstance, QueuedSession
from fleet.schema.models import FleetConfig


@dataclass
class Gathered:
    live: LiveState
    snapshot: Snapshot


def secret_sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key_hashes(cfg: FleetConfig, env: Mapping[str, str]) -> tuple[dict[str, str | None], list[str]]:
    """SHA-256 of each from_env key's secret (None for generated keys or unset variables), and warnings."""
    out: dict[str, str | None] = {}
    warnings = []
    for key in cfg.keys:
        var = key.secret.from_env
        if var is None:
            out[key.id] = None
        elif env.get(var):
            out[key.id] = secret_sha256(env[var])
        else:
            out[key.id] = None
            warnings.append(f"key {key.id}: environment variable {var} is not set; its secret is known after apply "
                            "(apply will need it)")
    return out, warnings


def applied_from(snapshot: Snapshot) -> dict[str, AppliedResource]:
    return {key: AppliedResource(kind=r.kind, id=r.id, spec=r.spec, revision=r.revision)
            for key, r in snapshot.records.items()}


async def gather(store: ConfigStore, hosts: Iterable[ObservedHost] = (), *, hosts_observed: bool = True,
                 instances: Iterable[ObservedInstance] = (), queued: Iterable[QueuedSession] = ()) -> Gathered:
    snapshot = await store.snapshot()
    live = LiveState(applied=applied_from(snapshot), revision=snapshot.revision, hosts=tuple(hosts),
                     hosts_observed=hosts_observed, instances=tuple(instances), queued=tuple(queued))
    return Gathered(live, snapshot)
