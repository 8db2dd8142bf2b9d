"""The plan and apply use-cases (the edge): what `fleet plan` and `fleet apply` do, without printing a word.

`make_live_plan` gathers the applied state and the observed hosts and diffs them against a loaded fleet.yaml.
`apply` runs the whole apply: take the lock, plan (or check that a saved plan's basis has not moved), let the
view confirm, check the lock is still ours, write every change by compare-and-set (fleet.reconciler.apply),
release the lock, then wait until the live hosts converge. Whoever drives it implements `ApplyView`: the CLI
prints and prompts; the backend controllers of a later issue will log. A cancellation (Ctrl-C, SIGTERM,
SIGHUP: the CLI turns each into one) releases the lock on its way out, so the next apply does not wait for
the TTL.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fleet import __version__
from fleet.bus.applied import ApplyLock, ConfigStore, LockInfo, load_pepper
from fleet.bus.connection import Bus
from fleet.errors import FleetError, NotConverged, PermissionDenied, ServerUnavailable, StalePlan
from fleet.hosts.client import host_pages
from fleet.hosts.model import Host
from fleet.reconciler.apply import ApplyReport, Reveal, apply_plan
from fleet.reconciler.basis import moved
from fleet.reconciler.converge import Targets, pending, targets
from fleet.reconciler.desired import desired_resources
from fleet.reconciler.diff import make_plan
from fleet.reconciler.gather import gather, key_hashes, key_secret_problems
from fleet.reconciler.live import QueuedSession
from fleet.reconciler.plan import Basis, Change, Plan
from fleet.schema.models import FleetConfig
from fleet.sessions.client import list_sessions

CONVERGE_POLL_S = 0.5


async def observe_hosts(bus: Bus, *, required: bool = False) -> tuple[list[Host], str | None]:
    """Every host the control plane observes, and a warning instead when no `fleet server` answers (a plan still
    works from the applied state then), unless `required`."""
    try:
        return await host_pages(bus), None
    except ServerUnavailable as exc:
        if required:
            raise
        return [], f"{exc.message}: hosts were not observed (consequences and drift use the applied state only)"


async def observe_queued(bus: Bus, project: str | None = None) -> tuple[list[QueuedSession], str | None]:
    """The sessions waiting in the dispatcher's pending queue (the plan says which a change leaves unroutable), and
    a warning instead when no dispatcher answers or this identity may not list sessions."""
    try:
        sessions = (await list_sessions(bus, phase="queued", project=project, every=True)).sessions
    except (ServerUnavailable, PermissionDenied) as exc:
        return [], f"{exc.message}: queued sessions were not observed"
    return [QueuedSession(session_id=s.id, project=s.project, tenant=s.tenant, required_labels=tuple(s.labels),
                          model=s.model, submitted_at=s.submitted_at, reason=s.reason) for s in sessions], None


async def make_live_plan(bus: Bus, cfg: FleetConfig, file: Path, env: Mapping[str, str], *,
                         refresh_only: bool = False) -> Plan:
    """Gather live state and diff it against the loaded config."""
    problems = key_secret_problems(cfg, env)
    if problems:
        raise FleetError("enrollment key secrets refused:\n" + "\n".join(f"  - {p}" for p in problems),
                         hint="fix the secrets in your CI secret store; nothing was planned or written")
    hashes, warnings = key_hashes(cfg, env, await load_pepper(bus))
    store = await ConfigStore.open(bus)
    hosts, host_warning = await observe_hosts(bus)
    if host_warning:
        warnings.append(host_warning)
    queued: list[QueuedSession] = []
    if host_warning is None:
        queued, queue_warning = await observe_queued(bus)
        if queue_warning:
            warnings.append(queue_warning)
    got = await gather(store, hosts, hosts_observed=host_warning is None, queued=queued)
    basis = Basis(config_file=str(file), config_hash=cfg.source_hash, applied_revision=got.live.revision,
                  applied_resources={a: r.revision for a, r in got.live.applied.items()}, tool_version=__version__)
    return make_plan(desired_resources(cfg, hashes), got.live, basis, refresh_only=refresh_only, errors=tuple(warnings))


class ApplyView(Protocol):
    """What an apply shows and asks; the CLI implements it (fleet.cli.plan_cmds)."""

    def lock_acquired(self, info: LockInfo) -> None: ...
    def warning(self, text: str) -> None: ...
    def show_plan(self, plan: Plan) -> None: ...
    async def confirm(self, plan: Plan) -> None:
        """Return to go ahead; raise a FleetError to cancel (nothing is written)."""
    def progress(self, done: int, total: int, change: Change) -> None: ...
    def reveal(self, key_id: str, secret: str | None) -> None: ...
    def applied(self, plan: Plan, report: ApplyReport) -> None: ...
    def converging(self, left: list[str], elapsed: float) -> None: ...
    def converged(self, elapsed: float) -> None: ...


@dataclass(frozen=True)
class ApplyRequest:
    file: Path
    config: FleetConfig | None = None  # fleet.yaml, loaded (None: apply `saved`)
    saved: Plan | None = None  # a saved plan to apply exactly
    env: Mapping[str, str] | None = None  # where `env:` key secrets are read
    lock_timeout: float = 0.0
    wait: bool = True
    wait_timeout: float = 60.0
    command: str = "fleet apply"


async def apply(bus: Bus, req: ApplyRequest, view: ApplyView) -> Plan:
    """Run an apply (see the module docstring); returns the plan that was applied (maybe a no-op)."""
    env = req.env or {}
    lock = await ApplyLock.open(bus)
    info = await lock.acquire(req.command, timeout=req.lock_timeout)
    view.lock_acquired(info)
    try:
        if req.saved is not None:
            plan = req.saved
            await _check_basis(bus, plan, view)
            view.show_plan(plan)
        else:
            if req.config is None:
                raise FleetError("nothing to apply: neither fleet.yaml nor a saved plan was given")
            plan = await make_live_plan(bus, req.config, req.file, env)
            view.show_plan(plan)
            if plan.no_op:
                return plan
            await view.confirm(plan)  # the lock refresher keeps running meanwhile
        await lock.refresh()  # still ours after the prompt? (LockLost otherwise: nothing written)
        if plan.no_op:
            return plan
        store = await ConfigStore.open(bus)
        pepper = await load_pepper(bus, create=True) if any(c.kind == "key" for c in plan.changes) else None
        report = await apply_plan(store, plan, env, progress=view.progress, reveal=_reveal(view),
                                  applied_by=info.holder, still_ours=lock.check, pepper=pepper)
        view.applied(plan, report)
    finally:
        await asyncio.shield(lock.release())  # even when cancelled: a killed apply must not hold the lock
    if req.wait:
        await wait_for_convergence(bus, targets(plan), req.wait_timeout, view)
    return plan


def _reveal(view: ApplyView) -> Reveal:
    return view.reveal


async def _check_basis(bus: Bus, plan: Plan, view: ApplyView) -> None:
    snap = await (await ConfigStore.open(bus)).snapshot()
    config_hash = file_hash(Path(plan.basis.config_file)) if plan.basis.config_file else None
    if plan.basis.config_file and config_hash is None:
        view.warning(f"cannot read {plan.basis.config_file} from here: not checking that it is unchanged since the "
                     "plan (the applied state is checked)")
    changed = moved(plan.basis, {k: r.revision for k, r in snap.records.items()}, snap.revision, config_hash)
    if changed:
        raise StalePlan("the saved plan is stale: the fleet changed since it was made:\n"
                        + "\n".join(f"  - {c}" for c in changed),
                        hint="run `fleet plan --out …` again and review the new plan")


async def wait_for_convergence(bus: Bus, t: Targets, timeout: float, view: ApplyView) -> None:
    """Poll the control plane until every live host has caught up with `t`; NotConverged after `timeout`."""
    if not t:
        return
    start = time.monotonic()
    snap = await (await ConfigStore.open(bus)).snapshot()
    pool_slots = {r.id: (r.spec.get("capacity") or {}).get("max_concurrent_sessions")
                  for r in snap.records.values() if r.kind == "pool"}
    while True:
        hosts, warning = await observe_hosts(bus)
        if warning:
            view.warning(f"not waiting for convergence: {warning}")
            return
        left = pending(t, hosts, pool_slots)
        elapsed = time.monotonic() - start
        if not left:
            view.converged(elapsed)
            return
        if elapsed > timeout:
            raise NotConverged(f"applied, but {len(left)} host change(s) did not converge within {timeout:g}s:\n"
                               + "\n".join(f"  - {line}" for line in left[:20])
                               + (f"\n  … and {len(left) - 20} more" if len(left) > 20 else ""),
                               hint="check those hosts with `fleet show ID`; the config is applied, re-running apply "
                                    "is safe")
        view.converging(left, elapsed)
        await asyncio.sleep(CONVERGE_POLL_S)


def file_hash(path: Path) -> str | None:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
