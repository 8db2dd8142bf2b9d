"""Applying a plan (the edge): compare-and-set writes in dependency batches, idempotent, resumable.

Each change writes against the revision the plan saw: create only if absent, update/delete only at
`base_revision`. A lost race is re-checked: if the store already holds exactly the target (a re-run after a
crash), the change counts as done; otherwise apply stops with Conflict and nothing half-written is left that a
new plan would not show. Key secrets are resolved here and only here: `env:VAR` is read and digested with the pepper
(fleet.bus.records.key_digest), a generated secret is created once and handed to `reveal` before its digest is
stored (so no crash can lose it); only digests are stored. The batches come
from fleet.reconciler.ordering; changes inside a batch run concurrently. Called by `fleet apply`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleet import __version__
from fleet.bus.applied import ConfigStore
from fleet.bus.records import key_digest
from fleet.errors import Conflict, FleetError
from fleet.reconciler.desired import SENSITIVE_ATTRS
from fleet.reconciler.gather import MIN_SECRET_BITS, secret_bits
from fleet.reconciler.ordering import batches
from fleet.reconciler.plan import Change, Plan

Progress = Callable[[int, int, Change], None]
#: called with (key_id, secret) as soon as a secret is generated, before its hash is stored (so a crash cannot
#: lose a secret whose hash was stored), and with (key_id, None) when that secret turned out void: the store
#: already held that key from an earlier, interrupted apply.
Reveal = Callable[[str, str | None], None]
CONCURRENCY = 256


@dataclass
class ApplyReport:
    applied: int = 0
    already: int = 0
    revealed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def new_secret() -> str:
    return "fleet_ek_" + secrets.token_urlsafe(32)


def check_secrets(plan: Plan, env: Mapping[str, str]) -> None:
    """Fail before any write if a key's secret variable is missing or its secret is weak (a saved plan is checked
    here as a fresh one is at plan time)."""
    missing, weak = [], []
    for c in plan.changes:
        if c.kind == "key" and c.action in ("create", "update", "replace") and c.after:
            source = c.after.get("secret_source", "")
            if source.startswith("env:") and not env.get(source[4:]):
                missing.append(f"{source[4:]} (key {c.id})")
            elif source.startswith("env:") and secret_bits(env[source[4:]]) < MIN_SECRET_BITS:
                weak.append(f"{source[4:]} (key {c.id})")
    if missing:
        raise FleetError("enrollment key secrets are not set: " + ", ".join(missing),
                         hint="export the variables (from your CI secret store) and re-run; nothing was written")
    if weak:
        raise FleetError(f"enrollment key secrets under {MIN_SECRET_BITS} bits: " + ", ".join(weak),
                         hint="use a random secret (e.g. `openssl rand -hex 32`); nothing was written")


def _generate(c: Change, report: ApplyReport, reveal: Reveal | None, pepper: bytes) -> str:
    secret = new_secret()
    report.revealed[c.id] = secret
    if reveal is not None:
        reveal(c.id, secret)
    return key_digest(pepper, secret)


async def _target(store: ConfigStore, c: Change, env: Mapping[str, str], report: ApplyReport,
                  reveal: Reveal | None, pepper: bytes | None) -> dict[str, Any]:
    spec = dict(c.after or {})
    if c.kind != "key":
        return spec
    if pepper is None:
        raise FleetError(f"cannot write key {c.id}: these credentials cannot read the pepper of key digests",
                         hint="apply with the admin credentials, with the fleet server running (it creates the pepper)")
    source = spec.get("secret_source", "")
    if source.startswith("env:"):
        spec["secret_digest"] = key_digest(pepper, env[source[4:]])
    elif c.action == "update" and (c.before or {}).get("secret_source") == "generated":
        current = await store.get(f"key.{c.id}")
        spec["secret_digest"] = ((current.spec.get("secret_digest") if current else None)
                                 or _generate(c, report, reveal, pepper))
    else:
        spec["secret_digest"] = _generate(c, report, reveal, pepper)
    return spec


def _public(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in SENSITIVE_ATTRS}


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal apart from secrets (a generated secret differs between runs but is not a conflict)."""
    return _public(a) == _public(b)


async def _apply_one(store: ConfigStore, c: Change, env: Mapping[str, str], report: ApplyReport,
                     reveal: Reveal | None, pepper: bytes | None) -> bool:
    """Apply one change; True if written, False if the store already had the target."""
    if c.action == "delete":
        try:
            await store.delete(c.kind, c.id, last=c.base_revision)
            return True
        except Conflict:
            if await store.get(c.address) is None:
                return False
            raise
    spec = await _target(store, c, env, report, reveal, pepper)
    try:
        if c.action == "create":
            await store.create(c.kind, c.id, spec)
        else:
            await store.update(c.kind, c.id, spec, last=c.base_revision)
        return True
    except Conflict:
        current = await store.get(c.address)
        if current is not None and _same(current.spec, spec):
            if c.kind == "key" and report.revealed.pop(c.id, None) is not None and reveal is not None:
                reveal(c.id, None)  # an earlier run stored this key: the secret generated now is void
            return False
        raise Conflict(f"{c.address} was changed by someone else since the plan was made",
                       hint="run `fleet plan` again and review the new plan") from None


async def apply_plan(store: ConfigStore, plan: Plan, env: Mapping[str, str], *, progress: Progress | None = None,
                     reveal: Reveal | None = None, applied_by: str = "",
                     still_ours: Callable[[], None] | None = None, pepper: bytes | None = None) -> ApplyReport:
    """Write every change of `plan`; see the module docstring."""
    check_secrets(plan, env)
    report = ApplyReport()
    start = time.perf_counter()
    total = len(plan.changes)
    done = 0
    sem = asyncio.Semaphore(CONCURRENCY)

    async def run(c: Change) -> None:
        nonlocal done
        async with sem:
            wrote = await _apply_one(store, c, env, report, reveal, pepper)
        if wrote:
            report.applied += 1
        else:
            report.already += 1
        done += 1
        if progress:
            progress(done, total, c)

    for batch in batches(list(plan.changes)):
        if still_ours is not None:
            still_ours()  # raises when the apply lock was lost: stop before the next batch
        results = await asyncio.gather(*(run(c) for c in batch), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
    if plan.changes:
        await store.write_meta({
            "config_hash": plan.basis.config_hash,
            "config_file": plan.basis.config_file,
            "tool_version": __version__,
            "applied_at": time.time(),
            "applied_by": applied_by,
            "changes": total,
        })
    report.seconds = time.perf_counter() - start
    return report
