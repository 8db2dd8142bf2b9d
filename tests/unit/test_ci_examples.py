"""The CI examples are valid for their CI: examples/ci/github-actions.yml passes actionlint (with shellcheck on its
`run:` scripts), examples/ci/gitlab-ci.yml passes the GitLab CI JSON Schema (the one check-jsonschema vendors);
a broken copy of each fails, so the checks are real. Both use the commands and options fleet has."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GITHUB = ROOT / "examples" / "ci" / "github-actions.yml"
GITLAB = ROOT / "examples" / "ci" / "gitlab-ci.yml"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert found, f"{name} is not installed: `make venv` installs the dev extra"
    return found


def actionlint(path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # shellcheck from the venv
    return subprocess.run([_tool("actionlint"), "-no-color", str(path)], capture_output=True, text=True, env=env,
                          timeout=120)


def gitlab_schema(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_tool("check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_github_workflow_passes_actionlint_and_shellcheck() -> None:
    _tool("shellcheck")
    r = actionlint(GITHUB)
    assert r.returncode == 0, r.stdout + r.stderr


def test_actionlint_catches_a_broken_copy(tmp_path: Path) -> None:
    broken = tmp_path / "fleet.yml"
    text = GITHUB.read_text()
    text = text.replace("${{ github.token }}", "${{ github.tokn }}", 1)  # an unknown context property
    text = text.replace('"$GITHUB_STEP_SUMMARY"', "$GITHUB_STEP_SUMMARY", 1)  # unquoted: shellcheck SC2086
    broken.write_text(text)
    r = actionlint(broken)
    assert r.returncode == 1
    assert "tokn" in r.stdout and "SC2086" in r.stdout, r.stdout


def test_gitlab_file_passes_the_gitlab_ci_schema() -> None:
    r = gitlab_schema(GITLAB)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_gitlab_schema_catches_a_broken_copy(tmp_path: Path) -> None:
    broken = tmp_path / ".gitlab-ci.yml"
    broken.write_text(GITLAB.read_text().replace("expire_in: 30 days", "expire_in: [30, days]")
                      .replace("resource_group: fleet-apply", "resource_grop: fleet-apply"))
    r = gitlab_schema(broken)
    assert r.returncode == 1, r.stdout


@pytest.mark.parametrize("path", [GITHUB, GITLAB], ids=["github", "gitlab"])
def test_the_examples_call_fleet_as_it_is(path: Path) -> None:
    """Every `fleet …` command line of the example names a real command and real options."""
    from click.testing import CliRunner

    from fleet.cli.main import cli

    text = path.read_text()
    calls = re.findall(r"\bfleet ((?:validate|plan|apply|ci comment)\b[^\n;|>]*)", text)
    assert {c.split()[0] for c in calls} >= {"validate", "plan", "apply", "ci"}
    for call in calls:
        words = [w for w in call.replace("\\", " ").split() if not w.startswith(("\"$", "$", "2>"))]
        options = [w for w in words if w.startswith("--")]
        command = words[:2] if words[0] == "ci" else words[:1]
        help_text = CliRunner().invoke(cli, [*command, "--help"]).output
        for option in options:
            assert re.search(rf"(^|[\s,]){re.escape(option)}\b", help_text), f"{option} of `fleet {call}`"
