"""The human view of a Plan: Terraform-like blocks per resource, consequences, drift, and the summary line.

Colours only when asked (the CLI asks on a TTY). `render_summary` gives one line per resource for large plans.
Pure; called by `fleet plan` and `fleet apply`.
"""

from __future__ import annotations

from fleet.reconciler.plan import Plan
from fleet.reconciler.rendering.values import NO_CHANGES, VERBS, attribute_lines, no_changes_detail, slots

_COLORS = {"+": "32", "~": "33", "-": "31", "-/+": "35", "!": "33", "bold": "1", "dim": "2"}


class _Style:
    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, key: str) -> str:
        if not self.color:
            return text
        return f"\x1b[{_COLORS[key]}m{text}\x1b[0m"


def _consequence_lines(plan: Plan, st: _Style) -> list[str]:
    cons = plan.consequences
    lines: list[str] = []
    changed = cons.capacity_changes
    if not changed and not cons.items:
        return lines
    lines.append(st("Consequences for dispatch:", "bold"))
    if changed:
        width = max(len(c.project) for c in changed)
        for c in changed:
            lines.append(f"  {c.project.ljust(width)}  slots {slots(c.before)} → {slots(c.after)}  ({c.tenant})")
    for item in cons.items:
        lines.append(f"  {st('!', '!')} {item.message}")
    lines.append("")
    return lines


def _drift_lines(plan: Plan, st: _Style) -> list[str]:
    if not plan.drift:
        return []
    lines = [st("Drift: the live fleet differs from the applied state (not part of this plan):", "bold")]
    lines += [f"  {st('!', '!')} {d.message}" for d in plan.drift]
    lines.append("")
    return lines


def render_human(plan: Plan, *, color: bool = False) -> str:
    st = _Style(color)
    out: list[str] = [f"warning: {e}" for e in plan.errors]
    if plan.errors:
        out.append("")
    if plan.refresh_only:
        out += _drift_lines(plan, st)
        out.append("No drift: the live fleet matches the applied state." if not plan.drift
                   else f"Drift: {len(plan.drift)} difference(s) between the live fleet and the applied state.")
        return "\n".join(out) + "\n"
    if not plan.changes:
        out += _drift_lines(plan, st)
        out.append(st(NO_CHANGES, "bold") + " " + no_changes_detail(plan, "above"))
        return "\n".join(out) + "\n"
    out.append("fleet will perform the following actions:")
    out.append("")
    for c in plan.changes:
        sym = c.symbol
        out.append(st(f"  # {c.address} {VERBS[c.action]}", "bold") + (f" ({c.reason})" if c.action == "replace" else ""))
        out.append(f"{st(sym.rjust(3), sym)} {c.kind} \"{c.id}\" {{")
        for s, text in attribute_lines(c):
            out.append(f"      {st(s, s)} {text}")
        out.append("    }")
        out.append("")
    out += _consequence_lines(plan, st)
    out += _drift_lines(plan, st)
    out.append(st(plan.summary.line, "bold"))
    return "\n".join(out) + "\n"


def render_summary(plan: Plan, *, color: bool = False) -> str:
    """One line per resource (for large plans), then consequences, drift and the summary line."""
    st = _Style(color)
    out: list[str] = [f"warning: {e}" for e in plan.errors]
    for c in plan.changes:
        detail = ""
        if c.action in ("update", "replace"):
            detail = "  (" + ", ".join(a.path for a in c.attributes) + ")"
        out.append(f"{st(c.symbol.rjust(3), c.symbol)} {c.address}{detail}")
    if plan.changes:
        out.append("")
    out += _consequence_lines(plan, st)
    out += _drift_lines(plan, st)
    out.append(st(plan.summary.line, "bold") if plan.changes else f"{NO_CHANGES} {no_changes_detail(plan, 'above')}")
    return "\n".join(out) + "\n"
