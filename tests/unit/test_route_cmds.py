"""`fleet route show --from-file|set` on fleet.yaml.example: seed formats, and in-place edits that change exactly the right lines
(`route show` of the applied policy: tests/integration/test_cli_defects.py)."""

from __future__ import annotations

import difflib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleet.cli.main import cli
from fleet.errors import EXIT_USAGE

EXAMPLE = Path(__file__).resolve().parents[2] / "fleet.yaml.example"


@pytest.fixture
def fleet_file(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yaml"
    shutil.copy(EXAMPLE, path)
    return path


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def test_route_show_seed_format(fleet_file):
    r = run("route", "show", "my-fintech-app", "--from-file", "-f", str(fleet_file))
    assert r.exit_code == 0
    assert r.output == (
        "Project:          my-fintech-app\n"
        "Preferred pool:   pool-local-main  (local, persistent)\n"
        "Fallback pool:    pool-cloud-e2b   (e2b, on_demand)\n"
        "Routing mode:     preferred-with-fallback\n"
    )
    data = json.loads(run("route", "show", "my-fintech-app", "--from-file", "--json", "-f", str(fleet_file)).output)
    assert data["preferred_pool"] == {"id": "pool-local-main", "backend": "local", "mode": "persistent"}
    assert data["routing_mode"] == "preferred-with-fallback"


def test_route_show_needs_a_project_when_there_are_several(fleet_file):
    r = CliRunner().invoke(cli, ["route", "show", "--from-file", "-f", str(fleet_file)])
    assert r.exit_code == EXIT_USAGE and "my-fintech-app" in r.output
    r = CliRunner().invoke(cli, ["route", "show", "my-fintech-ap", "--from-file", "-f", str(fleet_file)])
    # a name on the command line that fleet.yaml does not have is the same kind of mistake as any bad argument
    assert r.exit_code == EXIT_USAGE and "did you mean 'my-fintech-app'?" in r.output


def test_route_set_swaps_pools_changes_exactly_two_lines(fleet_file):
    before = fleet_file.read_text()
    r = run("route", "set", "my-fintech-app", "--preferred-pool", "pool-cloud-e2b", "--fallback-pool", "pool-local-main",
            "-f", str(fleet_file))
    assert r.exit_code == 0, r.output
    assert changed_lines(before, fleet_file.read_text()) == [
        "-      preferred_pool: pool-local-main",
        "-      fallback_pool: pool-cloud-e2b",
        "+      preferred_pool: pool-cloud-e2b",
        "+      fallback_pool: pool-local-main",
    ]


def test_route_set_without_fallback_removes_it_and_switches_mode(fleet_file):
    before = fleet_file.read_text()
    r = run("route", "set", "my-fintech-app", "--preferred-pool", "pool-local-main", "-f", str(fleet_file))
    assert r.exit_code == 0, r.output
    after = fleet_file.read_text()
    assert changed_lines(before, after) == [
        "-      mode: preferred-with-fallback",
        "+      mode: preferred-only",
        "-      fallback_pool: pool-cloud-e2b",
    ]
    # comments survive, and adding the fallback back restores the original file byte for byte
    assert "# preferred-with-fallback: local hosts while they have a free slot" in after
    r = run("route", "set", "my-fintech-app", "--preferred-pool", "pool-local-main", "--fallback-pool", "pool-cloud-e2b",
            "-f", str(fleet_file))
    assert r.exit_code == 0, r.output
    assert fleet_file.read_text() == before


def test_route_set_adds_fallback_to_preferred_only_project(fleet_file):
    before = fleet_file.read_text()
    r = run("route", "set", "ledger-batch", "--preferred-pool", "pool-k8s-batch", "--fallback-pool", "pool-local-main",
            "-f", str(fleet_file))
    assert r.exit_code == 0, r.output
    assert changed_lines(before, fleet_file.read_text()) == [
        "-      mode: preferred-only",
        "+      mode: preferred-with-fallback",
        "+      fallback_pool: pool-local-main",
    ]


@pytest.mark.parametrize("args,message", [
    (["--preferred-pool", "pool-nope"], "no pool 'pool-nope'"),
    (["--preferred-pool", "pool-docker-gpu"], "belongs to tenant 'health-prod'"),
    (["--preferred-pool", "pool-local-main", "--fallback-pool", "pool-local-main"], "must differ"),
    (["--preferred-pool", "k8s-defaults"], "abstract"),
])
def test_route_set_refuses_and_leaves_the_file_alone(fleet_file, args, message):
    before = fleet_file.read_text()
    r = CliRunner().invoke(cli, ["route", "set", "my-fintech-app", *args, "-f", str(fleet_file)])
    assert r.exit_code == EXIT_USAGE, r.output  # unknown pool, other tenant, same pool twice, abstract: one code
    assert message in r.output
    assert "Traceback" not in r.output
    assert fleet_file.read_text() == before


@pytest.mark.parametrize("args,message", [
    # adaptive samples the preferred pool and the candidates: a candidate cannot also become the preferred pool
    (["--preferred-pool", "pool-health-k8s"],
     "pool 'pool-health-k8s' is already a candidate of project 'clinical-notes'"),
    (["--preferred-pool", "pool-docker-gpu", "--fallback-pool", "pool-health-k8s"],
     "project 'clinical-notes' uses adaptive routing, which has candidates, not a fallback pool"),
])
def test_route_set_refuses_inconsistent_adaptive_routing_as_a_usage_error(fleet_file, args, message):
    before = fleet_file.read_text()
    r = CliRunner().invoke(cli, ["route", "set", "clinical-notes", *args, "-f", str(fleet_file)])
    assert r.exit_code == EXIT_USAGE, r.output
    lines = r.output.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == ["error", "hint"], r.output  # no diagnostics dump
    assert message in lines[0]
    assert fleet_file.read_text() == before


def test_deprecated_execution_route_alias(fleet_file):
    r = CliRunner().invoke(cli, ["execution", "route", "show", "my-fintech-app", "--from-file", "-f", str(fleet_file)])
    assert r.exit_code == 0
    assert "deprecated" in r.stderr and "fleet route" in r.stderr
    assert "Preferred pool:   pool-local-main" in r.stdout
    assert "execution" not in CliRunner().invoke(cli, ["--help"]).output


def _variant(fleet_file: Path, old: str, new: str) -> str:
    text = fleet_file.read_text()
    assert old in text
    text = text.replace(old, new, 1)
    fleet_file.write_text(text)
    return text


ROUTING_BLOCK = ("    routing:\n      mode: preferred-with-fallback\n      preferred_pool: pool-local-main\n"
                 "      fallback_pool: pool-cloud-e2b\n      model: claude-3-5-sonnet\n")


@pytest.mark.parametrize("args,expected", [
    (["--preferred-pool", "pool-cloud-e2b", "--fallback-pool", "pool-local-main"],
     "    routing: {mode: preferred-with-fallback, preferred_pool: pool-cloud-e2b, fallback_pool: pool-local-main, "
     "model: claude-3-5-sonnet}"),
    (["--preferred-pool", "pool-local-main"],
     "    routing: {mode: preferred-only, preferred_pool: pool-local-main, model: claude-3-5-sonnet}"),
])
def test_route_set_flow_style_edits_only_that_line(fleet_file, args, expected):
    before = _variant(fleet_file, ROUTING_BLOCK, "    routing: {mode: preferred-with-fallback, preferred_pool: "
                      "pool-local-main, fallback_pool: pool-cloud-e2b, model: claude-3-5-sonnet}\n")
    r = run("route", "set", "my-fintech-app", *args, "-f", str(fleet_file))
    assert r.exit_code == 0, r.output
    diff = changed_lines(before, fleet_file.read_text())
    assert diff[1:] == ["+" + expected] and len(diff) == 2


def test_route_set_flow_style_first_entry_removed_and_added_back(fleet_file):
    before = _variant(fleet_file, ROUTING_BLOCK, "    routing: {fallback_pool: pool-cloud-e2b, mode: preferred-with-fallback,"
                      " preferred_pool: pool-local-main, model: claude-3-5-sonnet}\n")
    assert run("route", "set", "my-fintech-app", "--preferred-pool", "pool-local-main", "-f", str(fleet_file)).exit_code == 0
    assert changed_lines(before, fleet_file.read_text())[1] == \
        "+    routing: {mode: preferred-only, preferred_pool: pool-local-main, model: claude-3-5-sonnet}"


def test_route_set_keeps_crlf_bom_and_symlinks(tmp_path, fleet_file):
    real = tmp_path / "real.yaml"
    real.write_bytes(b"\xef\xbb\xbf" + fleet_file.read_text().replace("\n", "\r\n").encode())
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    r = run("route", "set", "my-fintech-app", "--preferred-pool", "pool-cloud-e2b", "--fallback-pool", "pool-local-main",
            "-f", str(link))
    assert r.exit_code == 0, r.output
    assert link.is_symlink()
    data = real.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    assert b"\r\n" in data and data.count(b"\n") == data.count(b"\r\n"), "no mixed line endings"
    assert b"      preferred_pool: pool-cloud-e2b\r\n      fallback_pool: pool-local-main\r\n" in data


def test_route_set_value_on_its_own_line(fleet_file):
    before = _variant(fleet_file, "      mode: preferred-only\n      preferred_pool: pool-k8s-batch\n",
                      "      mode: preferred-only\n      preferred_pool:\n        pool-k8s-batch\n")
    r = run("route", "set", "ledger-batch", "--preferred-pool", "pool-k8s-batch", "--fallback-pool", "pool-local-main",
            "-f", str(fleet_file))
    assert r.exit_code == 0, r.output
    assert changed_lines(before, fleet_file.read_text()) == [
        "-      mode: preferred-only", "+      mode: preferred-with-fallback", "+      fallback_pool: pool-local-main"]


@pytest.mark.parametrize("routing_of_other", ["*fin", "{<<: *fin, model: claude-3-5-haiku}"])
def test_route_set_refuses_routing_shared_through_anchors(fleet_file, routing_of_other):
    text = fleet_file.read_text().replace("    routing:\n      mode: preferred-with-fallback", "    routing: &fin\n"
                                          "      mode: preferred-with-fallback", 1)
    text = text.replace("  # preferred-only: the Kubernetes pool", f"  - id: other-app\n    tenant: fin-prod\n"
                        f"    routing: {routing_of_other}\n\n  # preferred-only: the Kubernetes pool", 1)
    fleet_file.write_text(text)
    for project in ("other-app", "my-fintech-app"):
        r = CliRunner().invoke(cli, ["route", "set", project, "--preferred-pool", "pool-cloud-e2b", "-f", str(fleet_file)])
        assert r.exit_code == 1, r.output
        assert "shared through a YAML anchor, alias or merge key" in r.output
        assert "Traceback" not in r.output
    assert fleet_file.read_text() == text
