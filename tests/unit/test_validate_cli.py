"""`fleet validate` as a user runs it (through click's CliRunner): exit codes 0/1/2, the default file and
FLEET_FILE, human and JSON output, --strict, --quiet, and every problem reported at once.

The clock is fixed (the example's keys have real expiry dates) by wrapping our own `load_fleet` seam.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import fleet.cli.shared
from fleet.cli.main import cli
from fleet.errors import EXIT_USAGE
from fleet.schema.api import load_fleet

EXAMPLE = Path(__file__).resolve().parents[2] / "fleet.yaml.example"
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

WARN_ONLY = """\
version: 1
org: {id: acme}
tenants: [{id: fin-prod}]
pools:
  - {id: od, tenant: fin-prod, backend: e2b, mode: on_demand, hosts: {min: 1}, capacity: {max_concurrent_sessions: 1}, settings: {template: t}}
"""

THREE_ERRORS = """\
version: 1
org: {id: acme}
tenants: [{id: fin-prod}]
pools:
  - id: p1
    tenant: fin-prd
    backend: local
    mode: ondemand
    capacity: {max_concurrent_sessions: 0}
"""


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet.cli.shared, "load_fleet", functools.partial(load_fleet, now=NOW))


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, ["validate", *args], env=env)


def test_example_is_valid() -> None:
    result = run("-f", str(EXAMPLE))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{EXAMPLE}: valid — org acme: 2 tenants, 3 projects, 6 pools, 3 keys\n"
    assert result.stderr == ""


def test_example_is_valid_as_json() -> None:
    result = run("-f", str(EXAMPLE), "--json")
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert payload == {"file": str(EXAMPLE), "valid": True, "errors": 0, "warnings": 0, "diagnostics": []}


def test_default_file_and_fleet_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run()
    assert result.exit_code == 1
    assert "fleet.yaml: error: no such file" in result.output
    shutil.copy(EXAMPLE, tmp_path / "fleet.yaml")
    assert run().exit_code == 0
    assert run(env={"FLEET_FILE": str(tmp_path / "other.yaml")}).exit_code == 1
    assert run(env={"FLEET_FILE": str(EXAMPLE)}).exit_code == 0


@pytest.mark.parametrize(
    "args",
    [["--format", "yaml"], ["--no-such-option"], ["-f"], ["extra-argument"]],
)
def test_usage_errors_exit_64(args: list[str]) -> None:
    """64 (EX_USAGE), not click's 2: `fleet plan --detailed-exitcode` says "changes" with 2."""
    result = run("-f", str(EXAMPLE), *args) if args[0] != "-f" else run(*args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert "Traceback" not in result.output


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(THREE_ERRORS, encoding="utf-8")
    result = run("-f", str(path))
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = [ln for ln in result.stderr.splitlines() if not ln.startswith("    hint:")]
    assert lines == [
        f"{path}:6:13: error: unknown tenant 'fin-prd' (at $.pools[0].tenant)",
        f"{path}:8:11: error: 'ondemand' is not one of 'persistent', 'on_demand', 'hybrid' (at $.pools[0].mode)",
        f"{path}:9:41: error: 0 must be ≥ 1 (at $.pools[0].capacity.max_concurrent_sessions)",
        "3 errors",
    ]
    assert "    hint: did you mean 'on_demand'?" in result.stderr


def test_json_output_for_ci(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(THREE_ERRORS, encoding="utf-8")
    result = run("-f", str(path), "--format", "json")
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert (payload["valid"], payload["errors"], payload["warnings"]) == (False, 3, 0)
    enum = payload["diagnostics"][1]
    assert enum == {
        "message": "'ondemand' is not one of 'persistent', 'on_demand', 'hybrid'",
        "file": str(path), "line": 8, "col": 11, "path": "$.pools[0].mode",
        "severity": "error", "code": "schema.enum", "hint": "did you mean 'on_demand'?",
    }


def test_warnings_pass_unless_strict(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(WARN_ONLY, encoding="utf-8")
    ok = run("-f", str(path))
    assert ok.exit_code == 0
    assert f"{path}:5:" in ok.stderr and "warning: an on_demand pool keeps no hosts running" in ok.stderr
    assert "1 warning(s)" in ok.stdout
    strict = run("-f", str(path), "--strict")
    assert strict.exit_code == 1
    payload = json.loads(run("-f", str(path), "--strict", "--json").stdout)
    assert (payload["valid"], payload["errors"], payload["warnings"]) == (False, 0, 1)


def test_quiet() -> None:
    result = run("-f", str(EXAMPLE), "-q")
    assert result.exit_code == 0
    assert result.output == ""


def test_help() -> None:
    result = run("--help")
    assert result.exit_code == 0
    assert "FILE:LINE:COL" in result.output
