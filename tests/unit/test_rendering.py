"""Golden-file tests of the three plan renderers (human, JSON, Markdown), and their invariants.

Regenerate the golden files after an intended change with: UPDATE_GOLDEN=1 pytest tests/unit/test_rendering.py
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from fleet.reconciler.desired import SENSITIVE, UNKNOWN, desired_resources
from fleet.reconciler.diff import make_plan
from fleet.reconciler.live import LiveState, ObservedHost
from fleet.reconciler.plan import Plan
from fleet.reconciler.rendering import (
    GITHUB_COMMENT_LIMIT,
    render_human,
    render_json,
    render_markdown,
    render_summary,
)

from .reconciler_fixtures import BASIS, HASH, HOSTS, edited_config, example_config, hashes, live

GOLDEN = Path(__file__).resolve().parents[1] / "golden"

EDITS = (
    ("      fallback_pool: pool-cloud-e2b\n", ""),  # my-fintech-app loses its fallback ...
    ("      mode: preferred-with-fallback\n      preferred_pool: pool-local-main\n",
     "      mode: preferred-only\n      preferred_pool: pool-local-main\n"),
    ("max_concurrent_sessions: 4   # slots per host", "max_concurrent_sessions: 6"),  # capacity change
    ("  - id: health-gpu\n", "  - id: health-gpu-v2\n"),  # key renamed: delete + create; hosts locked out
    ("    pools: [pool-local-main]\n    models: [claude-3-5-sonnet, claude-3-5-haiku]\n",
     "    pools: [pool-local-main]\n    models: [claude-3-5-sonnet]\n"),
)


def scenario_plan() -> Plan:
    cfg = edited_config(*EDITS)
    return make_plan(desired_resources(cfg, hashes(cfg) | {"health-gpu-v2": None}), live(), BASIS)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"missing golden file {path}: run with UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from its golden file"


def test_human_golden():
    check_golden("plan_human.txt", render_human(scenario_plan()))


def test_summary_golden():
    check_golden("plan_summary.txt", render_summary(scenario_plan()))


def test_markdown_golden():
    check_golden("plan_markdown.md", render_markdown(scenario_plan()))


def test_json_golden_and_roundtrip():
    plan = scenario_plan()
    text = render_json(plan)
    check_golden("plan.json", text)
    data = json.loads(text)
    assert data["format_version"] == 1 and data["no_op"] is False
    assert data["summary"] == {"add": 1, "change": 3, "destroy": 1}
    again = Plan.from_json(text)
    assert again == plan


# every pool's hosts.min met by hosts that serve it as applied: nothing has drifted
K8S_HOST = ObservedHost(machine_id="dd00ee11-2222-4333-8444-555566667777", hostname="batch-01", tenant="fin-prod",
                        key_id="ci-runners", pools=("pool-k8s-batch",), labels=("batch", "region=eu-west"),
                        models=("claude-3-5-haiku",), running=0, max_sessions=4)
IN_STEP = HOSTS[:3] + (K8S_HOST,)
DRIFTED = "No changes. fleet.yaml matches the applied state, but the live fleet has drifted from it (see Drift {})."


@pytest.mark.parametrize("hosts,render,line", [
    (IN_STEP, render_human, "No changes. The live fleet matches fleet.yaml."),
    (IN_STEP, render_summary, "No changes. The live fleet matches fleet.yaml."),
    (IN_STEP, render_markdown, "**No changes.** The live fleet matches fleet.yaml."),
    # drift is not a change of the plan, but the fleet does not match either: never claim it does
    (HOSTS, render_human, DRIFTED.format("above")),
    (HOSTS, render_summary, DRIFTED.format("above")),
    (HOSTS, render_markdown, DRIFTED.format("below").replace("No changes.", "**No changes.**", 1)),
], ids=["human", "summary", "markdown", "human-drift", "summary-drift", "markdown-drift"])
def test_no_changes_views(hosts, render, line):
    cfg = example_config()
    plan = make_plan(desired_resources(cfg, hashes(cfg)), live(hosts=hosts), BASIS)
    assert plan.no_op and bool(plan.drift) == (hosts is HOSTS)
    text = render(plan)
    assert line in text.splitlines()
    data = json.loads(render_json(plan))
    assert (data["no_op"], len(data["drift"])) == (True, len(plan.drift))


def test_colours_only_when_asked():
    plan = scenario_plan()
    assert "\x1b[" not in render_human(plan)
    coloured = render_human(plan, color=True)
    # the scenario creates, updates and destroys: each action's marker in its own colour
    for marker in ("\x1b[32m  +\x1b[0m key", "\x1b[33m  ~\x1b[0m pool", "\x1b[31m  -\x1b[0m key"):
        assert marker in coloured, repr(marker)


# `secret_digest = VALUE` (human, Markdown) or `"secret_digest": "VALUE"` (JSON); VALUE up to `"`, ` ->` or line end
SECRET_VALUE = re.compile(r'secret_digest"?(?: +=|:) +"?(.+?)(?:"|(?= ->)|$)', re.MULTILINE)


@pytest.mark.parametrize("render,shown", [
    # the scenario creates key health-gpu-v2 (digest not known yet) and destroys key health-gpu (digest applied)
    (render_human, {UNKNOWN, SENSITIVE}),
    (render_summary, set()),
    (render_json, {UNKNOWN, SENSITIVE}),
    (render_markdown, {UNKNOWN, SENSITIVE}),
])
def test_no_secret_in_any_view(render, shown):
    text = render(scenario_plan())
    assert HASH not in text
    values = SECRET_VALUE.findall(text)
    assert len(values) == text.count("secret_digest"), "every secret_digest in the view is followed by its value"
    assert set(values) == shown, "a secret digest is only ever shown masked"


def test_consequences_of_the_scenario():
    plan = scenario_plan()
    kinds = {(i.kind, i.subject) for i in plan.consequences.items}
    assert ("host-locked-out", "aa11bb22-cc33-dd44-ee55-ff6677889900") in kinds  # its key health-gpu is deleted
    cap = {c.project: (c.before, c.after) for c in plan.consequences.capacity}
    # live hosts' slots only: 2 hosts x 4 -> 2 hosts x 6, the e2b fallback (no host) was never slots
    assert cap["my-fintech-app"] == (8, 12)
    # gpu-01 (2 slots in the persistent docker pool) is locked out; the on_demand k8s fallback has no host (no slots),
    # but its backend can add some: the route loses its preferred pool's capacity, the project is not unroutable
    assert cap["clinical-notes"] == (2, 0)
    assert ("route-without-capacity", "route.clinical-notes") in kinds
    assert ("project-unroutable", "project.clinical-notes") not in kinds
    assert not any(i.subject.startswith("cc00dd11") for i in plan.consequences.items), "the key change did not touch it"
    human = render_human(plan)
    assert "slots 8 → 12" in human


def test_markdown_never_exceeds_github_limit():
    cfg = example_config()
    # a huge plan: 3,000 pools to create
    big = dict(desired_resources(cfg, hashes(cfg)))
    template = big["pool.pool-local-main"]
    for i in range(3000):
        res = template.model_copy(update={"id": f"pool-bulk-{i:05d}"})
        big[res.address] = res
    plan = make_plan(big, LiveState(), BASIS)
    text = render_markdown(plan)
    assert len(text) <= GITHUB_COMMENT_LIMIT
    assert "Truncated to fit GitHub's 65,536-character comment limit" in text
    assert "fleet plan --format json" in text
    assert text.startswith("## fleet plan\n\n**Plan: 3017 to add, 0 to change, 0 to destroy.**")
