"""`fleet ci comment`: the one fleet comment of a pull request (GitHub) or merge request (GitLab), kept up to date.

The body is the Markdown view of a saved plan (fleet.reconciler.rendering.render_markdown, the same view as
`fleet plan --format markdown`), or any Markdown file (`--body-file`, e.g. "apply refused: stale"), with a
hidden marker as its first line (`<!-- fleet:comment key=KEY -->`) and a trailer that says where the saved
plan is (the CI run's artifact) and at which commit it was made. The command lists the PR's comments, updates
the first whose body starts with the marker, and creates one only when there is none: one comment per PR and
key, however often the job runs. The whole body stays within GitHub's 65,536-character limit (the plan view is
rendered to the room left by the marker and the trailer; it cuts itself to its summary when it must).
The API calls are fleet.cli.ci_providers'. Listed in fleet.cli.main.COMMANDS (loaded when called).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import click

from fleet.cli.ci_providers import close, open_provider, target_from_env
from fleet.cli.options import Count, InputFile, Seconds
from fleet.cli.plan_cmds import MAX_PLAN_BYTES, read_saved_plan
from fleet.cli.shared import read_bounded
from fleet.errors import UsageError
from fleet.reconciler.plan import Plan

COMMENT_LIMIT = 65_536  # GitHub's; GitLab allows 1,000,000, but a reviewer reads the same comment on both
MAX_BODY_BYTES = 1024 * 1024
KEY_PATTERN = re.compile(r"^[A-Za-z0-9._/-]{1,100}$")
REPO_PATTERN = {"github": re.compile(r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$"),
                "gitlab": re.compile(r"^[A-Za-z0-9_.-]{1,255}(/[A-Za-z0-9_.-]{1,255}){0,20}$")}


def marker(key: str) -> str:
    return f"<!-- fleet:comment key={key} -->"


def trailer(run_url: str | None, artifact: str, commit: str | None) -> str:
    at = f" made at commit `{commit[:12]}`" if commit else ""
    where = f"the artifact `{artifact}` of [this CI run]({run_url})" if run_url else f"the CI artifact `{artifact}`"
    return (f"\n---\n<sub>The saved plan{at} is {where}. Merging applies exactly that plan; if the fleet changed "
            "since, the apply is refused as stale and nothing is written.</sub>\n")


def comment_body(key: str, markdown: str, tail: str) -> str:
    return f"{marker(key)}\n{markdown.rstrip()}\n{tail}"


def saved_plan(plan_file: Path) -> Plan:
    plan = read_saved_plan(plan_file)
    if plan is None:
        raise UsageError(f"{plan_file} is not a saved plan", hint="save one with `fleet plan --out plan.json`")
    return plan


def plan_markdown(plan: Plan, reserved: int) -> str:
    from fleet.reconciler.rendering import render_markdown

    return render_markdown(plan, limit=COMMENT_LIMIT, reserved=reserved)


@click.group("ci")
def ci_group() -> None:
    """CI/CD helpers: the pull-request comment with the plan (docs/ci.md)."""


@ci_group.command("comment")
@click.argument("plan_file", required=False,
                type=InputFile(max_bytes=MAX_PLAN_BYTES, what="saved plan"))
@click.option("--provider", type=click.Choice(["github", "gitlab"]), required=True,
              help="github: the issue comments API of a pull request (token: GITHUB_TOKEN); gitlab: the notes API of "
                   "a merge request (token: GITLAB_TOKEN, else CI_JOB_TOKEN).")
@click.option("--body-file", type=InputFile(max_bytes=MAX_BODY_BYTES, what="Markdown file"),
              help="Post this Markdown instead of a plan (e.g. why the apply was refused).")
@click.option("--key", metavar="NAME", default=None,
              help="Which fleet comment of the PR this is (one per key): default the plan's fleet.yaml path.")
@click.option("--pr", "number", type=Count(1, 2**31 - 1), metavar="NUMBER", default=None,
              help="The PR number (GitHub) or MR IID (GitLab); default: from the CI's environment.")
@click.option("--repo", metavar="REPO", default=None,
              help="OWNER/NAME (GitHub) or the project ID or path (GitLab); default: GITHUB_REPOSITORY, CI_PROJECT_ID.")
@click.option("--api-url", metavar="URL", default=None,
              help="The REST API's base URL; default: GITHUB_API_URL or https://api.github.com, CI_API_V4_URL.")
@click.option("--artifact", metavar="NAME", default="fleet-plan", show_default=True,
              help="The name of the CI artifact that holds the saved plan (named in the comment).")
@click.option("--timeout", type=Seconds(0.1, 600), default=30.0, show_default=True, help="Seconds per API request.")
def comment_cmd(plan_file: Path | None, provider: str, body_file: Path | None, key: str | None, number: int | None,
                repo: str | None, api_url: str | None, artifact: str, timeout: float) -> None:
    """Post or update the one fleet comment of a PR/MR with the Markdown plan of PLAN_FILE (a saved plan).

    The comment is found again by a hidden marker in its first line, so every run updates it in place. The token
    comes from the environment only and is never printed.
    """
    if (plan_file is None) == (body_file is None):
        raise UsageError("give either PLAN_FILE (a saved plan) or --body-file FILE")
    target = target_from_env(provider, os.environ, number=number, repo=repo, api_url=api_url)
    if not REPO_PATTERN[provider].match(target.repo) or ".." in target.repo:
        raise UsageError(f"the repository {target.repo[:60]!r} is not " + (
            "OWNER/NAME" if provider == "github" else "a GitLab project ID or path"))
    plan = saved_plan(plan_file) if plan_file is not None else None
    if key is None:
        key = (plan.basis.config_file if plan is not None else None) or "fleet.yaml"
    key = key.removeprefix("./")
    if not KEY_PATTERN.match(key):
        raise UsageError(f"--key {key[:40]!r}: use letters, digits and . _ / - (at most 100)")
    if not KEY_PATTERN.match(artifact):
        raise UsageError(f"--artifact {artifact[:40]!r}: use letters, digits and . _ / - (at most 100)")
    tail = trailer(target.run_url, artifact, target.commit)
    reserved = len(marker(key)) + len(tail) + 2
    room = COMMENT_LIMIT - reserved
    if plan is not None:
        markdown = plan_markdown(plan, reserved)
    else:
        assert body_file is not None
        try:
            markdown = read_bounded(body_file, MAX_BODY_BYTES, "--body-file").decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise UsageError(f"--body-file {body_file}: not UTF-8 text") from exc
        if len(markdown) > room:
            markdown = markdown[:room - 80].rsplit("\n", 1)[0] + "\n\n_(cut to fit the comment limit)_\n"
    body = comment_body(key, markdown, tail)
    assert len(body) <= COMMENT_LIMIT

    api = open_provider(target, timeout=timeout)
    try:
        ours = [c for c in api.comments() if c.body.lstrip().startswith(marker(key))]
        if ours:
            done = api.update(ours[0].id, body)
            verb = "Updated"
        else:
            done = api.create(body)
            verb = "Created"
    finally:
        close(api)
    click.echo(f"{verb} the fleet comment {done.id} on {api.where} ({len(body):,} characters)"
               + (f": {done.url}" if done.url else ""))
    if len(ours) > 1:
        click.echo(f"note: {len(ours) - 1} more comment(s) carry the same marker; only the first is kept up to date",
                   err=True)
