"""`fleet route show|set|test` (formats of the Rensei seed) and the hidden deprecated `fleet execution route`.

show: a project's routing policy from fleet.yaml. set: edit fleet.yaml in place so that the change is a
one-line diff (comments, order and formatting of everything else untouched), refusing unknown pools, pools
of another tenant, and (adaptive) a preferred pool that is one of the candidates; `--apply` applies it. test:
the next dispatch as the dispatcher would do it now (fleet.scheduler.probe on a snapshot of the live hosts and
fleet.yaml's pools and route: the same `schedule`), what would change the decision, and the unplaced demand of the
project's queued sessions per pool; `--explain` lists every reason each host is not eligible. `--json` and
`--format json` for both show and test. Listed in fleet.cli.main.COMMANDS (loaded when called).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import click

from fleet.bus.connection import connect
from fleet.cli.options import ID, NatsSettings, file_option, format_option, nats_options
from fleet.cli.shared import atomic_write, load_config_or_report, plugin_registry, print_diagnostics
from fleet.errors import FleetError, UsageError
from fleet.hosts.model import Host
from fleet.reconciler.desired import pool_spec, route_spec
from fleet.reconciler.live import QueuedSession
from fleet.reconciler.operation import observe_hosts, observe_queued
from fleet.routing import ineligibility
from fleet.scheduler import PoolStatus, Probe, Reason, Route, group, probe, schedule, snapshot_of
from fleet.schema.api import load_fleet_text
from fleet.schema.diagnostics import did_you_mean
from fleet.schema.editing import RouteEdit, edit_route
from fleet.schema.models import FleetConfig, Project

PROJECT_HELP = "Project slug (default: FLEET_PROJECT, or the only project in fleet.yaml)."


def pick_project(cfg: FleetConfig, slug: str | None) -> Project:
    slug = slug or os.environ.get("FLEET_PROJECT")
    if slug is None:
        if len(cfg.projects) == 1:
            return cfg.projects[0]
        names = ", ".join(p.id for p in cfg.projects) or "(none)"
        raise UsageError("which project? fleet.yaml has several", hint=f"name one of: {names} (or set FLEET_PROJECT)")
    project = cfg.project(slug)
    if project is None:
        raise UsageError(f"no project {slug!r} in fleet.yaml",
                       hint=did_you_mean(slug, [p.id for p in cfg.projects]) or
                       f"projects: {', '.join(p.id for p in cfg.projects) or '(none)'}")
    return project


def _pool_note(cfg: FleetConfig, pool_id: str | None) -> str:
    pool = cfg.pool(pool_id) if pool_id else None
    return f"({pool.backend}, {pool.mode})" if pool else ""


@click.group("route")
def route_group() -> None:
    """Show, change and test a project's routing policy (preferred pool, fallback pool, mode)."""


@route_group.command("show")
@click.argument("project", type=ID, required=False)
@file_option
@format_option("table", "json", default="table")
def route_show(project: str | None, file: Path, fmt: str) -> None:
    """Show the routing policy of PROJECT as fleet.yaml declares it."""
    cfg = load_config_or_report(file).config
    assert cfg is not None
    p = pick_project(cfg, project)
    r = p.routing
    if fmt == "json":
        data = {"project": p.id, "tenant": p.tenant, **route_spec(p)}
        data["preferred_pool"] = {"id": r.preferred_pool, **_pool_json(cfg, r.preferred_pool)}
        data["fallback_pool"] = {"id": r.fallback_pool, **_pool_json(cfg, r.fallback_pool)} if r.fallback_pool else None
        data["routing_mode"] = data.pop("mode")
        click.echo(json.dumps(data, indent=2))
        return
    width = max(len(r.preferred_pool), len(r.fallback_pool or ""))
    click.echo(f"{'Project:':<18}{p.id}")
    click.echo(f"{'Preferred pool:':<18}{r.preferred_pool:<{width}}  {_pool_note(cfg, r.preferred_pool)}")
    if r.mode == "adaptive":
        for c in r.candidates:
            click.echo(f"{'Candidate pool:':<18}{c:<{width}}  {_pool_note(cfg, c)}")
    else:
        fallback = f"{r.fallback_pool:<{width}}  {_pool_note(cfg, r.fallback_pool)}" if r.fallback_pool else "(none)"
        click.echo(f"{'Fallback pool:':<18}{fallback}")
    click.echo(f"{'Routing mode:':<18}{r.mode}")


def _pool_json(cfg: FleetConfig, pool_id: str | None) -> dict:
    pool = cfg.pool(pool_id) if pool_id else None
    return {"backend": pool.backend, "mode": pool.mode} if pool else {}


@route_group.command("set")
@click.argument("project", type=ID, required=False)
@click.option("--preferred-pool", type=ID, required=True, metavar="POOL", help="Pool ID to use as the primary execution target.")
@click.option("--fallback-pool", type=ID, metavar="POOL",
              help="Pool ID to fall back to when the preferred pool is full. Omit to remove the fallback.")
@click.option("--apply", "then_apply", is_flag=True, help="Also run `fleet apply --auto-approve` afterwards.")
@file_option
@nats_options
@click.pass_context
def route_set(ctx: click.Context, project: str | None, preferred_pool: str, fallback_pool: str | None, then_apply: bool,
              file: Path, nats: NatsSettings) -> None:
    """Change PROJECT's routing in fleet.yaml, in place (a one-line diff in your pull request).

    Takes effect on the next session dispatch after `fleet apply`; in-flight sessions stay where they are.
    """
    result = load_config_or_report(file)
    cfg = result.config
    assert cfg is not None
    p = pick_project(cfg, project)
    for pool_id in (preferred_pool, fallback_pool):
        if pool_id is None:
            continue
        pool = cfg.pool(pool_id)
        if pool is None:
            raise UsageError(f"no pool {pool_id!r} in {file}", hint=did_you_mean(pool_id, [x.id for x in cfg.pools if not x.abstract])
                           or f"pools of tenant {p.tenant}: {', '.join(x.id for x in cfg.pools if x.tenant == p.tenant and not x.abstract)}")
        if pool.tenant != p.tenant:
            raise UsageError(f"pool {pool_id!r} belongs to tenant {pool.tenant!r}; project {p.id!r} is in tenant {p.tenant!r}",
                             hint="a project may only route to pools of its own tenant")
        if pool.abstract:
            raise UsageError(f"pool {pool_id!r} is abstract (a template) and cannot take sessions")
    if fallback_pool is not None and fallback_pool == preferred_pool:
        raise UsageError("--fallback-pool must differ from --preferred-pool")
    if p.routing.mode == "adaptive" and fallback_pool is not None:
        raise UsageError(f"project {p.id!r} uses adaptive routing, which has candidates, not a fallback pool",
                         hint="edit `routing.candidates` in fleet.yaml")
    if p.routing.mode == "adaptive" and preferred_pool in p.routing.candidates:
        raise UsageError(f"pool {preferred_pool!r} is already a candidate of project {p.id!r}: adaptive routing samples "
                         "the preferred pool and the candidates, so it cannot be both",
                         hint=f"remove {preferred_pool!r} from `routing.candidates` in {file} first, or prefer another pool")
    new_text = edit_route(result.document, p.id, RouteEdit(preferred_pool, fallback_pool))
    checked = load_fleet_text(new_text, str(file), backends=plugin_registry().settings_validators())
    if not checked.ok:
        print_diagnostics(checked)
        raise FleetError(f"the edited {file} would not be valid; nothing was written")
    if new_text == result.document.text:
        click.echo(f"{p.id}: routing already preferred={preferred_pool} fallback={fallback_pool or '(none)'}; {file} unchanged")
    else:
        atomic_write(file, new_text)
        edited = checked.config.project(p.id) if checked.config else None
        mode = edited.routing.mode if edited else "?"
        click.echo(f"Updated {file}: {p.id} -> preferred {preferred_pool}, fallback {fallback_pool or '(none)'}, mode {mode}.")
        click.echo("Takes effect on the next dispatch after `fleet apply`; in-flight sessions stay where they are.")
    if then_apply:
        from fleet.cli.plan_cmds import apply_cmd

        ctx.invoke(apply_cmd, plan_file=None, file=file, nats=nats, auto_approve=True, lock_timeout=0.0,
                   reveal_keys_to=None, summary=False, wait=True, wait_timeout=60.0)


@route_group.command("test")
@click.argument("project", type=ID, required=False)
@click.option("--explain", is_flag=True, help="List, per host, every reason it is not eligible.")
@file_option
@nats_options
@format_option("table", "json", default="table")
def route_test(project: str | None, explain: bool, file: Path, nats: NatsSettings, fmt: str) -> None:
    """Dry-run the routing of PROJECT's next session against live capacity.

    Uses the routing and pools of fleet.yaml (what you are about to promote) and the hosts the control plane
    sees now, through the dispatcher's own scheduler: only live hosts' free slots count, so an on_demand or hybrid
    pool without a host WAITS FOR BACKEND. Reports where the next session would go now, whether the fallback
    would activate, what would change that, and why the project's queued sessions wait (per pool).
    """
    cfg = load_config_or_report(file).config
    assert cfg is not None
    p = pick_project(cfg, project)

    async def run() -> tuple[list[Host], list[QueuedSession], str | None]:
        async with await connect(**nats.kwargs(), name="fleet-cli") as bus:
            hosts, _ = await observe_hosts(bus, required=True)
            queued, warning = await observe_queued(bus, project=p.id)
            return hosts, queued, warning

    hosts, queued, queue_warning = asyncio.run(run())
    snapshot = snapshot_of(hosts, {pool.id: pool_spec(pool) for pool in cfg.pools if not pool.abstract},
                           {p.id: route_spec(p)})
    decision = probe(snapshot, p.id)
    route = decision.route
    assert route is not None
    demand = schedule(snapshot, group((q.session_id, q.project, q.required_labels, q.model) for q in queued)).demand()
    shown = _shown(decision)
    if fmt == "json":
        click.echo(json.dumps({
            "project": p.id, "routing_mode": route.mode,
            "pools": [{"id": s.pool, "role": s.role, "mode": s.mode, "used": s.used, "total": s.total,
                       "available": s.available, "state": s.state, "elastic": s.elastic, "hosts_max": s.hosts_max,
                       "hosts": s.hosts, "reason": _reason_json(s.reason)} for s in shown],
            "decision": {"pool": decision.pool, "role": decision.role, "host": decision.host,
                         "reason": _reason_json(decision.reason), "would_change": decision.would_change},
            "fallback": route.fallback if route.mode == "preferred-with-fallback" else None,
            "unplaced": {pool: {"sessions": d.sessions, "by_reason": d.by_reason} for pool, d in demand.items()},
            "explain": _explain_json(route, cfg, hosts) if explain else None,
            "queued": None if queue_warning else {
                "count": len(queued), "sessions": [q.session_id for q in queued[:100]],
                "oldest_s": round(time.time() - queued[0].submitted_at, 3) if queued else None,
                "reason": queued[0].reason if queued else None},
        }, indent=2))
        return
    click.echo(f"Simulating dispatch for project: {p.id}")
    width = max([len(s.pool) for s in shown] + [len(route.fallback or "")])
    labels = max(len(s.label) for s in shown)
    for status in shown:
        label = {"preferred": "Preferred pool:", "fallback": "Fallback pool:", "candidate": "Candidate pool:"}[status.role]
        click.echo(f"  {label:<17}{status.pool:<{width}}  {status.label:<{labels}}  → {status.state}")
    if decision.reason is not None:
        click.echo(f"  {'Decision:':<17}queue (pending): {decision.reason.message}")
    else:
        suffix = " (fallback)" if decision.role == "fallback" else ""
        click.echo(f"  {'Decision:':<17}route to {decision.pool}{suffix}")
    if decision.would_change:
        click.echo(f"  {'Would change:':<17}{decision.would_change}")
    if route.mode == "preferred-with-fallback" and decision.role == "preferred" and route.fallback:
        click.echo(f"  {'Fallback:':<17}{route.fallback} (not needed)")
    elif route.mode != "adaptive" and not route.fallback:
        click.echo(f"  {'Fallback:':<17}(none configured)")
    if queue_warning:
        click.echo(f"  {'Queue:':<17}unknown ({queue_warning})")
    elif queued:
        oldest = time.time() - queued[0].submitted_at
        click.echo(f"  {'Queue:':<17}{len(queued)} session(s) waiting, the oldest for {oldest:.0f}s"
                   + (f": {queued[0].reason}" if queued[0].reason else ""))
        for pool, d in demand.items():
            why = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(d.by_reason.items()))
            click.echo(f"  {'Unplaced:':<17}{pool:<{width}}  {d.sessions} session(s) ({why})")
    else:
        click.echo(f"  {'Queue:':<17}empty")
    if explain:
        click.echo("")
        click.echo("Hosts:")
        rows = _explain_json(route, cfg, hosts)
        if not rows:
            click.echo("  (no hosts registered)")
        pools_width = max([len(", ".join(r["pools"]) or "-") for r in rows] + [5])
        for row in rows:
            if not row["reasons"]:
                verdict = f"eligible in {row['route_pool']}"
            elif row["route_pool"] is None:
                verdict = "; ".join(row["reasons"])
            else:
                verdict = f"{row['route_pool']}: " + "; ".join(row["reasons"])
            click.echo(f"  {row['id'][:8]}  {row['hostname'] or '-':<16} {', '.join(row['pools']) or '-':<{pools_width}}"
                       f"  {verdict}")


def _shown(decision: Probe) -> list[PoolStatus]:
    """The pools route test shows: up to the one the session goes to (the seed shows the fallback only when it is
    needed), every pool when it would wait, every candidate in adaptive mode."""
    if decision.pool is None or decision.route is None or decision.route.mode == "adaptive":
        return list(decision.statuses)
    out = []
    for status in decision.statuses:
        out.append(status)
        if status.pool == decision.pool:
            break
    return out


def _reason_json(reason: Reason | None) -> dict | None:
    return None if reason is None else {"kind": reason.kind, "pool": reason.pool, "message": reason.message,
                                        "would_change": reason.remedy}


def _explain_json(route: Route, cfg: FleetConfig, hosts: list[Host]) -> list[dict]:
    """Per host: its own pools, and every reason it cannot take the route's next session in the route's pool where
    it has the fewest (fleet.routing.ineligibility)."""
    pools = {pid: pool for pid in route.pools if (pool := cfg.pool(pid))}
    rows = []
    for h in sorted(hosts, key=lambda h: (h.hostname, h.machine_id)):
        best: tuple[str | None, list[str]] | None = None
        for pid, pv in pools.items():
            reasons = ineligibility(h, pv, route)
            if best is None or len(reasons) < len(best[1]):
                best = (pid, reasons)
        best_pool, reasons = best if best else (None, ["no pool of this route exists"])
        rows.append({"id": h.machine_id, "hostname": h.hostname, "pools": list(h.pools), "route_pool": best_pool,
                     "reasons": reasons})
    return rows


@click.group("execution", hidden=True)
def execution_group() -> None:
    """Deprecated: use `fleet route`."""
    click.echo("warning: `fleet execution route` is deprecated; use `fleet route` (it will be removed in a future version)",
               err=True)


execution_group.add_command(route_group, "route")
