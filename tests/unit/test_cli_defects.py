"""Defects of the CLI found by trying it as a new user would (issue 15), each held by a test that failed before its fix.

Pure or in-process: how an error of several lines is printed (the "did not converge" list, no literal `\\n`), how a
session killed by a signal is shown (the signal's name, not `exit -15`), the JSON of hosts and sessions (times in
ISO 8601 with a zone, capacity keys in snake_case like fleet.yaml's), `--format json` accepted wherever `--json`
is, the Markdown plan's headings (a route change under its project, not under a pool), a hybrid pool's waiting
reason (says hybrid), and the interrupted-command hints (an apply's hint only on an apply).
"""

from __future__ import annotations

import json
import re
from typing import Any

import click
import pytest

from fleet.bus.messages import PhaseEvent, SessionView
from fleet.cli.inventory_cmds import host_json, render_show
from fleet.cli.main import cli
from fleet.cli.session_cmds import render_show as render_session
from fleet.cli.session_cmds import session_json, summary
from fleet.errors import NotConverged
from fleet.reconciler.desired import desired_resources
from fleet.reconciler.diff import make_plan
from fleet.reconciler.rendering import render_markdown
from fleet.scheduler import probe
from fleet.scheduler.model import Route, Snapshot
from fleet.schema.models import Pool

from .reconciler_fixtures import BASIS, edited_config, hashes, live
from .test_host_rows import host

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def session(**kw: Any) -> SessionView:
    base: dict[str, Any] = {"id": "01a2503fbb5297248cdc", "tenant": "fin-prod", "project": "app",
                            "command": ["sleep", "30"], "phase": "cancelled", "host": "h", "hostname": "w1",
                            "pool": "pool-a", "exit_code": -15, "reason": "cancelled", "submitted_at": 1_700_000_000.5,
                            "started_at": 1_700_000_001.25, "finished_at": 1_700_000_002.0,
                            "history": [PhaseEvent(phase="queued", at=1_700_000_000.5, attempt=1)]}
    return SessionView(**{**base, **kw})


# ------------------------------------------------------------------------------------------- errors of several lines


def test_an_error_of_several_lines_is_printed_as_lines_not_with_a_literal_backslash_n(capsys: pytest.CaptureFixture) -> None:
    """The "did not converge" error lists the hosts one per line (it printed `…within 1s:\\n  - a1: …` before).
    The message as fleet.reconciler.operation.wait_for_convergence makes it; tests/integration/test_cli_defects.py
    makes a real one."""
    from fleet.cli.main import echo_error

    exc = NotConverged("applied, but 2 host change(s) did not converge within 1s:\n  - a1: active, fleet.yaml says "
                       "paused\n  - a2: 4 slots, pool-local-main wants 6", hint="check those hosts with `fleet show ID`")
    echo_error(exc.message, exc.hint)
    err = capsys.readouterr().err
    assert "\\n" not in err
    assert err.splitlines() == [
        "error: applied, but 2 host change(s) did not converge within 1s:",
        "  - a1: active, fleet.yaml says paused",
        "  - a2: 4 slots, pool-local-main wants 6",
        "hint: check those hosts with `fleet show ID`",
    ]


def test_a_newline_a_user_typed_stays_escaped_in_an_error() -> None:
    """Only a list of the form `:\\n  - item` is printed on several lines; any other newline stays `\\n`."""
    from fleet.cli.main import error_lines

    assert error_lines("no project 'a\nerror: forged' in fleet.yaml") == ["no project 'a\\nerror: forged' in fleet.yaml"]
    assert error_lines("refused:\n  - one\n  - two\x1b[2J") == ["refused:", "  - one", "  - two\\x1b[2J"]
    assert error_lines("x:\n  - a\nerror: forged") == ["x:\\n  - a\\nerror: forged"]


# ------------------------------------------------------------------------------------------- sessions


def test_a_session_killed_by_a_signal_is_shown_with_the_signals_name() -> None:
    s = session()
    assert "exit -15" not in summary(s) and "(SIGTERM)" in summary(s)
    assert summary(s).startswith("session 01a2503fbb5297248cdc cancelled (SIGTERM) on w1")
    shown = render_session(s)
    assert "exit -15" not in shown
    assert re.search(r"^Status: +cancelled \(SIGTERM\)$", shown, re.M), shown
    assert "(SIGKILL)" in summary(session(exit_code=-9, phase="failed"))
    assert "(exit 3)" in summary(session(exit_code=3, phase="failed"))
    assert "(signal 200)" in summary(session(exit_code=-200, phase="failed"))  # not a signal this system names


def test_session_json_times_are_iso_8601_with_a_zone() -> None:
    data = session_json(session())
    for key in ("submitted_at", "started_at", "finished_at"):
        assert isinstance(data[key], str) and ISO.match(data[key]), (key, data[key])
    assert data["submitted_at"] == "2023-11-14T22:13:20.500Z"
    assert all(ISO.match(ev["at"]) for ev in data["history"]), data["history"]
    assert not {"submitted", "started", "finished"} & set(data)  # one name per fact
    assert session_json(session(started_at=None, finished_at=None))["finished_at"] is None
    json.dumps(data)


# ------------------------------------------------------------------------------------------- hosts


def test_host_json_capacity_keys_are_snake_case_like_agent_status_and_fleet_yaml() -> None:
    data = host_json(host(), now=1_700_000_010.0)
    assert data["capacity"] == {"max_concurrent_sessions": 4, "pool_max_disk_gb": 50.5}
    camel = [k for k in _keys(data) if re.search(r"[a-z][A-Z]", k)]
    assert camel == [], camel
    for key in ("last_seen", "started_at", "enrolled_at"):
        assert ISO.match(data[key]), (key, data[key])
    assert "max_concurrent_sessions=4" in render_show(data)


def _keys(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [k for k, v in value.items() for k in [k, *_keys(v)]]
    if isinstance(value, list):
        return [k for v in value for k in _keys(v)]
    return []


# ------------------------------------------------------------------------------------------- --json and --format json


def _leaves(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    ctx = click.Context(group)
    out = []
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None
        if getattr(cmd, "hidden", False):
            continue
        if isinstance(cmd, click.Group):
            out += _leaves(cmd, (*path, name))
        else:
            out.append(((*path, name), cmd))
    return out


def test_every_command_that_takes_json_also_takes_format_json() -> None:
    """`--json` and `--format json` go together everywhere (route test and route show took only --json once)."""
    missing = []
    for path, cmd in _leaves(cli):
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        if "--json" in opts and "--format" not in opts:
            missing.append(" ".join(path))
        if "--format" in opts:
            fmt = next(p for p in cmd.params if "--format" in getattr(p, "opts", []))
            assert "json" in fmt.type.choices, path  # type: ignore[attr-defined]
    # the agent's local commands print the agent's own status; they take --json only (no table to choose from)
    assert sorted(missing) == ["agent drain", "agent pause", "agent resume", "agent status"], missing
    for path in (("route", "show"), ("route", "test"), ("route", "list"), ("sessions", "logs")):
        cmd = dict(_leaves(cli))[path]
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        assert {"--json", "--format"} <= opts, path


# ------------------------------------------------------------------------------------------- the Markdown plan


def test_the_markdown_plan_files_a_route_change_under_its_project_not_under_a_pool() -> None:
    cfg = edited_config(("      fallback_pool: pool-cloud-e2b\n", ""),
                        ("      mode: preferred-with-fallback\n      preferred_pool: pool-local-main\n",
                         "      mode: preferred-only\n      preferred_pool: pool-local-main\n"),
                        ("max_concurrent_sessions: 4   # slots per host", "max_concurrent_sessions: 6"))
    text = render_markdown(make_plan(desired_resources(cfg, hashes(cfg)), live(), BASIS))
    sections = {m.group(1): m.group(2) for m in re.finditer(r"^#### (.+?)\n\n```diff\n(.*?)\n```", text, re.M | re.S)}
    assert set(sections) == {"pool `pool-local-main`", "project `my-fintech-app`"}, text
    assert "route.my-fintech-app" in sections["project `my-fintech-app`"]
    assert "route." not in sections["pool `pool-local-main`"]
    assert "pool.pool-local-main" in sections["pool `pool-local-main`"]


# ------------------------------------------------------------------------------------------- waiting reasons


def test_a_hybrid_pools_waiting_reason_says_hybrid_not_on_demand() -> None:
    """(Fixed on main before this branch; kept.) A hybrid pool with no host waits for its backend as a hybrid pool."""
    spec = {"tenant": "t", "backend": "kubernetes", "mode": "hybrid", "hosts": {"min": 1, "max": 20},
            "capacity": {"max_concurrent_sessions": 4}, "labels": [], "models": []}
    route = Route.of("p", {"tenant": "t", "mode": "preferred-only", "preferred_pool": "k8s", "fallback_pool": None,
                           "candidates": [], "required_labels": [], "model": None})
    decision = probe(Snapshot.build([], {"k8s": Pool.from_spec("k8s", spec)}, {"p": route}), "p")
    assert decision.reason is not None
    assert "hybrid" in decision.reason.message and "on demand" not in decision.reason.message, decision.reason.message


# ------------------------------------------------------------------------------------------- interrupted


def test_only_an_apply_says_that_an_apply_released_its_lock_when_interrupted() -> None:
    """`run_async` takes what to say when interrupted; the apply's words are the apply's (they were every command's)."""
    import asyncio
    import os
    import signal

    from fleet.cli.shared import run_async
    from fleet.errors import Interrupted

    async def body() -> None:  # Ctrl-C while the command waits (run_async's handler is installed by now)
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(30)

    with pytest.raises(Interrupted) as caught:
        run_async(body)
    assert "apply" not in (caught.value.hint or "") and "apply" not in caught.value.message
    with pytest.raises(Interrupted) as caught:
        run_async(body, interrupted=lambda: ("stopped following session X; it keeps running",
                                             "follow it again: `fleet sessions logs X --follow`"))
    assert caught.value.message == "interrupted by SIGINT: stopped following session X; it keeps running"
    assert caught.value.hint == "follow it again: `fleet sessions logs X --follow`"
