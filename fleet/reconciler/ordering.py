"""Ordering of changes with a networkx DAG: parents created first, deleted last.

A change that creates or updates X waits for the creation of everything X's new spec references (tenant before
project before pool before route/key). A delete of X waits for every change whose old spec referenced X (a pool
still referenced by a route is deleted only after the route stops referencing it). Ties break by kind then
address, so the order is stable. `batches()` gives the topological generations that apply can run
concurrently. Pure; called by fleet.reconciler.diff and the apply edge.
"""

from __future__ import annotations

import networkx as nx

from fleet.reconciler.desired import KIND_ORDER, references
from fleet.reconciler.plan import Change


def _rank(change: Change) -> tuple:
    kind = KIND_ORDER.index(change.kind) if change.kind in KIND_ORDER else len(KIND_ORDER)
    if change.action == "delete":
        return (1, -kind, change.address)
    return (0, kind, change.address)


def dependency_graph(changes: list[Change]) -> nx.DiGraph:
    """Edges u -> v mean u must be applied before v."""
    graph: nx.DiGraph[str] = nx.DiGraph()
    by_address = {c.address: c for c in changes}
    for c in changes:
        graph.add_node(c.address)
    for c in changes:
        if c.action in ("create", "update", "replace"):
            for ref in references(c.kind, c.id, c.after):
                dep = by_address.get(ref)
                if dep is not None and dep.action in ("create", "replace") and dep.address != c.address:
                    graph.add_edge(dep.address, c.address)
        if c.action in ("delete", "update", "replace"):
            for ref in references(c.kind, c.id, c.before):
                dep = by_address.get(ref)
                if dep is not None and dep.action == "delete" and dep.address != c.address:
                    graph.add_edge(c.address, dep.address)
    return graph


def order_changes(changes: list[Change]) -> list[Change]:
    """Changes in a valid apply order (stable)."""
    by_address = {c.address: c for c in changes}
    graph = dependency_graph(changes)
    try:
        order = list(nx.lexicographical_topological_sort(graph, key=lambda a: _rank(by_address[a])))
    except nx.NetworkXUnfeasible:  # cannot happen with well-formed specs; fall back to kind order
        order = sorted(by_address, key=lambda a: _rank(by_address[a]))
    return [by_address[a] for a in order]


def batches(changes: list[Change]) -> list[list[Change]]:
    """Groups of changes that may be applied concurrently, in order."""
    by_address = {c.address: c for c in changes}
    graph = dependency_graph(changes)
    try:
        gens = list(nx.topological_generations(graph))
    except nx.NetworkXUnfeasible:
        return [[c] for c in order_changes(changes)]
    return [sorted((by_address[a] for a in gen), key=_rank) for gen in gens]
