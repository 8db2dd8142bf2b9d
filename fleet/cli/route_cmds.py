"""`fleet route show|list|set|test` (formats of the Rensei seed) and the hidden deprecated `fleet execution route`.

show: a project's routing policy as applied (what dispatch uses: the applied store, read directly from the
control plane's KV), with a `Pending:` line when fleet.yaml says otherwise (`--from-file`: fleet.yaml's, without a
fleet); list: every applied project, PENDING where fleet.yaml differs. set: edit fleet.yaml in place so that the change is a
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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from fleet.bus.applied import ConfigStore
from fleet.bus.connection import Bus, connect
from fleet.cli.options import ID, NatsSettings, file_option, format_option, nats_options
from fleet.cli.shared import (
    atomic_write,
    load_config_or_report,
    plugin_registry,
    print_diagnostics,
    run_async,
)
from fleet.errors import EXIT_UNAVAILABLE, FleetError, UsageError
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


@click.group("route")
def route_group() -> None:
    """Show, change and test a project's routing policy (preferred pool, fallback pool, mode)."""


@dataclass(frozen=True)
class Applied:
    """The applied routes and pools (specs of fleet.reconciler.desired's shapes), read from the control plane."""

    routes: dict[str, dict[str, Any]]
    pools: dict[str, dict[str, Any]]
    revision: int


async def read_applied(bus: Bus) -> Applied:
    snap = await (await ConfigStore.open(bus)).snapshot()
    return Applied({r.id: r.spec for r in snap.records.values() if r.kind == "route"},
                   {r.id: r.spec for r in snap.records.values() if r.kind == "pool"}, snap.revision)


def _applied_or_explain(nats: NatsSettings) -> Applied:
    async def run() -> Applied:
        async with await connect(**nats.kwargs(), name="fleet-cli") as bus:
            return await read_applied(bus)

    try:
        return run_async(run)
    except FleetError as exc:
        if exc.exit_code == EXIT_UNAVAILABLE:
            exc.hint = f"{exc.hint + '; ' if exc.hint else ''}`--from-file` shows what fleet.yaml declares, without a fleet"
        raise


def unknown_project_hint(slug: str, applied: Iterable[str]) -> str:
    """The hint for a project the applied config does not have: a 'did you mean' among the applied projects, and
    the command that lists them."""
    near = did_you_mean(slug, applied)
    return f"{near + ' ' if near else ''}`fleet route list` lists the applied projects"


def _file_config(file: Path, explicit: bool) -> FleetConfig | None:
    """fleet.yaml, to compare with the applied state: None when there is none (and none was named) or it has
    errors (said on stderr: the comparison is skipped, the applied policy is still shown)."""
    if not explicit and not file.exists():
        return None
    result = load_config_or_report(file, report=False, exit_on_error=False)
    if result.config is None or not result.ok:
        click.echo(f"warning: {file} has errors (`fleet validate` lists them): not compared with the applied policy",
                   err=True)
        return None
    return result.config


def _pick_applied(applied: Applied, slug: str | None, cfg: FleetConfig | None) -> str:
    slug = slug or os.environ.get("FLEET_PROJECT")
    if slug is None:
        if len(applied.routes) == 1:
            return next(iter(applied.routes))
        names = ", ".join(sorted(applied.routes)) or "(none: run `fleet apply`)"
        raise UsageError("which project? several are applied" if applied.routes else "no project is applied yet",
                         hint=f"name one of: {names} (or set FLEET_PROJECT)")
    if slug not in applied.routes:
        if cfg is not None and cfg.project(slug) is not None:
            raise UsageError(f"project {slug!r} is in fleet.yaml but not applied yet",
                             hint="`fleet apply` applies it; `fleet route show --from-file` shows what the file says")
        raise UsageError(f"no project {slug} in the applied config", hint=unknown_project_hint(slug, applied.routes))
    return slug


ROUTE_ATTRS = ("mode", "preferred_pool", "fallback_pool", "candidates", "required_labels", "model")


def pending_changes(applied: Mapping[str, Any], cfg: FleetConfig | None, project: str) -> list[dict[str, Any]] | None:
    """What fleet.yaml would change in `project`'s applied routing (`fleet apply` would write it): one item per
    attribute; [{"attribute": "project", "file": None}] when the file no longer has the project; None when there is
    no file to compare with."""
    if cfg is None:
        return None
    p = cfg.project(project)
    if p is None:
        return [{"attribute": "project", "applied": project, "file": None}]
    declared = route_spec(p)
    return [{"attribute": a, "applied": applied.get(a), "file": declared.get(a)} for a in ROUTE_ATTRS
            if (applied.get(a) or None) != (declared.get(a) or None)]


def _words(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(value) or "(none)"
    return "(none)" if value is None else str(value)


def route_json(project: str, spec: Mapping[str, Any], pools: Mapping[str, Mapping[str, Any]], source: str,
               pending: list[dict[str, Any]] | None, file: Path) -> dict[str, Any]:
    """The JSON of one project's routing (`route show --json`, items of `route list --json`)."""

    def pool(pid: str | None) -> dict[str, Any] | None:
        if pid is None:
            return None
        spec = pools.get(pid) or {}
        return {"id": pid, **({"backend": spec["backend"], "mode": spec["mode"]} if spec else {})}

    return {"project": project, "tenant": spec.get("tenant"), "source": source,
            "routing_mode": spec.get("mode"), "preferred_pool": pool(spec.get("preferred_pool")),
            "fallback_pool": pool(spec.get("fallback_pool")),
            "candidates": [pool(c) for c in spec.get("candidates") or []],
            "required_labels": list(spec.get("required_labels") or []), "model": spec.get("model"),
            "pending": None if not pending else {"file": str(file), "changes": pending}}


@route_group.command("show")
@click.argument("project", type=ID, required=False)
@click.option("--from-file", is_flag=True,
              help="Show what fleet.yaml declares instead of the applied policy (needs no running fleet).")
@file_option
@nats_options
@format_option("table", "json", default="table")
def route_show(project: str | None, from_file: bool, file: Path, nats: NatsSettings, fmt: str) -> None:
    """Show the routing policy of PROJECT that dispatch uses now: the applied one.

    When fleet.yaml says otherwise (an edit not applied yet, e.g. by `fleet route set`), a `Pending:` line says
    what `fleet apply` would change. `--from-file` shows fleet.yaml's policy instead.
    """
    explicit = click.get_current_context().get_parameter_source("file") != click.core.ParameterSource.DEFAULT
    if from_file:
        cfg = load_config_or_report(file).config
        assert cfg is not None
        p = pick_project(cfg, project)
        pools = {x.id: pool_spec(x) for x in cfg.pools if not x.abstract}
        data = route_json(p.id, route_spec(p), pools, "file", None, file)
    else:
        applied = _applied_or_explain(nats)
        cfg = _file_config(file, explicit)
        slug = _pick_applied(applied, project, cfg)
        spec = applied.routes[slug]
        data = route_json(slug, spec, applied.pools, "applied", pending_changes(spec, cfg, slug), file)
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
        return
    _echo_route(data)


def _echo_route(data: dict[str, Any]) -> None:
    def note(pool: dict[str, Any] | None) -> str:
        return f"({pool['backend']}, {pool['mode']})" if pool and "backend" in pool else ""

    preferred, fallback = data["preferred_pool"], data["fallback_pool"]
    names = [preferred["id"], fallback["id"] if fallback else "", *(c["id"] for c in data["candidates"])]
    width = max(len(n) for n in names)
    click.echo(f"{'Project:':<18}{data['project']}")
    click.echo(f"{'Preferred pool:':<18}{preferred['id']:<{width}}  {note(preferred)}".rstrip())
    if data["routing_mode"] == "adaptive":
        for c in data["candidates"]:
            click.echo(f"{'Candidate pool:':<18}{c['id']:<{width}}  {note(c)}".rstrip())
    else:
        shown = f"{fallback['id']:<{width}}  {note(fallback)}".rstrip() if fallback else "(none)"
        click.echo(f"{'Fallback pool:':<18}{shown}")
    click.echo(f"{'Routing mode:':<18}{data['routing_mode']}")
    pending = data.get("pending")
    if pending:
        file = pending["file"]
        if any(c["attribute"] == "project" for c in pending["changes"]):
            what = f"{file} no longer has this project"
        else:
            what = f"{file} differs: " + "; ".join(f"{c['attribute']} {_words(c['applied'])} → {_words(c['file'])}"
                                                   for c in pending["changes"])
        click.echo(f"{'Pending:':<18}{what} (not applied: `fleet plan` shows it, `fleet apply` applies it)")


@route_group.command("list")
@file_option
@nats_options
@format_option("table", "json", default="table")
def route_list(file: Path, nats: NatsSettings, fmt: str) -> None:
    """List every applied project with its routing (PROJECT, TENANT, MODE, PREFERRED, FALLBACK, PENDING).

    PENDING is `yes` where fleet.yaml would change the project's routing at the next `fleet apply`.
    """
    explicit = click.get_current_context().get_parameter_source("file") != click.core.ParameterSource.DEFAULT
    applied = _applied_or_explain(nats)
    cfg = _file_config(file, explicit)
    items = [route_json(slug, spec, applied.pools, "applied", pending_changes(spec, cfg, slug), file)
             for slug, spec in sorted(applied.routes.items())]
    if fmt == "json":
        click.echo(json.dumps(items, indent=2))
        return
    from fleet.cli.inventory_cmds import aligned

    rows: list[tuple[str, ...]] = [(d["project"], d["tenant"] or "-", d["routing_mode"] or "-", d["preferred_pool"]["id"],
             (d["fallback_pool"] or {}).get("id") or (("candidates: " + ", ".join(c["id"] for c in d["candidates"]))
                                                      if d["candidates"] else "-"),
             "yes" if d["pending"] else "-") for d in items]
    click.echo(aligned(("PROJECT", "TENANT", "MODE", "PREFERRED", "FALLBACK", "PENDING"), rows))
    if not items:
        click.echo("no project is applied yet: `fleet apply` applies fleet.yaml", err=True)


@route_group.command("set")
@click.argument("project", type=ID, required=False)
@click.option("--preferred-pool", type=ID, required=True, metavar="POOL", help="Pool ID to use as the primary execution target.")
@click.option("--fallback-pool", type=ID, metavar="POOL",
              help="Pool ID to fall back to when the preferred pool is full. Omit to remove the fallback.")
@click.option("--apply", "then_apply", is_flag=True,
              help="Then apply fleet.yaml (as `fleet apply --auto-approve`); if that fails before it wrote anything, "
                   "fleet.yaml is put back as it was.")
@file_option
@nats_options
def route_set(project: str | None, preferred_pool: str, fallback_pool: str | None, then_apply: bool,
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
    original = file.read_bytes() if then_apply else b""
    changed = new_text != result.document.text
    if not changed:
        click.echo(f"{p.id}: routing already preferred={preferred_pool} fallback={fallback_pool or '(none)'}; {file} unchanged")
    else:
        atomic_write(file, new_text)
        edited = checked.config.project(p.id) if checked.config else None
        mode = edited.routing.mode if edited else "?"
        click.echo(f"Updated {file}: {p.id} -> preferred {preferred_pool}, fallback {fallback_pool or '(none)'}, mode {mode}.")
        if not then_apply:
            click.echo("Takes effect on the next dispatch after `fleet apply`; in-flight sessions stay where they are.")
    if then_apply:
        _apply_or_restore(file, original, changed, checked.config, nats, p.id)


def _apply_or_restore(file: Path, original: bytes, changed: bool, config: FleetConfig | None, nats: NatsSettings,
                      project: str) -> None:
    """`route set --apply`: apply the edited fleet.yaml (as `fleet apply --auto-approve` does); when that fails
    before it wrote anything (no fleet, the lock held, Ctrl-C, …), put the file back byte for byte, so that the
    edit is either applied or undone, never left half done."""
    from fleet.cli.plan_cmds import CliApplyView, SecretReveal, run_apply
    from fleet.reconciler.operation import ApplyRequest

    view = CliApplyView(summary=False, auto_approve=True, reveal=SecretReveal(None))
    request = ApplyRequest(file=file, config=config, env=os.environ, command=f"fleet route set {project} --apply")
    try:
        run_apply(nats, request, view)
    except BaseException as exc:
        if not changed or view.wrote:
            raise  # the file was not edited, or the store already holds (part of) it: the file says what is applied
        restore_bytes(file, original)
        note = f"{file} is back as it was: nothing was applied"
        if isinstance(exc, FleetError):
            exc.hint = f"{note}; {exc.hint}" if exc.hint else note
        else:
            click.echo(note, err=True)
        raise
    click.echo("In effect from the next dispatch; in-flight sessions stay where they are.")


def restore_bytes(path: Path, content: bytes) -> None:
    """Put `content` back into `path` exactly (atomically: temp file + rename, keeping the file's mode)."""
    target = path.resolve()
    tmp = target.with_name(f".{target.name}.restore{os.getpid()}")
    try:
        mode = target.stat().st_mode & 0o777
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FleetError(f"cannot restore {path}: {exc.strerror or exc}",
                         hint="nothing was applied; undo the edit by hand (`git checkout` the file)") from exc


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
