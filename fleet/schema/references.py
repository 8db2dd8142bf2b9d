"""Cross-reference and invariant checks of a fleet.yaml, on a networkx graph of its objects.

Works on the plain data of a LoadedDocument (so it can run even when the JSON Schema found problems, and
report everything at once) and is defensive about wrong types. Checks: duplicate IDs, undefined
tenant/pool references (with 'did you mean'), `extends` cycles and cross-tenant inheritance, fallback equal
to preferred, an adaptive preferred pool also listed among its candidates, routing options that the mode
ignores, projects routed to pools of another tenant or to abstract pools, keys scoped to pools of another
tenant, min > max hosts, expired keys, backends that are not installed, and backend settings (through each
backend's settings model). Also resolves pool `extends` into flat pool data. Called by fleet.schema.api.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from fleet.schema.diagnostics import Diagnostic, PathPart, did_you_mean
from fleet.schema.loading import LoadedDocument

SettingsValidator = Callable[[dict[str, Any]], list[tuple[tuple[PathPart, ...], str]]]
KINDS = ("tenants", "projects", "pools", "keys", "hosts")
_INHERITED = ("tenant", "backend", "mode", "hosts", "capacity", "labels", "models", "cost", "disconnect_grace",
              "idle_timeout", "settings", "description")
_MERGED = ("hosts", "capacity", "cost", "settings")


@dataclass
class ResolvedPool:
    """A pool with `extends` applied; `origin[field]` is the path of the pool that set the field."""

    data: dict[str, Any]
    path: tuple[PathPart, ...]
    origin: dict[str, tuple[PathPart, ...]] = field(default_factory=dict)


class _Checker:
    def __init__(self, doc: LoadedDocument, backends: Mapping[str, SettingsValidator] | None, now: dt.datetime):
        self.doc = doc
        self.data = doc.data if isinstance(doc.data, dict) else {}
        self.backends = backends
        self.now = now
        self.diags: list[Diagnostic] = []
        self.graph: nx.DiGraph[str] = nx.DiGraph()
        self.index: dict[str, dict[str, tuple[dict, tuple[PathPart, ...]]]] = {k: {} for k in KINDS}

    # -- helpers -----------------------------------------------------------------------------------------
    def error(self, message: str, path: tuple[PathPart, ...], *, code: str, hint: str | None = None,
              severity: str = "error", key: bool = False) -> None:
        pos = self.doc.positions.of_key(path) if key else self.doc.positions.of_value(path)
        self.diags.append(Diagnostic(message, self.doc.file, pos[0], pos[1], path, severity=severity,  # type: ignore[arg-type]
                                     code=code, hint=hint))

    def items(self, kind: str) -> list[tuple[dict, tuple[PathPart, ...]]]:
        seq = self.data.get(kind)
        if not isinstance(seq, list):
            return []
        return [(item, (kind, i)) for i, item in enumerate(seq) if isinstance(item, dict)]

    def ref(self, kind: str, value: Any, path: tuple[PathPart, ...], what: str) -> tuple[dict, tuple] | None:
        """Look up `value` among the objects of `kind`; report an undefined reference."""
        if not isinstance(value, str):
            return None
        found = self.index[kind].get(value)
        if found is None:
            self.error(f"unknown {what} {value!r}", path, code=f"ref.undefined-{what}",
                       hint=did_you_mean(value, self.index[kind]) or _defined(what, self.index[kind]))
        return found

    def known_tenants(self, *tenants: Any) -> bool:
        """True when every one is a defined tenant (an unknown one is reported once, where it is named)."""
        return all(isinstance(t, str) and t in self.index["tenants"] for t in tenants)

    # -- passes ------------------------------------------------------------------------------------------
    def index_ids(self) -> None:
        for kind in KINDS:
            for item, path in self.items(kind):
                ident = item.get("id")
                if not isinstance(ident, str):
                    continue
                if ident in self.index[kind]:
                    first = self.index[kind][ident][1]
                    line = self.doc.positions.of_value((*first, "id"))[0]
                    self.error(f"duplicate {kind[:-1]} id {ident!r} (first defined on line {line})", (*path, "id"),
                               code="ref.duplicate-id")
                    continue
                self.index[kind][ident] = (item, path)
                self.graph.add_node(f"{kind[:-1]}:{ident}", kind=kind[:-1], path=path)

    def check_tenant_refs(self) -> None:
        for kind in ("projects", "pools", "keys"):
            for item, path in self.items(kind):
                if "tenant" in item and self.ref("tenants", item["tenant"], (*path, "tenant"), "tenant"):
                    self.graph.add_edge(f"{kind[:-1]}:{item.get('id')}", f"tenant:{item['tenant']}", rel="tenant")

    def resolve_pools(self) -> dict[str, ResolvedPool]:
        """Apply `extends` (after checking it forms no cycle); returns every pool by ID."""
        ext: nx.DiGraph[str] = nx.DiGraph()
        broken: set[str] = set()  # pools whose `extends` chain is already reported as wrong
        for pool_id, (item, path) in self.index["pools"].items():
            ext.add_node(pool_id)
            parent = item.get("extends")
            if parent is None:
                continue
            if parent == pool_id:
                self.error(f"pool {pool_id!r} extends itself", (*path, "extends"), code="ref.cycle")
                broken.add(pool_id)
                continue
            if self.ref("pools", parent, (*path, "extends"), "pool"):
                ext.add_edge(pool_id, parent)
                self.graph.add_edge(f"pool:{pool_id}", f"pool:{parent}", rel="extends")
            else:
                broken.add(pool_id)
        cyclic: set[str] = set()
        for cycle in nx.simple_cycles(ext):
            cyclic.update(cycle)
            first = min(cycle, key=lambda p: self.index["pools"][p][1])
            chain = " -> ".join([*cycle[cycle.index(first):], *cycle[: cycle.index(first)], first])
            self.error(f"pools extend each other in a cycle: {chain}", (*self.index["pools"][first][1], "extends"),
                       code="ref.cycle", hint="break the cycle: one of these pools must not extend another")
        resolved: dict[str, ResolvedPool] = {}
        acyclic = ext.subgraph(n for n in ext if n not in cyclic)
        for pool_id in reversed(list(nx.topological_sort(acyclic))):
            item, path = self.index["pools"][pool_id]
            parent = item.get("extends")
            base = resolved.get(parent) if isinstance(parent, str) else None
            if parent is not None and (base is None or parent in broken):
                broken.add(pool_id)
            data: dict[str, Any] = {}
            origin: dict[str, tuple] = {}
            if base is not None:
                for key in _INHERITED:
                    if key in base.data:
                        data[key] = _copy(base.data[key])
                        origin[key] = base.origin[key]
            for key, value in item.items():
                if key in _MERGED and isinstance(value, dict) and isinstance(data.get(key), dict):
                    data[key] = {**data[key], **value}
                else:
                    data[key] = _copy(value)
                origin[key] = path
            data.pop("abstract", None)
            if item.get("abstract"):
                data["abstract"] = True
            if base is not None:
                base_tenant, own_tenant = base.data.get("tenant"), item.get("tenant")
                if self.known_tenants(own_tenant, base_tenant) and own_tenant != base_tenant:
                    self.error(f"pool {pool_id!r} of tenant {own_tenant!r} extends pool {parent!r} of tenant {base_tenant!r}",
                               (*path, "extends"), code="ref.cross-tenant")
            resolved[pool_id] = ResolvedPool(data, path, origin)
        for pool_id, rp in resolved.items():
            if rp.data.get("extends") is not None and pool_id not in broken:
                for needed in ("tenant", "backend", "mode", "capacity"):
                    if needed not in rp.data:
                        self.error(f"pool {pool_id!r} has no {needed!r}, neither set nor inherited", rp.path,
                                   code="ref.incomplete-pool", key=True)
        return resolved

    def check_pools(self, resolved: dict[str, ResolvedPool]) -> None:
        for pool_id, rp in resolved.items():
            d = rp.data
            if isinstance(d.get("tenant"), str) and d["tenant"] in self.index["tenants"]:
                self.graph.add_edge(f"pool:{pool_id}", f"tenant:{d['tenant']}", rel="tenant")
            hosts = d.get("hosts")
            if isinstance(hosts, dict):
                lo, hi = hosts.get("min"), hosts.get("max")
                if isinstance(lo, int) and isinstance(hi, int) and lo > hi:
                    where = rp.origin.get("hosts", rp.path)
                    self.error(f"hosts.min ({lo}) is greater than hosts.max ({hi})", (*where, "hosts", "min"),
                               code="invariant.min-max")
                if d.get("mode") == "on_demand" and isinstance(lo, int) and lo > 0:
                    self.error(f"an on_demand pool keeps no hosts running: hosts.min {lo} is ignored", (*rp.path, "hosts", "min"),
                               code="invariant.on-demand-min", severity="warning", hint="use mode: hybrid to keep hosts.min running")
            if d.get("isolation") == "none" and d.get("abstract") is not True:
                where = rp.origin.get("isolation", rp.path)
                self.error(f"pool {pool_id} runs sessions without isolation: a session runs as its agent, can read "
                           "the host's credential and act as the host", (*where, "isolation"),
                           code="security.isolation-none", severity="warning",
                           hint="remove `isolation: none` and install bubblewrap on its hosts (fleet agent run "
                                "sandboxes every session)")
            backend = d.get("backend")
            if self.backends is not None and isinstance(backend, str):
                where = rp.origin.get("backend", rp.path)
                if backend not in self.backends:
                    self.error(f"unknown backend {backend!r}", (*where, "backend"), code="ref.undefined-backend",
                               hint=did_you_mean(backend, self.backends) or f"installed backends: {', '.join(sorted(self.backends))}")
                else:
                    settings = d.get("settings", {})
                    if isinstance(settings, dict):
                        for loc, msg in self.backends[backend](settings):
                            where = rp.origin.get("settings", rp.path)
                            sub = (*where, "settings", *loc)
                            # the key may not exist in the file (a missing setting): point at the settings block
                            if sub not in self.doc.positions.values:
                                sub = (*where, "settings") if (*where, "settings") in self.doc.positions.values else rp.path
                            self.error(f"pool {pool_id!r}: {msg}", sub, code="backend.settings", key=True)

    def check_projects(self, resolved: dict[str, ResolvedPool]) -> None:
        for item, path in self.items("projects"):
            routing = item.get("routing")
            if not isinstance(routing, dict):
                continue
            rpath = (*path, "routing")
            tenant = item.get("tenant")
            mode = routing.get("mode")
            preferred = routing.get("preferred_pool")
            fallback = routing.get("fallback_pool")
            refs: list[tuple[str | tuple[str, int], Any]] = [("preferred_pool", preferred)]
            if fallback is not None:
                refs.append(("fallback_pool", fallback))
            cands = routing.get("candidates")
            if isinstance(cands, list):
                refs += [(("candidates", i), c) for i, c in enumerate(cands)]
            for field_name, pool_id in refs:
                fpath = (*rpath, *(field_name if isinstance(field_name, tuple) else (field_name,)))
                if not isinstance(pool_id, str) or not self.ref("pools", pool_id, fpath, "pool"):
                    continue
                self.graph.add_edge(f"project:{item.get('id')}", f"pool:{pool_id}", rel="route")
                pool = resolved.get(pool_id)
                if pool is None:
                    continue
                if pool.data.get("abstract"):
                    self.error(f"pool {pool_id!r} is abstract (a template) and cannot take sessions", fpath,
                               code="ref.abstract-pool")
                ptenant = pool.data.get("tenant")
                if self.known_tenants(tenant, ptenant) and ptenant != tenant:
                    self.error(f"project {item.get('id')!r} of tenant {tenant!r} is routed to pool {pool_id!r} of tenant {ptenant!r}",
                               fpath, code="ref.cross-tenant", hint="a project may only use pools of its own tenant")
            if preferred is not None and preferred == fallback:
                self.error("fallback_pool is the same as preferred_pool", (*rpath, "fallback_pool"),
                           code="invariant.fallback-equals-preferred", hint="omit fallback_pool, or name another pool")
            if fallback is not None and mode in ("preferred-only", "adaptive"):
                self.error(f"fallback_pool is ignored in mode {mode!r}", (*rpath, "fallback_pool"), code="invariant.mode",
                           hint="use mode: preferred-with-fallback, or remove fallback_pool")
            if cands and mode != "adaptive":
                self.error(f"candidates are only used in mode 'adaptive', not {mode!r}", (*rpath, "candidates"),
                           code="invariant.mode")
            if mode == "adaptive" and isinstance(cands, list) and isinstance(preferred, str) and preferred in cands:
                # the sampler chooses among the preferred pool *and* the candidates: the pool would be one choice
                # listed twice, and removing it from one place would not stop routing to it
                self.error(f"preferred_pool {preferred!r} is also listed in candidates",
                           (*rpath, "candidates", cands.index(preferred)), code="invariant.candidate-equals-preferred",
                           hint=f"candidates are the pools besides the preferred pool: remove {preferred!r} from candidates")
            if mode == "preferred-with-fallback" and fallback is None:
                self.error("mode is preferred-with-fallback but no fallback_pool is set: sessions queue when the preferred pool is full",
                           (*rpath, "mode"), code="invariant.no-fallback", severity="warning",
                           hint="set fallback_pool, or use mode: preferred-only")

    def check_keys(self, resolved: dict[str, ResolvedPool]) -> None:
        for item, path in self.items("keys"):
            tenant = item.get("tenant")
            pools = item.get("pools")
            if isinstance(pools, list):
                for i, pool_id in enumerate(pools):
                    ppath = (*path, "pools", i)
                    if not self.ref("pools", pool_id, ppath, "pool"):
                        continue
                    self.graph.add_edge(f"key:{item.get('id')}", f"pool:{pool_id}", rel="scope")
                    pool = resolved.get(pool_id)
                    if pool is None:
                        continue
                    ptenant = pool.data.get("tenant")
                    if self.known_tenants(tenant, ptenant) and ptenant != tenant:
                        self.error(f"key {item.get('id')!r} of tenant {tenant!r} is scoped to pool {pool_id!r} of tenant {ptenant!r}",
                                   ppath, code="ref.cross-tenant", hint="a key may only admit hosts to pools of its own tenant")
                    if pool.data.get("abstract"):
                        self.error(f"pool {pool_id!r} is abstract (a template) and cannot have hosts", ppath,
                                   code="ref.abstract-pool")
            expires = item.get("expires")
            if isinstance(expires, str):
                try:
                    when = dt.datetime.fromisoformat(expires)
                except ValueError:
                    continue  # the schema reports the format
                if when.tzinfo is not None and when <= self.now:
                    self.error(f"key {item.get('id')!r} expired on {when.isoformat()}", (*path, "expires"),
                               code="invariant.expired-key", hint="extend `expires`, or remove the key to revoke it")


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _defined(what: str, index: Mapping[str, Any]) -> str | None:
    if not index:
        return f"no {what}s are defined"
    names = sorted(index)
    more = f", … ({len(names)} in all)" if len(names) > 8 else ""
    return f"defined {what}s: {', '.join(names[:8])}{more}"


@dataclass
class CheckResult:
    diagnostics: list[Diagnostic]
    pools: dict[str, ResolvedPool]
    graph: nx.DiGraph


def check_references(doc: LoadedDocument, *, backends: Mapping[str, SettingsValidator] | None = None,
                     now: dt.datetime | None = None) -> CheckResult:
    """Run every reference and invariant check; see the module docstring."""
    checker = _Checker(doc, backends, now or dt.datetime.now(dt.UTC))
    checker.index_ids()
    checker.check_tenant_refs()
    resolved = checker.resolve_pools()
    checker.check_pools(resolved)
    checker.check_projects(resolved)
    checker.check_keys(resolved)
    checker.diags.sort(key=lambda d: (d.line, d.col))
    return CheckResult(checker.diags, resolved, checker.graph)
