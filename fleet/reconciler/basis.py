"""The basis of a plan (what it was computed against) and the check that it has not moved.

`moved(plan_basis, current_resources, current_revision, config_hash)` lists, in words, everything that changed
since a saved plan was made: resources added, changed or removed in the applied state, and a config file that
differs. Pure; called by `fleet apply plan.json` before any write.
"""

from __future__ import annotations

from collections.abc import Mapping

from fleet.reconciler.plan import Basis


def moved(basis: Basis, current: Mapping[str, int], revision: int, config_hash: str | None = None) -> list[str]:
    """Human-readable differences between a plan's basis and the store now; empty when nothing moved."""
    out: list[str] = []
    planned = basis.applied_resources
    for address in sorted(current.keys() - planned.keys()):
        out.append(f"{address} was created (revision {current[address]})")
    for address in sorted(planned.keys() - current.keys()):
        out.append(f"{address} was deleted")
    for address in sorted(planned.keys() & current.keys()):
        if planned[address] != current[address]:
            out.append(f"{address} changed (revision {planned[address]} -> {current[address]})")
    if not out and revision != basis.applied_revision:
        out.append(f"the applied state moved from revision {basis.applied_revision} to {revision}")
    if config_hash is not None and basis.config_hash and config_hash != basis.config_hash:
        out.append(f"{basis.config_file or 'fleet.yaml'} changed since the plan was made")
    return out
