"""The steps of examples/ci/github-actions.yml, run as the shell they are, against a real fleet (nats-server in
operator mode + `fleet server`, the live_fleet fixture) and a local fake of GitHub's comments API.

A pull request with a typo: the validate step prints an annotation at the typo's file:line:col. The fixed pull
request (a 10,000-host change): the plan step runs as the viewer, the saved plan (the artifact) holds no secret of
the fleet, the comment step leaves one comment of at most 65,536 characters, updated in place by the next push.
On merge: the apply step as the admin applies exactly the saved plan; after a concurrent change a saved plan is
refused as stale with what changed (and the next step says so on the pull request); the viewer's apply is refused.
The steps' scripts are read from the workflow file, so the test runs what a team copies; only `${{ … }}`
expressions are replaced, by the values GitHub would give (`Runner.expr`; an unknown expression fails the test).
Not run: "Find the reviewed plan" (it asks GitHub itself through `gh`) and the actions (checkout, upload and download
of the artifact): the test hands the apply step the plan.json the plan step saved.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from fleet.bus.applied import load_pepper
from fleet.bus.records import key_digest
from fleet.bus.trust import parse_creds
from fleet.errors import EXIT_STALE_PLAN

from ..conftest import fleet_yaml
from .ci_helpers import FakeForge

pytestmark = pytest.mark.integration

WORKFLOW = Path(__file__).resolve().parents[2] / "examples" / "ci" / "github-actions.yml"
TOKEN = "ghs_" + "W0rkfl0w" * 5
KEY_SECRET = secrets.token_hex(32)  # FLEET_KEY_CI
HOSTS = 10_000


class Runner:
    """Runs one step of the workflow as GitHub's runner does: `bash -e {script}`, in the checkout, with the job's and
    the step's env, `${{ … }}` resolved from `values`."""

    def __init__(self, workdir: Path, values: dict[str, str], env: dict[str, str]) -> None:
        self.workdir = workdir
        self.values = values
        self.env = env
        self.temp = workdir.parent / "runner-temp"
        self.temp.mkdir(exist_ok=True)
        self.workflow = YAML(typ="safe").load(WORKFLOW.read_text())

    def expr(self, text: str) -> str:
        def one(m: re.Match[str]) -> str:
            name = m.group(1).strip()
            assert name in self.values, f"the test does not know ${{{{ {name} }}}}"
            return self.values[name]

        return re.sub(r"\$\{\{(.*?)\}\}", one, text)

    def step(self, job: str, name: str) -> dict[str, Any]:
        steps = [s for s in self.workflow["jobs"][job]["steps"] if s.get("name", "").startswith(name)]
        assert len(steps) == 1, f"no step {name!r} in job {job}"
        return steps[0]

    def run(self, job: str, name: str, **extra: str) -> subprocess.CompletedProcess:
        step = self.step(job, name)
        summary = self.temp / "summary.md"
        output = self.temp / f"output-{len(list(self.temp.iterdir()))}"
        env = {**self.env, "RUNNER_TEMP": str(self.temp), "GITHUB_STEP_SUMMARY": str(summary),
               "GITHUB_OUTPUT": str(output), "GITHUB_WORKSPACE": str(self.workdir)}
        env.update({k: self.expr(str(v)) for k, v in self.workflow.get("env", {}).items()})
        env.update({k: self.expr(str(v)) for k, v in step.get("env", {}).items()})
        env.update(extra)
        script = self.temp / "step.sh"
        script.write_text(self.expr(step["run"]))
        r = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=self.workdir,
                           env=env, capture_output=True, text=True, timeout=300)
        r.outputs = dict(line.split("=", 1) for line in output.read_text().split("\n") if "=" in line) \
            if output.exists() else {}  # type: ignore[attr-defined]
        return r


def position(text: str, needle: str) -> tuple[int, int]:
    """1-based line and column of `needle` in `text`."""
    before = text[: text.index(needle)]
    return before.count("\n") + 1, len(before) - before.rfind("\n")


def declared_hosts(n: int) -> dict[str, str]:
    return {str(uuid.UUID(int=i + 1, version=4)): "paused" for i in range(n)}


@pytest.fixture
def ci(live_fleet, tmp_path: Path):
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    with FakeForge(TOKEN) as forge:
        event = tmp_path / "event.json"
        event.write_text(json.dumps({"pull_request": {"number": 12, "head": {"sha": "abcdef0123456789"}}}))
        values = {
            "vars.FLEET_NATS_URL": live_fleet.url,
            "secrets.FLEET_VIEWER_CREDS": Path(live_fleet.creds("viewer")).read_text(),
            "secrets.FLEET_ADMIN_CREDS": Path(live_fleet.creds("admin")).read_text(),
            "github.token": TOKEN,
            "github.server_url": "https://github.example",
            "github.repository": "acme/infra",
            "github.run_id": "4242",
            "github.event.pull_request.head.sha": "abcdef0123456789",
            "steps.reviewed.outputs.pr": "12",
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "GITHUB_", "GH_", "CI_"))}
        env.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", "CI": "true",
                    "GITHUB_REPOSITORY": "acme/infra", "GITHUB_API_URL": forge.url, "GITHUB_EVENT_PATH": str(event),
                    "GITHUB_SERVER_URL": "https://github.example", "GITHUB_RUN_ID": "4242"})
        yield Runner(workdir, values, env), forge, live_fleet


def fleet_file(keys: list[dict[str, Any]], hosts: dict[str, str], slots: int = 4) -> str:
    return fleet_yaml(keys, hosts, pool_slots=slots)


KEYS = [{"id": "ci", "tenant": "fin-prod", "pools": ["pool-local-main"], "secret": {"from_env": "FLEET_KEY_CI"}},
        {"id": "gen", "tenant": "fin-prod", "pools": ["pool-local-main"], "secret": {"generate": True}}]


def test_pull_request_then_merge(ci) -> None:
    runner, forge, live = ci
    yaml_path = runner.workdir / "fleet.yaml"

    # 1. a pull request with a typo: one annotation at its line and column
    good = fleet_file(KEYS, declared_hosts(HOSTS))
    bad = good.replace('"mode": "persistent"', '"mode": "persistant"', 1)
    yaml_path.write_text(bad)
    r = runner.run("plan", "Validate")
    assert r.returncode == 1, r.stdout + r.stderr
    line, col = position(bad, '"persistant"')
    (annotation,) = [a for a in r.stdout.splitlines() if a.startswith("::error ")]
    assert annotation.startswith(f"::error file=fleet.yaml,line={line},col={col},"), annotation
    assert "'persistant' is not one of" in annotation and "did you mean 'persistent'?" in annotation

    # 2. the fixed pull request: a 10,000-host change, planned as the viewer
    yaml_path.write_text(good)
    assert runner.run("plan", "Validate").returncode == 0
    r = runner.run("plan", "Plan as the viewer")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    artifact = runner.workdir / "plan.json"
    plan = json.loads(artifact.read_text())
    assert plan["summary"]["add"] >= HOSTS and plan["no_op"] is False
    assert "changes (see the PR comment)" in (runner.temp / "summary.md").read_text()
    assert not (runner.temp / "viewer.creds").exists(), "the creds file is removed after the plan"

    r = runner.run("plan", "Comment the plan")
    assert r.returncode == 0, r.stdout + r.stderr
    (comment,) = forge.comments["acme/infra#12"]
    body = comment["body"]
    assert len(body) <= 65_536, len(body)
    assert f"Plan: {plan['summary']['add']} to add, 0 to change, 0 to destroy." in body
    assert "Truncated to fit GitHub's 65,536-character comment limit" in body
    assert "the artifact `fleet-plan` of [this CI run](https://github.example/acme/infra/actions/runs/4242)" in body
    r = runner.run("plan", "Comment the plan")  # the next push
    assert r.returncode == 0 and "Updated the fleet comment" in r.stdout
    assert len(forge.comments["acme/infra#12"]) == 1

    # 3. merge: the apply step, as the admin, applies exactly the saved plan
    applied = runner.run("apply", "Apply exactly the reviewed plan", FLEET_KEY_CI=KEY_SECRET)
    assert applied.returncode == 0, applied.stdout[-2000:] + applied.stderr[-2000:]
    assert applied.outputs["exitcode"] == "0"
    assert re.search(rf"Apply complete! Resources: {plan['summary']['add']} added", applied.stdout)
    assert "generated key secrets were discarded" in applied.stdout, "the generated key's secret is not kept in CI"
    assert not (runner.temp / "admin.creds").exists()
    r = runner.run("plan", "Plan as the viewer")
    assert r.returncode == 0 and "fleet plan: no changes" in (runner.temp / "summary.md").read_text()

    # 4. no secret of the fleet in the artifact (nor in the comment)
    async def secrets_of_the_fleet() -> list[str]:
        async with await live.bus("server") as bus:
            pepper = await load_pepper(bus)
        assert pepper is not None
        creds = [parse_creds(Path(live.creds(role)).read_text()) for role in ("admin", "viewer", "server", "enroll")]
        return [KEY_SECRET, key_digest(pepper, KEY_SECRET), pepper.hex(), TOKEN, *(c.seed for c in creds),
                *(c.jwt for c in creds)]

    every_secret = asyncio.run(secrets_of_the_fleet())
    assert all(len(s) >= 40 for s in every_secret)
    for saved in (artifact.read_text(), body):
        for secret in every_secret:
            assert secret not in saved


def test_stale_and_viewer_applies_are_refused(ci) -> None:
    runner, forge, live = ci
    yaml_path = runner.workdir / "fleet.yaml"
    yaml_path.write_text(fleet_file(KEYS[:1], {}))
    assert runner.run("plan", "Plan as the viewer").returncode == 0
    assert runner.run("apply", "Apply exactly", FLEET_KEY_CI=KEY_SECRET).returncode == 0

    # a pull request changes the pool; meanwhile someone applies another change
    yaml_path.write_text(fleet_file(KEYS[:1], {}, slots=6))
    assert runner.run("plan", "Plan as the viewer").returncode == 0
    assert runner.run("plan", "Comment the plan").returncode == 0
    other = runner.workdir.parent / "other.yaml"
    other.write_text(fleet_file(KEYS[:1], {}, slots=8))
    from ..conftest import run_cli

    r = run_cli("apply", "--auto-approve", "--no-wait", "-f", str(other), "--nats", live.url,
                env={"FLEET_KEY_CI": KEY_SECRET, "FLEET_NATS_CREDS": live.creds("admin")})
    assert r.exit_code == 0, r.output

    # the viewer identity cannot apply, stale or not
    viewer = runner.run("apply", "Apply exactly", FLEET_KEY_CI=KEY_SECRET,
                        FLEET_ADMIN_CREDS=Path(live.creds("viewer")).read_text())
    assert viewer.returncode == 1, viewer.stdout + viewer.stderr
    assert "NATS refused" in viewer.stderr and "fleet apply failed (exit 1)" in viewer.stdout

    stale = runner.run("apply", "Apply exactly", FLEET_KEY_CI=KEY_SECRET)
    assert stale.returncode == EXIT_STALE_PLAN and stale.outputs["exitcode"] == "4"
    assert "the saved plan is stale" in stale.stderr
    assert re.search(r"pool\.pool-local-main changed \(revision \d+ -> \d+\)", stale.stderr), stale.stderr
    assert "::error::the reviewed plan is stale" in stale.stdout

    report = runner.run("apply", "Report the refused apply")
    assert report.returncode == 0, report.stdout + report.stderr
    (comment,) = forge.comments["acme/infra#12"]
    assert "fleet apply refused: the reviewed plan is stale" in comment["body"]
    assert "pool.pool-local-main changed" in comment["body"]

    r = run_cli("plan", "--format", "json", "-f", str(yaml_path), "--nats", live.url,
                env={"FLEET_KEY_CI": KEY_SECRET, "FLEET_NATS_CREDS": live.creds("admin")})
    slots = [a for c in json.loads(r.output)["changes"] for a in c["attributes"]
             if a["path"] == "capacity.max_concurrent_sessions"]
    assert [(a["before"], a["after"]) for a in slots] == [(8, 6)], "nothing of the stale plan was written"
