"""The jobs of examples/ci/gitlab-ci.yml, run as the shell they are, against a real fleet (the live_fleet fixture) and
a local fake of GitLab's REST API (notes, and the merge request, pipeline, job and artifact lookups of the apply).

A merge request with a typo: fleet-validate writes a Code Quality report with the typo's line and column, and
fleet-plan's after_script says in the MR note that there is no plan. Fixed: fleet-plan (the viewer) saves the plan
and the note shows it, updated in place. On merge: fleet-apply finds the reviewed plan through the API, applies it
as the admin; a stale one is refused (exit 4) and the note says why. Each job's `script` (and `after_script`) is
read from the file; GitLab's variables are given as GitLab would (File variables as paths).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from fleet.errors import EXIT_STALE_PLAN

from ..conftest import fleet_yaml, run_cli
from .ci_helpers import FakeForge

pytestmark = pytest.mark.integration

PIPELINE = Path(__file__).resolve().parents[2] / "examples" / "ci" / "gitlab-ci.yml"
TOKEN = "glpat-" + "G1tL4b" * 4
KEY_SECRET = secrets.token_hex(32)
KEYS = [{"id": "ci", "tenant": "fin-prod", "pools": ["pool-local-main"], "secret": {"from_env": "FLEET_KEY_CI"}}]
MERGED, HEAD = "m" * 40, "h" * 40


class Jobs:
    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir, self.env = workdir, env
        self.pipeline = YAML(typ="safe").load(PIPELINE.read_text())

    def run(self, job: str, part: str = "script", **extra: str) -> subprocess.CompletedProcess:
        lines = self.pipeline[job][part]
        env = {**self.env, **{k: str(v) for k, v in self.pipeline["variables"].items()}, **extra}
        script = self.workdir.parent / f"{job}-{part}.sh"
        script.write_text("\n".join(lines) + "\n")
        return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=self.workdir,
                              env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def gitlab(live_fleet, tmp_path: Path):
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    with FakeForge(TOKEN) as forge:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "GITHUB_", "GH_", "CI_"))}
        env.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", "CI": "true",
                    "FLEET_NATS_URL": live_fleet.url, "GITLAB_TOKEN": TOKEN, "CI_API_V4_URL": f"{forge.url}/api/v4",
                    "CI_PROJECT_ID": "77", "CI_PROJECT_DIR": str(workdir), "CI_JOB_URL": "https://gitlab.example/j/1",
                    "CI_JOB_ID": "1", "CI_COMMIT_SHORT_SHA": HEAD[:8],
                    "FLEET_VIEWER_CREDS": live_fleet.creds("viewer"), "FLEET_ADMIN_CREDS": live_fleet.creds("admin")})
        yield Jobs(workdir, env), forge, live_fleet


def mr_env() -> dict[str, str]:
    return {"CI_MERGE_REQUEST_IID": "9", "CI_COMMIT_SHA": HEAD, "CI_PIPELINE_SOURCE": "merge_request_event"}


def serve_reviewed_plan(forge: FakeForge, plan: bytes) -> None:
    """What GitLab answers the apply job: the merged MR of the commit, its pipelines, jobs, and the artifact."""
    base = "/api/v4/projects/77"
    forge.static.update({
        f"{base}/repository/commits/{MERGED}/merge_requests": [{"iid": 9, "state": "merged", "sha": HEAD}],
        f"{base}/merge_requests/9/pipelines": [{"id": 501, "sha": HEAD, "status": "success"},
                                               {"id": 500, "sha": "o" * 40, "status": "success"}],
        f"{base}/pipelines/501/jobs": [{"id": 601, "name": "fleet-validate"}, {"id": 602, "name": "fleet-plan"}],
        f"{base}/jobs/602/artifacts/plan.json": plan,
    })


def note(forge: FakeForge) -> dict[str, Any]:
    (only,) = forge.comments["77#9"]
    return only


def test_merge_request_then_merge(gitlab) -> None:
    jobs, forge, live = gitlab
    good = fleet_yaml(KEYS, {})
    bad = good.replace('"mode": "persistent"', '"mode": "persistant"', 1)
    (jobs.workdir / "fleet.yaml").write_text(bad)

    r = jobs.run("fleet-validate", **mr_env())
    assert r.returncode == 1
    (issue,) = json.loads((jobs.workdir / "gl-code-quality-report.json").read_text())
    before = bad[: bad.index('"persistant"')]
    assert issue["location"] == {"path": "fleet.yaml", "positions": {"begin": {
        "line": before.count("\n") + 1, "column": len(before) - before.rfind("\n")}}}
    r = jobs.run("fleet-plan", **mr_env())
    assert r.returncode == 1
    r = jobs.run("fleet-plan", "after_script", CI_JOB_STATUS="failed", **mr_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fleet plan failed" in note(forge)["body"] and HEAD[:8] in note(forge)["body"]

    (jobs.workdir / "fleet.yaml").write_text(good)
    assert jobs.run("fleet-validate", **mr_env()).returncode == 0
    assert json.loads((jobs.workdir / "gl-code-quality-report.json").read_text()) == []
    r = jobs.run("fleet-plan", **mr_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fleet plan: changes (see the MR note)" in r.stdout
    body = note(forge)["body"]
    assert "## fleet plan" in body and "Plan: 8 to add" in body and len(forge.comments["77#9"]) == 1

    serve_reviewed_plan(forge, (jobs.workdir / "plan.json").read_bytes())
    (jobs.workdir / "plan.json").unlink()  # the apply job starts from a fresh checkout
    applied = jobs.run("fleet-apply", CI_COMMIT_SHA=MERGED, FLEET_KEY_CI=KEY_SECRET)
    assert applied.returncode == 0, applied.stdout[-2000:] + applied.stderr[-2000:]
    assert "the reviewed plan: merge request !9, job 602" in applied.stdout
    assert "applied the plan of merge request !9" in applied.stdout
    assert "Apply complete! Resources: 8 added" in applied.stdout

    # the next merge request: planned, then someone applies another change first
    (jobs.workdir / "fleet.yaml").write_text(fleet_yaml(KEYS, {}, pool_slots=6))
    assert jobs.run("fleet-plan", **mr_env()).returncode == 0
    serve_reviewed_plan(forge, (jobs.workdir / "plan.json").read_bytes())
    other = jobs.workdir.parent / "other.yaml"
    other.write_text(fleet_yaml(KEYS, {}, pool_slots=8))
    r = run_cli("apply", "--auto-approve", "--no-wait", "-f", str(other), "--nats", live.url,
                env={"FLEET_KEY_CI": KEY_SECRET, "FLEET_NATS_CREDS": live.creds("admin")})
    assert r.exit_code == 0, r.output
    stale = jobs.run("fleet-apply", CI_COMMIT_SHA=MERGED, FLEET_KEY_CI=KEY_SECRET)
    assert stale.returncode == EXIT_STALE_PLAN, stale.stdout + stale.stderr
    assert "the saved plan is stale" in stale.stderr
    assert "fleet apply refused: the reviewed plan is stale" in note(forge)["body"]
    assert "pool.pool-local-main changed" in note(forge)["body"]


def test_a_commit_that_no_merge_request_reviewed_applies_nothing(gitlab) -> None:
    jobs, forge, live = gitlab
    (jobs.workdir / "fleet.yaml").write_text(fleet_yaml(KEYS, {}))
    forge.static["/api/v4/projects/77/repository/commits/" + MERGED + "/merge_requests"] = []
    r = jobs.run("fleet-apply", CI_COMMIT_SHA=MERGED, FLEET_KEY_CI=KEY_SECRET)
    assert r.returncode == 1
    assert "was not merged from a merge request: nothing reviewed to apply" in r.stderr
    plan = run_cli("plan", "--detailed-exitcode", "-f", str(jobs.workdir / "fleet.yaml"), "--nats", live.url,
                   env={"FLEET_KEY_CI": KEY_SECRET, "FLEET_NATS_CREDS": live.creds("admin")})
    assert plan.exit_code == 2, "nothing was applied"
