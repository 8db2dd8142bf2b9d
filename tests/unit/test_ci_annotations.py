"""fleet.cli.annotations (table-driven) and `fleet validate --format github|gitlab` on the corpus of invalid files:
every diagnostic becomes one annotation at its file, line and column, escaped as GitHub's toolkit escapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleet.cli.annotations import github_commands, gitlab_report, repo_path
from fleet.cli.main import cli
from fleet.schema.diagnostics import Diagnostic

ROOT = Path(__file__).resolve().parents[2]
INVALID = ROOT / "tests" / "invalid"


@pytest.mark.parametrize("d, expected", [
    (Diagnostic("bad", "fleet.yaml", 3, 7, ("pools", 0, "mode"), code="schema.enum"),
     "::error file=fleet.yaml,line=3,col=7,title=fleet validate%3A schema.enum::bad (at $.pools[0].mode)"),
    (Diagnostic("50% of it, a: b", "a,b:c.yaml", 1, 0, severity="warning", hint="try\nthis"),
     "::warning file=a%2Cb%3Ac.yaml,line=1,title=fleet validate%3A error::50%25 of it, a: b%0Ahint: try%0Athis"),
    (Diagnostic("missing", "fleet.yaml"),
     "::error file=fleet.yaml,title=fleet validate%3A error::missing"),
    (Diagnostic("cr\r", "f.yaml", 2, 2),
     "::error file=f.yaml,line=2,col=2,title=fleet validate%3A error::cr%0D"),
])
def test_github_commands(d: Diagnostic, expected: str, tmp_path: Path) -> None:
    assert github_commands([d], tmp_path) == [expected]


def test_paths_are_relative_to_the_repository_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "infra").mkdir()
    monkeypatch.chdir(tmp_path / "infra")
    assert repo_path("fleet.yaml", tmp_path) == "infra/fleet.yaml"
    assert repo_path(str(tmp_path / "infra" / "fleet.yaml"), tmp_path) == "infra/fleet.yaml"
    assert repo_path("../top.yaml", tmp_path) == "top.yaml"
    assert repo_path("/elsewhere/fleet.yaml", tmp_path) == "/elsewhere/fleet.yaml"


def test_gitlab_fingerprints_survive_a_moved_line_and_tell_duplicates_apart(tmp_path: Path) -> None:
    a = Diagnostic("bad", "fleet.yaml", 3, 7, ("pools", 0, "mode"), code="schema.enum")
    moved = Diagnostic("bad", "fleet.yaml", 9, 7, ("pools", 0, "mode"), code="schema.enum")
    other = Diagnostic("bad", "fleet.yaml", 3, 7, ("pools", 1, "mode"), code="schema.enum")
    (ra,), (rm,) = gitlab_report([a], tmp_path), gitlab_report([moved], tmp_path)
    assert ra["fingerprint"] == rm["fingerprint"]
    assert ra["location"] == {"path": "fleet.yaml", "positions": {"begin": {"line": 3, "column": 7}}}
    assert (ra["severity"], ra["check_name"]) == ("major", "fleet/schema.enum")
    prints = [r["fingerprint"] for r in gitlab_report([a, other, a], tmp_path)]
    assert len(set(prints)) == 3
    (unknown,) = gitlab_report([Diagnostic("gone", "x.yaml", severity="warning")], tmp_path)
    assert unknown["location"]["positions"]["begin"] == {"line": 1, "column": 1}
    assert unknown["severity"] == "minor"


CORPUS = sorted(p for p in INVALID.glob("*.yaml"))


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_validate_formats_agree_with_json(path: Path) -> None:
    runner = CliRunner()
    env = {"GITHUB_WORKSPACE": str(ROOT), "CI_PROJECT_DIR": str(ROOT)}
    as_json = json.loads(runner.invoke(cli, ["validate", "-f", str(path), "--json"], env=env).output)
    github = runner.invoke(cli, ["validate", "-f", str(path), "--format", "github"], env=env)
    gitlab = runner.invoke(cli, ["validate", "-f", str(path), "--format", "gitlab"], env=env)
    assert github.exit_code == gitlab.exit_code == 1
    lines = github.stdout.splitlines()
    report = json.loads(gitlab.stdout)
    diags = as_json["diagnostics"]
    assert len(lines) == len(report) == len(diags) >= 1
    rel = path.relative_to(ROOT).as_posix()
    for d, line, issue in zip(diags, lines, report, strict=True):
        where = f"file={rel}" + (f",line={d['line']}" if d["line"] else "") + (
            f",col={d['col']}" if d["line"] and d["col"] else "")
        assert line.startswith(f"::{d['severity']} {where},title="), line
        assert "\n" not in line
        assert issue["location"]["path"] == rel
        assert issue["location"]["positions"]["begin"]["line"] == max(d["line"], 1)
