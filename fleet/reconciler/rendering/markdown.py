"""The Markdown view of a Plan, for a pull-request comment.

Summary first, then consequences called out (a GitHub alert), a capacity table, then the changes in collapsible
<details> sections grouped by tenant and, inside a tenant, under a heading per pool (the pool's own change), per
project (the project and its routing: a route change is the project's, not a pool's), then the enrollment keys and
the declared host states, then drift. Never longer than GitHub's 65,536-character comment limit: when it would be, later
sections are cut and a note points at the full JSON plan. Pure; called by `fleet plan --format markdown` and
`fleet ci comment`.
"""

from __future__ import annotations

from collections import defaultdict

from fleet import __version__
from fleet.reconciler.plan import Change, Plan
from fleet.reconciler.rendering.values import (
    NO_CHANGES,
    VERBS,
    attribute_lines,
    literal,
    no_changes_detail,
    slots,
)

GITHUB_COMMENT_LIMIT = 65_536
_RESERVE = 600  # room for the truncation note and the footer


#: the order of the headings inside a tenant: the tenant itself, its pools, its projects (with their routing), its
#: enrollment keys, then hosts' declared states
_RANK = {"": 0, "pool": 1, "project": 2, "keys": 3, "hosts": 4}


def _group(change: Change) -> tuple[str, tuple[int, str]]:
    """(tenant, heading) a change is shown under; ('(org)', …) for org-wide changes. A pool's change is under that
    pool, a project's and its route's under the project (a route is the project's routing, whichever pools it
    names), keys together (a key may span pools), declared host states together."""
    tenant = change.tenant or "(org)"
    if change.kind == "pool":
        return tenant, (_RANK["pool"], f"pool `{change.id}`")
    if change.kind in ("project", "route"):
        return tenant, (_RANK["project"], f"project `{change.id}`")
    if change.kind == "key":
        return tenant, (_RANK["keys"], "enrollment keys")
    if change.kind == "host":
        return tenant, (_RANK["hosts"], "hosts")
    return tenant, (_RANK[""], "tenant" if change.kind == "tenant" else "org")


def _counts(changes: list[Change]) -> str:
    n: defaultdict[str, int] = defaultdict(int)
    for c in changes:
        n[c.action] += 1
    words = {"create": "to add", "update": "to change", "replace": "to replace", "delete": "to destroy"}
    return ", ".join(f"{n[a]} {words[a]}" for a in ("create", "update", "replace", "delete") if n[a])


def _change_block(c: Change) -> str:
    """A ```diff block body; an updated attribute is a `-` old line and a `+` new line, so GitHub colours both."""
    lines = [f"{c.symbol} {c.address}  # {VERBS[c.action]}"]
    if c.action in ("create", "delete"):
        lines += [f"{s}   {text}" for s, text in attribute_lines(c)]
        return "\n".join(lines)
    width = max((len(a.path) for a in c.attributes), default=0)
    for a in c.attributes:
        note = "  # forces replacement" if a.forces_replacement else ""
        if a.before is not None:
            lines.append(f"-   {a.path.ljust(width)} = {literal(a.before)}{note if a.after is None else ''}")
        if a.after is not None:
            lines.append(f"+   {a.path.ljust(width)} = {literal(a.after)}{note}")
    return "\n".join(lines)


def render_markdown(plan: Plan, *, limit: int = GITHUB_COMMENT_LIMIT, reserved: int = 0) -> str:
    """The Markdown view, at most `limit - reserved` characters long: `reserved` is what the caller puts around it
    in the same comment (`fleet ci comment`: a hidden marker and a trailer); a truncation note names `limit`."""
    head: list[str] = ["## fleet plan", ""]
    if plan.refresh_only:
        head.append(f"**Refresh only: {len(plan.drift)} drift item(s).**" if plan.drift else "**No drift.**")
    elif plan.no_op:
        head.append(f"**{NO_CHANGES}** {no_changes_detail(plan, 'below')}")
    else:
        head.append(f"**{plan.summary.line}**")
    head.append("")
    for e in plan.errors:
        head += [f"> [!NOTE]\n> {e}", ""]

    cons = plan.consequences
    if cons.items:
        head.append("> [!WARNING]")
        head.append("> **Consequences for dispatch**")
        head += [f"> - {i.message}" for i in cons.items]
        head.append("")
    if cons.capacity_changes:
        head += ["| Project | Tenant | Slots before | Slots after |", "|---|---|--:|--:|"]
        head += [f"| `{c.project}` | {c.tenant} | {slots(c.before)} | {slots(c.after)} |" for c in cons.capacity_changes]
        head.append("")

    sections: list[str] = []
    by_tenant: dict[str, dict[tuple[int, str], list[Change]]] = defaultdict(lambda: defaultdict(list))
    for c in plan.changes:
        tenant, heading = _group(c)
        by_tenant[tenant][heading].append(c)
    if by_tenant:
        sections.append("### Changes\n")
    for tenant in sorted(by_tenant):
        pools = by_tenant[tenant]
        all_changes = [c for cs in pools.values() for c in cs]
        parts = [f"<details><summary><b>{'tenant ' + tenant if tenant != '(org)' else 'org'}</b>: {_counts(all_changes)}</summary>\n"]
        for heading in sorted(pools):
            blocks = "\n\n".join(_change_block(c) for c in pools[heading])
            parts.append(f"#### {heading[1]}\n\n```diff\n{blocks}\n```\n")
        parts.append("</details>\n")
        sections.append("\n".join(parts))
    if plan.drift:
        drift = ["### Drift", "", "The live fleet differs from the applied state (not part of this plan):", ""]
        drift += [f"- `{d.address}`: {d.message}" for d in plan.drift]
        sections.append("\n".join(drift) + "\n")

    b = plan.basis
    footer = (f"<sub>fleet {b.tool_version or __version__} · plan format {plan.format_version} · "
              f"config {(b.config_hash or 'n/a')[:19]} · applied revision {b.applied_revision}</sub>\n")
    text = "\n".join(head)
    budget = limit - reserved - _RESERVE - len(footer)
    if len(text) > budget:  # even the head is too long: cut it line by line
        text = text[:budget].rsplit("\n", 1)[0] + "\n"
        sections = []
        cut = True
    else:
        cut = False
    shown = 0
    for section in sections:
        if len(text) + len(section) + 1 > budget:
            cut = True
            break
        text += "\n" + section
        shown += 1
    if cut:
        omitted = len(sections) - shown
        text += (f"\n> [!NOTE]\n> Truncated to fit GitHub's {limit:,}-character comment limit"
                 + (f" ({omitted} section(s) omitted)" if omitted else "")
                 + ". The full plan: `fleet plan --format json` (or the saved `plan.json` artifact).\n")
    return text + "\n" + footer
