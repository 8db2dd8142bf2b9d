"""The JSON view of a Plan: the stable, versioned format tools read (documented in docs/plan-format.md).

Top-level keys: format_version, no_op, summary {add, change, destroy}, refresh_only, basis, changes[],
drift[], consequences {capacity[], items[]}, errors[]. The same text is what `fleet plan --out` saves. Pure.
"""

from __future__ import annotations

from fleet.reconciler.plan import Plan


def render_json(plan: Plan) -> str:
    return plan.to_json(indent=2) + "\n"
