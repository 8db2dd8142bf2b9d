"""The pure diff: `diff(desired, live) -> list[Change]`, and `make_plan` that adds ordering, drift and consequences.

Create `+` for addresses only desired, delete `-` for addresses only applied, update `~` with attribute-level
before/after, replace `-/+` when an attribute that cannot change in place changes (a pool's tenant or backend).
Sensitive attributes are masked here, before anything reaches a Plan. No I/O, no asyncio: table-driven tests
call it with hand-built state; fleet plan calls it with gathered state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fleet.reconciler.consequences import consequences
from fleet.reconciler.desired import (
    FORCES_REPLACEMENT,
    SENSITIVE,
    SENSITIVE_ATTRS,
    UNKNOWN,
    Resource,
    tenant_of,
)
from fleet.reconciler.drift import drift
from fleet.reconciler.live import AppliedResource, LiveState
from fleet.reconciler.ordering import order_changes
from fleet.reconciler.plan import AttributeChange, Basis, Change, Plan


def _flatten(spec: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in spec.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "settings":
            out.update(_flatten(value, path + "."))
        elif isinstance(value, dict) and key == "settings":
            out.update(_flatten(value, path + ".") if value else {path: {}})
        else:
            out[path] = value
    return out


def mask(spec: Mapping[str, Any] | None, *, unknown_ok: bool = True) -> dict[str, Any] | None:
    """A copy of a spec with sensitive attributes masked ((sensitive), or (known after apply) when unset)."""
    if spec is None:
        return None
    out = dict(spec)
    for attr in SENSITIVE_ATTRS & out.keys():
        out[attr] = SENSITIVE if out[attr] else (UNKNOWN if unknown_ok else None)
    return out


def _effective(desired: Resource, applied: AppliedResource | None) -> dict[str, Any]:
    """The desired spec, keeping applied values the file cannot know (a generated key's secret)."""
    spec = dict(desired.spec)
    if applied is not None:
        for attr in SENSITIVE_ATTRS & spec.keys():
            if spec[attr] is None:
                spec[attr] = applied.spec.get(attr)
    return spec


def attribute_changes(kind: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> list[AttributeChange]:
    fb, fa = _flatten(before), _flatten(after)
    out = []
    for path in sorted(fb.keys() | fa.keys()):
        b, a = fb.get(path), fa.get(path)
        if b == a:
            continue
        top = path.split(".", 1)[0]
        sensitive = top in SENSITIVE_ATTRS
        out.append(
            AttributeChange(
                path=path,
                before=SENSITIVE if sensitive and b is not None else b,
                after=(SENSITIVE if a is not None else UNKNOWN) if sensitive else a,
                sensitive=sensitive,
                forces_replacement=top in FORCES_REPLACEMENT.get(kind, set()),
            )
        )
    return out


def diff(desired: Mapping[str, Resource], live: LiveState) -> list[Change]:
    """Unordered changes that turn the applied state into the desired state."""
    changes: list[Change] = []
    applied = live.applied
    for address in sorted(desired.keys() | applied.keys()):
        want, have = desired.get(address), applied.get(address)
        if want is not None and have is None:
            changes.append(Change(address=address, kind=want.kind, id=want.id, action="create", after=mask(want.spec),
                                  tenant=tenant_of(want.kind, want.id, want.spec), reason="declared in fleet.yaml, not applied yet"))
        elif want is None and have is not None:
            changes.append(Change(address=address, kind=have.kind, id=have.id, action="delete", before=mask(have.spec),
                                  tenant=tenant_of(have.kind, have.id, have.spec), base_revision=have.revision,
                                  reason="no longer in fleet.yaml"))
        elif want is not None and have is not None:
            spec = _effective(want, have)
            attrs = attribute_changes(want.kind, have.spec, spec)
            if not attrs:
                continue
            replace = any(a.forces_replacement for a in attrs)
            reason = ("cannot change " + ", ".join(a.path for a in attrs if a.forces_replacement) + " in place") if replace \
                else "changed in fleet.yaml: " + ", ".join(a.path for a in attrs)
            changes.append(Change(address=address, kind=want.kind, id=want.id, action="replace" if replace else "update",
                                  before=mask(have.spec), after=mask(spec), attributes=tuple(attrs),
                                  tenant=tenant_of(want.kind, want.id, spec), base_revision=have.revision, reason=reason))
    return changes


def make_plan(desired: Mapping[str, Resource], live: LiveState, basis: Basis, *, refresh_only: bool = False,
              errors: tuple[str, ...] = ()) -> Plan:
    """The whole plan: ordered changes (none when refresh_only), drift and consequences."""
    changes = [] if refresh_only else order_changes(diff(desired, live))
    return Plan(
        refresh_only=refresh_only,
        basis=basis,
        changes=tuple(changes),
        drift=tuple(drift(live)),
        consequences=consequences(desired, live, changes),
        errors=errors,
    )
