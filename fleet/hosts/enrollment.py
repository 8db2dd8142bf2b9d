"""Enrollment: may this host join with this key, and with what tenant, pools, labels and envelope; and the authority
that makes it so (key use counting, pool membership up to `hosts.max`, the host record), plus re-registration.

`check_enrollment` is the pure rule set (tested table-driven in tests/unit/test_enrollment_rules.py). `Enroller`
is called by the `fleet.v1.enroll` and `fleet.v1.register` handlers of `fleet server`:

- enroll: the key is found by the hash of the presented secret in the applied config (no store read), the rules
  run, then three compare-and-set steps: a use of the key (`uses.<key>` in fleet-v1-enroll, never past
  `max_uses`), a place in each pool that caps its hosts (`members.<pool>`, never past `hosts.max`), and the host
  record (create). A step that fails gives back what the earlier ones took, so a refused or failed enrollment
  burns no key use and no pool place. A member whose record never appeared (its enrollment crashed midway)
  stops counting after MEMBER_GRACE_S.
- register: a known host rejoining proves itself with its credential; its hostname, version and credential socket
  are updated in its record when they changed. No store read unless something changed.

The host's tenant is always its key's, whatever the request claims; what it may serve is bounded by the key and
the applied pools (a requested envelope larger than a pool's is refused, not trimmed).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from fleet.bus.kv import Entry, Store
from fleet.bus.messages import EnrollRequest, Envelope, HostRecord, JoinReply, PoolMembership, RegisterRequest
from fleet.bus.records import KeySpec, format_time, key_digest, now_utc
from fleet.bus.subjects import is_machine_id
from fleet.bus.trustdir import TrustDir
from fleet.errors import FleetError, Refused
from fleet.hosts.model import Host
from fleet.hosts.registry import Registry
from fleet.hosts.revocation import Revocations
from fleet.schema.models import Pool

log = logging.getLogger(__name__)

MEMBER_GRACE_S = 120.0  # a pool place whose host record has not appeared after this long no longer counts


class Decision(Envelope):
    """What enrollment decided: refused (ok False, a reason code and words), or the tenant and the Envelope (plus
    its disk envelope) the host gets, which its HostRecord stores as it is."""

    ok: bool
    reason: str | None = None
    message: str | None = None
    tenant: str | None = None
    max_disk_gb: float | None = None


def refuse(reason: str, message: str) -> Decision:
    return Decision(ok=False, reason=reason, message=message)


def _union(*lists: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(item for items in lists for item in items))


def check_enrollment(
    key_id: str, key: KeySpec, pools: dict[str, Pool], request: EnrollRequest, now: datetime
) -> Decision:
    """Apply the rules; the host's tenant is always the key's, whatever the request claims."""
    expires = key.expires_at()
    if expires is not None and now >= expires:
        return refuse("expired", f"enrollment key {key_id} expired at {key.expires}")
    wanted_pools = _union(request.pools) or list(key.pools)
    if not wanted_pools:
        return refuse("pool_out_of_scope", f"enrollment key {key_id} grants no pools")
    outside = [p for p in wanted_pools if p not in key.pools]
    if outside:
        return refuse(
            "pool_out_of_scope",
            f"pool {', '.join(outside)} is outside the scope of enrollment key {key_id} "
            f"(allowed: {', '.join(key.pools) or 'none'})",
        )
    for pool_id in wanted_pools:
        pool = pools.get(pool_id)
        if pool is not None and pool.tenant != key.tenant:
            return refuse(
                "tenant_mismatch",
                f"pool {pool_id} belongs to tenant {pool.tenant}, enrollment key {key_id} to tenant {key.tenant}",
            )
    if key.models is not None:
        bad_models = [m for m in request.models if m not in key.models]
        if bad_models:
            return refuse(
                "model_out_of_scope",
                f"model {', '.join(bad_models)} is outside the scope of enrollment key {key_id} "
                f"(allowed: {', '.join(key.models) or 'none'})",
            )
    allowed_labels = _union(key.labels, *[pools[p].labels for p in wanted_pools if p in pools])
    bad_labels = [label for label in request.labels if label not in allowed_labels]
    if bad_labels:
        return refuse(
            "label_out_of_scope",
            f"label {', '.join(bad_labels)} is outside the scope of enrollment key {key_id} "
            f"(allowed: {', '.join(allowed_labels) or 'none'})",
        )
    applied = [(p, pools[p]) for p in wanted_pools if p in pools]
    if request.max_sessions is not None:
        for pool_id, pool in applied:
            cap = pool.capacity.max_concurrent_sessions
            if cap and request.max_sessions > cap:
                return refuse("capacity_out_of_scope",
                              f"--max-sessions {request.max_sessions} exceeds the envelope of pool {pool_id} "
                              f"(max_concurrent_sessions {cap})")
    if request.pool_max_disk_gb is not None:
        for pool_id, pool in applied:
            cap_gb = pool.capacity.pool_max_disk_gb
            if cap_gb is not None and request.pool_max_disk_gb > cap_gb:
                return refuse("capacity_out_of_scope",
                              f"--pool-max-disk-gb {request.pool_max_disk_gb:g} exceeds the envelope of pool {pool_id} "
                              f"(pool_max_disk_gb {cap_gb:g})")
    models = request.models or list(key.models or [])
    return Decision(
        ok=True,
        tenant=key.tenant,
        pools=wanted_pools,
        labels=_union(key.labels, request.labels),
        models=models,
        max_sessions=request.max_sessions,
        max_disk_gb=request.pool_max_disk_gb,
    )


def pool_full(members: dict[str, float], registry: Registry, limit: int, now: float) -> bool:
    """Does a pool with these members (machine ID -> when its place was taken) have `limit` hosts already?

    A member counts while its host is registered and not revoked, or, before its record appears, for
    MEMBER_GRACE_S (an enrollment in flight on another replica)."""
    count = 0
    for mid, added in members.items():
        entry = registry.entries.get(mid)
        if entry is None:
            count += now - added < MEMBER_GRACE_S
        else:
            count += not entry.record.revoked
    return count >= limit


class FailureBudget:
    """A token bucket for enrollments with an unknown key: `rate` per second, bursts of `burst`. When it is empty,
    requests with an unknown key are refused as `rate_limited` instead of `unknown_key`, so guessing keys costs the
    guesser time. NATS does not say who sent a request, so the budget is shared by all senders; that is why only
    unknown keys draw from it (the keyed digest of the presented secret is looked up first, a dictionary lookup): a
    flood of wrong keys slows down the guesser, never an agent that presents a valid key."""

    def __init__(self, rate: float = 10.0, burst: float = 50.0) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = burst, time.monotonic()

    def allows(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        return self.tokens >= 1.0

    def spend(self) -> None:
        self.tokens = max(0.0, self.tokens - 1.0)


class Enroller:
    def __init__(self, registry: Registry, hosts: Store, counters: Store, heartbeat_interval: float, *,
                 pepper: bytes | None = None, trust: TrustDir | None = None,
                 failures: FailureBudget | None = None, revocations: Revocations | None = None) -> None:
        self.registry = registry
        self.hosts = hosts
        self.counters = counters
        self.heartbeat_interval = heartbeat_interval
        self.pepper = pepper
        self.trust = trust
        self.failures = failures or FailureBudget()
        self.revocations = revocations
        #: the fleet's own identities (server, admin, viewer, enroll, …): never a host's
        self.own_keys = trust.identity_keys() if trust is not None else frozenset()
        self.metrics: Counter[str] = Counter()

    # ------------------------------------------------------------------------------------------ enroll
    async def enroll(self, req: EnrollRequest) -> JoinReply:
        reply = await self._enroll(req)
        if not reply.ok:
            self.metrics[f"enroll_refused_{reply.reason}"] += 1
        return reply

    async def _enroll(self, req: EnrollRequest) -> JoinReply:
        config = self.registry.config
        if self.pepper is None or self.trust is None:
            return JoinReply(ok=False, reason="unavailable",
                             message="this fleet server cannot enroll hosts (it has no trust directory)")
        if req.nkey is None:
            return JoinReply(ok=False, reason="malformed", message="an enrollment needs the host's public key (nkey)")
        digest = key_digest(self.pepper, req.key)
        found = config.key_for_digest(digest)
        if found is None:
            if not self.failures.allows():
                self.metrics["enroll_rate_limited"] += 1
                return JoinReply(ok=False, reason="rate_limited",
                                 message="too many failed enrollments; try again in a few seconds")
            self.failures.spend()
            log.warning("security: enrollment refused: unknown key (fingerprint %s) from hostname %r",
                        digest.removeprefix("hmac-sha256:")[:12], req.hostname[:64])
            return JoinReply(ok=False, reason="unknown_key", message="unknown enrollment key")
        key_id, key = found
        decision = check_enrollment(key_id, key, config.pools, req, now_utc())
        if not decision.ok:
            log.warning("security: enrollment with key %s refused (%s): %s", key_id, decision.reason, decision.message)
            return JoinReply(ok=False, reason=decision.reason, message=decision.message)
        refused = await self._identity_refused(req.nkey)
        if refused is not None:
            log.warning("security: enrollment with key %s from hostname %r refused (%s): %s", key_id,
                        req.hostname[:64], refused.reason, refused.message)
            return refused
        mid = str(uuid.uuid4())
        undo: list[Callable[[], Any]] = []
        try:
            used = await self.counters.increment(f"uses.{key_id}", limit=key.max_uses)
            if used is None:
                return JoinReply(ok=False, reason="exhausted",
                                 message=f"enrollment key {key_id} is used up ({key.max_uses} of {key.max_uses})")
            undo.append(lambda: self.counters.increment(f"uses.{key_id}", by=-1))
            for pool_id in decision.pools:
                limit = config.pools[pool_id].hosts.max if pool_id in config.pools else None
                if limit is not None:
                    if not await self._join_pool(pool_id, mid, limit):
                        return JoinReply(ok=False, reason="pool_full",
                                         message=f"pool {pool_id} already has its maximum of {limit} hosts "
                                                 f"(hosts.max in fleet.yaml)")
                    undo.append(functools.partial(self.leave_pool, pool_id, mid))
            record = HostRecord(
                machine_id=mid, tenant=decision.tenant or key.tenant, key_id=key_id, hostname=req.hostname,
                **decision.model_dump(include=set(Envelope.model_fields)), max_disk_gb=decision.max_disk_gb,
                nkey=req.nkey,
                enrolled_at=format_time(now_utc()), version=req.version, credential_socket=req.credential_socket,
                isolation=req.isolation,
            )
            jwt = self.trust.host_jwt(req.nkey, mid, req.hostname, record.tenant)
            revision = await self.hosts.create(mid, record.encode())
            undo.clear()
        finally:
            for step in reversed(undo):  # a refusal or a failure after a use was taken gives it back
                try:
                    await step()
                except FleetError as exc:
                    log.warning("could not give back an enrollment step for %s: %s", mid, exc)
        log.info("enrolled %s (%s) with key %s: tenant %s, pools %s (use %d%s)", mid, req.hostname, key_id,
                 record.tenant, ", ".join(record.pools), used, f" of {key.max_uses}" if key.max_uses else "")
        self.registry.apply_record(mid, Entry(mid, record.encode(), revision))  # don't wait for the informer
        return self.join_reply(self.registry.build(record, None, False), jwt)

    async def _identity_refused(self, nkey: str) -> JoinReply | None:
        """A host's identity is an nkey nobody else uses: not one of the fleet's own identities, not a registered
        host's, not a revoked one (a revocation is for good: a stolen seed never comes back under a new host)."""
        if nkey in self.own_keys:
            return JoinReply(ok=False, reason="identity_in_use",
                             message="this public key is one of the fleet's own identities; generate a new one")
        holder = self.registry.by_nkey.get(nkey)
        if holder is not None:
            return JoinReply(ok=False, reason="identity_in_use",
                             message=f"this public key is already the identity of host {holder}; generate a new one")
        if self.revocations is not None and await self.revocations.is_revoked(nkey):
            return JoinReply(ok=False, reason="revoked", message="this public key was revoked; generate a new one")
        return None

    async def _join_pool(self, pool_id: str, mid: str, limit: int) -> bool:
        full = [False]
        registry = self.registry

        def change(current: Entry | None) -> bytes | None:
            members = _members(current)
            now = time.time()
            if pool_full(members, registry, limit, now):
                full[0] = True
                return None
            full[0] = False
            live = {m: t for m, t in members.items() if m in registry.entries or now - t < MEMBER_GRACE_S}
            live[mid] = now
            return json.dumps(live, sort_keys=True).encode()

        await self.counters.modify(f"members.{pool_id}", change)
        return not full[0]

    async def leave_pool(self, pool_id: str, mid: str) -> None:
        def change(current: Entry | None) -> bytes | None:
            members = _members(current)
            if mid not in members:
                return None
            del members[mid]
            return json.dumps(members, sort_keys=True).encode()

        await self.counters.modify(f"members.{pool_id}", change)

    # ------------------------------------------------------------------------------------------ register
    async def register(self, machine_id: str, req: RegisterRequest) -> JoinReply:
        """Host `machine_id` (the token of the subject it registered on: only its identity may publish there)
        rejoins."""
        entry = self.registry.entries.get(machine_id)
        if entry is None:
            return JoinReply(ok=False, reason="unknown_host", message=f"no host {machine_id} is registered")
        record = entry.record
        if record.revoked:
            return JoinReply(ok=False, reason="revoked", message=f"host {machine_id} was revoked")
        wanted = {"hostname": req.hostname, "version": req.version, "credential_socket": req.credential_socket,
                  "isolation": req.isolation}
        if any(getattr(record, k) != v for k, v in wanted.items()):  # the informer brings the new record back
            record = await modify_record(self.hosts, machine_id, lambda r: r.model_copy(update=wanted)
                                         if any(getattr(r, k) != v for k, v in wanted.items()) else None) or record
        log.info("registered %s (%s)", record.machine_id, record.hostname)
        return self.join_reply(self.registry.build(record, None, False))

    def _isolation(self, pool_id: str) -> str:
        spec = self.registry.config.pools.get(pool_id)
        return "none" if spec is not None and spec.isolation == "none" else "sandbox"

    def join_reply(self, host: Host, jwt: str | None = None) -> JoinReply:
        return JoinReply(
            ok=True, machine_id=host.machine_id, jwt=jwt, tenant=host.tenant, key_id=host.key_id,
            pools=[PoolMembership(id=p, mode=m, isolation=self._isolation(p))  # type: ignore[arg-type]
                   for p, m in zip(host.pools, host.pool_modes, strict=True)],
            labels=list(host.labels), models=list(host.models),
            capacity={"max_concurrent_sessions": host.max_sessions, "pool_max_disk_gb": host.max_disk_gb},  # type: ignore[arg-type]
            heartbeat_interval_s=self.heartbeat_interval, status=host.declared,  # type: ignore[arg-type]
            lease_s=self.registry.grace_for_pools(host.pools),
        )


def _members(entry: Entry | None) -> dict[str, float]:
    """The members of a pool (machine ID -> when its place was taken). Whatever is stored is read tolerantly: an
    entry that is not a machine ID with a finite time is dropped (the next write leaves it out), so a corrupt list
    never blocks enrollment into the pool nor the revocation of its hosts."""
    if entry is None:
        return {}
    try:
        data = json.loads(entry.value)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    out: dict[str, float] = {}
    for k, v in data.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and is_machine_id(k):
            out[k] = float(v)
    return out


async def modify_record(store: Store, machine_id: str, change: Callable[[HostRecord], HostRecord | None], *,
                        fallback: HostRecord | None = None) -> HostRecord | None:
    """Change a host record by compare-and-set (fleet.bus.kv.Store.modify); `change` returns the new record or None
    (no write). Returns the record as written, or None when nothing was written. Refused when the host is gone.
    A stored record that does not parse is changed from `fallback` (the record as last read, e.g. the registry's),
    or refused without it."""
    result: list[HostRecord | None] = [None]

    def step(current: Entry | None) -> bytes | None:
        if current is None:
            raise Refused(f"host {machine_id} is no longer registered")
        try:
            stored = HostRecord.model_validate_json(current.value)
        except ValueError:
            if fallback is None:
                raise Refused(f"the stored record of host {machine_id} is malformed") from None
            log.warning("security: the stored record of host %s is malformed; rewriting it from the last good one",
                        machine_id)
            stored = fallback
        new = change(stored)
        result[0] = new
        return new.encode() if new is not None else None

    await store.modify(machine_id, step)
    return result[0]
