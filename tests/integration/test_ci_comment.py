"""`fleet ci comment` against local fakes of GitHub's and GitLab's REST APIs (tests/integration/ci_helpers.py).

Run twice, it leaves exactly one comment, updated in place (found by its marker, across pages); other people's
comments are never touched; 5xx, 429 and rate-limit 403 answers are retried; 401, 403 and 404 end in one clear
line; the token is never printed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet.cli import ci_providers
from fleet.errors import EXIT_ERROR, EXIT_UNAVAILABLE, EXIT_USAGE

from ..conftest import run_cli
from .ci_helpers import FakeForge

GOLDEN_PLAN = Path(__file__).resolve().parents[1] / "golden" / "plan.json"
TOKEN = "ghs_" + "T0k3n" * 8


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ci_providers, "BACKOFF_S", 0.0)


def github_env(forge: FakeForge, tmp_path: Path, number: int = 7) -> dict[str, str]:
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": number, "head": {"sha": "0123456789abcdef0123"}}}))
    return {"GITHUB_TOKEN": TOKEN, "GITHUB_REPOSITORY": "acme/infra", "GITHUB_API_URL": forge.url,
            "GITHUB_EVENT_PATH": str(event), "GITHUB_SERVER_URL": "https://github.example", "GITHUB_RUN_ID": "42",
            "GITLAB_TOKEN": "", "CI_JOB_TOKEN": ""}


def gitlab_env(forge: FakeForge, *, job_token: bool = False) -> dict[str, str]:
    tokens = {"CI_JOB_TOKEN": TOKEN, "GITLAB_TOKEN": ""} if job_token else {"GITLAB_TOKEN": TOKEN}
    return {**tokens, "CI_API_V4_URL": f"{forge.url}/api/v4", "CI_PROJECT_ID": "123", "CI_MERGE_REQUEST_IID": "9",
            "CI_JOB_URL": "https://gitlab.example/acme/infra/-/jobs/77", "CI_COMMIT_SHA": "fedcba9876543210",
            "GITHUB_TOKEN": ""}


def comment(provider: str, env: dict[str, str], *args: str):
    return run_cli("ci", "comment", "--provider", provider, *args, env=env)


def test_github_twice_is_one_comment_updated_in_place(tmp_path: Path) -> None:
    with FakeForge(TOKEN) as forge:
        other = forge.add("acme/infra#7", "LGTM, but see the pool change")
        env = github_env(forge, tmp_path)
        first = comment("github", env, str(GOLDEN_PLAN))
        assert first.exit_code == 0, first.output
        assert "Created the fleet comment" in first.output
        second = comment("github", env, str(GOLDEN_PLAN))
        assert second.exit_code == 0, second.output
        assert "Updated the fleet comment" in second.output

        thread = forge.comments["acme/infra#7"]
        ours = [c for c in thread if c is not other]
        assert len(thread) == 2 and len(ours) == 1
        assert other["body"] == "LGTM, but see the pool change"
        body = ours[0]["body"]
        assert body.startswith("<!-- fleet:comment key=")
        assert "## fleet plan" in body and len(body) <= 65_536
        assert "[this CI run](https://github.example/acme/infra/actions/runs/42)" in body
        assert "`0123456789ab`" in body, "the commit the plan was made at"
        assert [(r.method, r.path) for r in forge.writes()] == [
            ("POST", "/repos/acme/infra/issues/7/comments"),
            ("PATCH", f"/repos/acme/infra/issues/comments/{ours[0]['id']}")]
        assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in forge.requests)
        assert TOKEN not in first.output + second.output


def test_github_finds_its_comment_on_a_later_page_and_ignores_quotes(tmp_path: Path) -> None:
    with FakeForge(TOKEN, per_page=2) as forge:
        env = github_env(forge, tmp_path)
        assert comment("github", env, str(GOLDEN_PLAN)).exit_code == 0
        ours_id = forge.comments["acme/infra#7"][0]["id"]
        for i in range(5):
            forge.add("acme/infra#7", f"> <!-- fleet:comment key=fleet.yaml -->\nquoted {i}")
        forge.comments["acme/infra#7"].append(forge.comments["acme/infra#7"].pop(0))  # ours last: page 3
        r = comment("github", env, str(GOLDEN_PLAN))
        assert r.exit_code == 0, r.output
        assert [w.method for w in forge.writes()] == ["POST", "PATCH"]
        assert forge.writes()[-1].path.endswith(f"/comments/{ours_id}")
        assert sum(1 for r in forge.requests if r.method == "GET") == 1 + 3, "every page of the second run was read"


def test_gitlab_twice_is_one_note_updated_in_place(tmp_path: Path) -> None:
    with FakeForge(TOKEN) as forge:
        forge.add("123#9", "added 1 commit", system=True)
        env = gitlab_env(forge)
        assert comment("gitlab", env, str(GOLDEN_PLAN)).exit_code == 0
        r = comment("gitlab", env, str(GOLDEN_PLAN))
        assert r.exit_code == 0, r.output
        notes = forge.comments["123#9"]
        ours = [n for n in notes if not n.get("system")]
        assert len(notes) == 2 and len(ours) == 1
        assert ours[0]["body"].startswith("<!-- fleet:comment key=") and "## fleet plan" in ours[0]["body"]
        assert "[this CI run](https://gitlab.example/acme/infra/-/jobs/77)" in ours[0]["body"]
        assert [(w.method, w.path) for w in forge.writes()] == [
            ("POST", "/api/v4/projects/123/merge_requests/9/notes"),
            ("PUT", f"/api/v4/projects/123/merge_requests/9/notes/{ours[0]['id']}")]
        assert all(rq.headers.get("private-token") == TOKEN for rq in forge.requests)
        assert TOKEN not in r.output


def test_gitlab_job_token_and_a_project_path(tmp_path: Path) -> None:
    with FakeForge(TOKEN) as forge:
        env = gitlab_env(forge, job_token=True)
        r = comment("gitlab", env, str(GOLDEN_PLAN), "--repo", "acme/infra")
        assert r.exit_code == 0, r.output
        assert forge.writes()[0].path == "/api/v4/projects/acme%2Finfra/merge_requests/9/notes"
        assert forge.requests[0].headers.get("job-token") == TOKEN


@pytest.mark.parametrize("status, headers", [
    (502, {}),
    (503, {"Retry-After": "0"}),
    (429, {"Retry-After": "0"}),
    (403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "0"}),
])
def test_transient_answers_are_retried(tmp_path: Path, status: int, headers: dict[str, str]) -> None:
    with FakeForge(TOKEN) as forge:
        env = github_env(forge, tmp_path)
        forge.fail_next(status, headers)  # the listing
        forge.fail_next(status, headers)  # and again
        r = comment("github", env, str(GOLDEN_PLAN))
        assert r.exit_code == 0, r.output
        assert len(forge.comments["acme/infra#7"]) == 1
        assert [q.method for q in forge.requests] == ["GET", "GET", "GET", "POST"]


def test_a_server_that_keeps_failing_is_unavailable(tmp_path: Path) -> None:
    with FakeForge(TOKEN) as forge:
        env = github_env(forge, tmp_path)
        for _ in range(ci_providers.MAX_ATTEMPTS):
            forge.fail_next(500, message="boom")
        r = comment("github", env, str(GOLDEN_PLAN))
        assert r.exit_code == EXIT_UNAVAILABLE, r.output
        assert f"kept failing ({ci_providers.MAX_ATTEMPTS} attempts)" in r.output and "HTTP 500: boom" in r.output
        assert len(forge.requests) == ci_providers.MAX_ATTEMPTS
        assert not forge.writes()


@pytest.mark.parametrize("status, expected", [
    (401, "refused the token (401"),
    (403, "forbids this token to write comments (403"),
    (404, "answered 404 (fake 404) for the comments of pull request #7 of acme/infra"),
])
def test_refusals_are_one_clear_line(tmp_path: Path, status: int, expected: str) -> None:
    with FakeForge(TOKEN) as forge:
        env = github_env(forge, tmp_path)
        if status == 401:
            env["GITHUB_TOKEN"] = "ghs_wrong_" + "x" * 20
        else:
            forge.fail_next(status, message="Resource not accessible by integration" if status == 403 else "")
        r = comment("github", env, str(GOLDEN_PLAN))
        assert r.exit_code == EXIT_ERROR, r.output
        assert expected in r.output and "hint:" in r.output and "Traceback" not in r.output
        assert len(forge.requests) == 1, "refusals are not retried"
        assert env["GITHUB_TOKEN"] not in r.output and not forge.writes()


def test_a_body_file_replaces_the_plan_in_the_same_comment(tmp_path: Path) -> None:
    with FakeForge(TOKEN) as forge:
        env = github_env(forge, tmp_path)
        assert comment("github", env, str(GOLDEN_PLAN), "--key", "fleet.yaml").exit_code == 0
        note = tmp_path / "stale.md"
        note.write_text("## fleet apply refused\n\nThe reviewed plan is stale.\n")
        r = comment("github", env, "--body-file", str(note), "--key", "fleet.yaml")
        assert r.exit_code == 0, r.output
        (only,) = forge.comments["acme/infra#7"]
        assert "The reviewed plan is stale." in only["body"] and "## fleet plan" not in only["body"]


def test_missing_context_is_a_usage_error(tmp_path: Path) -> None:
    r = run_cli("ci", "comment", "--provider", "github", str(GOLDEN_PLAN),
                env={"GITHUB_TOKEN": "", "GH_TOKEN": "", "GITHUB_REPOSITORY": "", "GITHUB_EVENT_PATH": "",
                     "GITHUB_REF": ""})
    assert r.exit_code == EXIT_USAGE
    assert "missing GITHUB_TOKEN, GITHUB_REPOSITORY (or --repo), PR number" in r.output
    r = run_cli("ci", "comment", "--provider", "gitlab", env={"GITLAB_TOKEN": "x"})
    assert r.exit_code == EXIT_USAGE and "either PLAN_FILE" in r.output
