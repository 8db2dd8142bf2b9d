"""The applied config as `fleet server` needs it: enrollment keys, pools and host declarations, kept current.

`AppliedConfig.apply(key, entry)` is fed by a fleet.bus.kv.Informer on bucket fleet-v1-config (every replica
follows every apply within milliseconds; no polling). A record that does not decode is skipped and counted, never
fatal. Readers get plain data: `keys` (KeySpec by ID, and by secret digest), `pools` (each record read back into
the one pool model, fleet.schema.models.Pool, which the host model, enrollment and the dispatcher read), `declared`
(the status fleet.yaml declares per machine ID), `routes` (each project's routing spec, as stored, which the
dispatcher reads into fleet.routing.Route). `version` moves on every change, so derived caches (per-pool-set
envelopes, grace periods) know when to rebuild. Used by the registry, the
enrollment authority and the declared-status controller.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from fleet.bus.kv import Entry
from fleet.bus.records import KeySpec, decode_record
from fleet.errors import FleetError
from fleet.hosts.model import LIVE_STATUSES
from fleet.schema.models import Pool

log = logging.getLogger(__name__)


class AppliedConfig:
    def __init__(self) -> None:
        self.keys: dict[str, KeySpec] = {}
        self.keys_by_digest: dict[str, str] = {}
        self.pools: dict[str, Pool] = {}
        self.declared: dict[str, str] = {}
        self.routes: dict[str, Any] = {}  # project -> its routing spec (route.<project>: a JSON object, read by Route.of)
        self.version = 0
        self.metrics: Counter[str] = Counter()
        self.listeners: list[Callable[[str], None]] = []

    def apply(self, key: str, entry: Entry | None) -> None:
        """One record changed (None: deleted). Called by the informer, in stream order."""
        kind, _, ident = key.partition(".")
        if kind not in ("key", "pool", "host", "route"):
            return
        self._forget(kind, ident)
        if entry is not None:
            try:
                rec = decode_record(entry.value)
                if rec.kind != kind or rec.id != ident:
                    raise FleetError(f"record {rec.kind}.{rec.id} stored under {key}")
                if kind == "key":
                    spec = KeySpec.model_validate(rec.spec)
                    self.keys[ident] = spec
                    self.keys_by_digest[spec.secret_digest] = ident
                elif kind == "pool":
                    self.pools[ident] = Pool.from_spec(ident, rec.spec)
                elif kind == "route":
                    if not isinstance(rec.spec.get("tenant"), str) or not isinstance(rec.spec.get("preferred_pool"), str):
                        raise FleetError(f"route {ident} has no tenant or preferred pool")
                    self.routes[ident] = rec.spec
                else:
                    status = rec.spec.get("status")
                    if status in LIVE_STATUSES:
                        self.declared[ident] = status
            except (FleetError, ValueError) as exc:
                self.metrics["config_record_skipped"] += 1
                log.warning("skipping applied record %s: %s", key, exc)
        self.version += 1
        for listener in self.listeners:
            listener(key)

    def _forget(self, kind: str, ident: str) -> None:
        if kind == "key":
            old = self.keys.pop(ident, None)
            if old is not None and self.keys_by_digest.get(old.secret_digest) == ident:
                del self.keys_by_digest[old.secret_digest]
        elif kind == "pool":
            self.pools.pop(ident, None)
        elif kind == "route":
            self.routes.pop(ident, None)
        else:
            self.declared.pop(ident, None)

    def key_for_digest(self, digest: str) -> tuple[str, KeySpec] | None:
        ident = self.keys_by_digest.get(digest)
        return (ident, self.keys[ident]) if ident is not None else None
