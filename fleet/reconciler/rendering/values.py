"""Value formatting shared by the text renderers: HCL-like literals, attribute lines of a change, and the
wording of a plan without changes.

Called by fleet.reconciler.rendering.human and .markdown.
"""

from __future__ import annotations

import json
from typing import Any

from fleet.reconciler.desired import SENSITIVE, UNKNOWN, field_order
from fleet.reconciler.plan import Change, Plan

NO_CHANGES = "No changes."


def no_changes_detail(plan: Plan, drift_shown: str) -> str:
    """What follows "No changes." in a plan without changes; `drift_shown` says where the drift is listed
    ("above", "below"). Drift is not a change of this plan, so with drift the live fleet does not match."""
    if plan.drift:
        return (f"fleet.yaml matches the applied state, but the live fleet has drifted from it "
                f"(see Drift {drift_shown}).")
    return "The live fleet matches fleet.yaml."


def literal(value: Any) -> str:
    """`"text"`, `4`, `true`, `null`, `["a", "b"]`, `{ k = v }`; masked markers stay bare."""
    if value in (SENSITIVE, UNKNOWN):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{k} = {literal(v)}" for k, v in value.items()) + " }"
    return json.dumps(value, default=str)


def _flat(spec: dict[str, Any] | None, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in (spec or {}).items():
        if isinstance(value, dict) and value and key != "settings":
            out += _flat(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _ordered(kind: str, spec: dict[str, Any] | None) -> dict[str, Any]:
    order = field_order(kind)
    rank = {name: i for i, name in enumerate(order)}
    return dict(sorted((spec or {}).items(), key=lambda kv: (rank.get(kv[0], len(order)), kv[0])))


def attribute_lines(change: Change) -> list[tuple[str, str]]:
    """(symbol, text) per attribute line of a change, Terraform style; nulls are left out of creates/deletes."""
    lines: list[tuple[str, str]] = []
    if change.action == "create":
        rows = [(k, v) for k, v in _flat(_ordered(change.kind, change.after)) if v is not None and v != [] and v != {}]
        width = max((len(k) for k, _ in rows), default=0)
        lines = [("+", f"{k.ljust(width)} = {literal(v)}") for k, v in rows]
    elif change.action == "delete":
        rows = [(k, v) for k, v in _flat(_ordered(change.kind, change.before)) if v is not None and v != [] and v != {}]
        width = max((len(k) for k, _ in rows), default=0)
        lines = [("-", f"{k.ljust(width)} = {literal(v)} -> null") for k, v in rows]
    else:
        width = max((len(a.path) for a in change.attributes), default=0)
        for a in change.attributes:
            note = " # forces replacement" if a.forces_replacement else ""
            if a.before is None:
                lines.append(("+", f"{a.path.ljust(width)} = {literal(a.after)}{note}"))
            elif a.after is None:
                lines.append(("-", f"{a.path.ljust(width)} = {literal(a.before)} -> null{note}"))
            else:
                lines.append(("~", f"{a.path.ljust(width)} = {literal(a.before)} -> {literal(a.after)}{note}"))
    return lines


VERBS = {"create": "will be created", "update": "will be updated in-place", "replace": "must be replaced",
         "delete": "will be destroyed"}


def slots(value: int | None) -> str:
    return "∞" if value is None else str(value)
