"""The invalid corpus: every file under tests/invalid/ breaks exactly one rule, and says how it must be reported.

Each file opens with comment lines (readable as bytes, so binary and non-UTF-8 files carry them too):

    # what is wrong
    # expect: LINE:COL: error: MESSAGE-SUBSTRING
    # expect-path: JSON-PATH            (optional; belongs to the expect line above it)
    # expect-hint: HINT-SUBSTRING       (optional)

A file may carry several `expect` lines when one mistake is necessarily reported twice. The test loads each
file with `load_fleet` (a fixed `now`, the installed backends) and requires exactly the expected errors at
exactly those positions; then it runs `fleet validate -f FILE` (human and JSON) through click's CliRunner and
requires exit 1, `FILE:LINE:COL: error: …` and no traceback. Inputs that cannot be committed (a directory, a
missing file, a 50 MB file) are generated in tmp_path.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleet.cli.main import cli
from fleet.plugins.registry import load_registry
from fleet.schema.api import load_fleet

CORPUS = Path(__file__).resolve().parents[1] / "invalid"
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
BACKENDS = load_registry().settings_validators()

# A file that cannot carry a comment (it must stay empty) keeps its expectation here.
NO_HEADER = {"file-empty.yaml": ["# expect: 1:1: error: file is empty", "# expect-hint: start from fleet.yaml.example"]}


@dataclass
class Expect:
    line: int
    col: int
    message: str
    path: str | None = None
    hint: str | None = None


_EXPECT = re.compile(r"^# expect: (\d+):(\d+): error: (.+)$")


def expectations(file: Path) -> list[Expect]:
    lines = NO_HEADER.get(file.name) or file.read_bytes().decode("utf-8", errors="replace").splitlines()
    out: list[Expect] = []
    for text in lines:
        if not text.startswith("#"):
            break
        if m := _EXPECT.match(text):
            out.append(Expect(int(m[1]), int(m[2]), m[3].strip()))
        elif text.startswith("# expect-path: "):
            out[-1].path = text.split(": ", 1)[1].strip()
        elif text.startswith("# expect-hint: "):
            out[-1].hint = text.split(": ", 1)[1].strip()
    return out


FILES = sorted(p for p in CORPUS.iterdir() if p.suffix == ".yaml")


def test_corpus_is_complete() -> None:
    assert len(FILES) >= 34
    for file in FILES:
        assert expectations(file), f"{file.name} has no '# expect:' line"


@pytest.mark.parametrize("file", FILES, ids=lambda p: p.stem)
def test_load_fleet_reports_the_expected_diagnostic(file: Path) -> None:
    result = load_fleet(file, backends=BACKENDS, now=NOW)
    assert not result.ok
    assert result.config is None
    expected = expectations(file)
    got = [(d.line, d.col, d.message, d.json_path if d.path else None, d.hint) for d in result.errors]
    assert len(result.errors) == len(expected), f"expected {len(expected)} error(s), got:\n" + "\n".join(
        d.format() for d in result.diagnostics
    )
    assert not result.warnings, [d.format() for d in result.warnings]
    for exp, diag in zip(expected, result.errors, strict=True):
        assert diag.file == str(file)
        assert (diag.line, diag.col) == (exp.line, exp.col), got
        assert exp.message in diag.message, got
        if exp.path is not None:
            assert diag.json_path == exp.path, got
        if exp.hint is not None:
            assert diag.hint is not None and exp.hint in diag.hint, got


@pytest.mark.parametrize("file", FILES, ids=lambda p: p.stem)
def test_fleet_validate_exits_1_with_file_line_col(file: Path) -> None:
    result = CliRunner().invoke(cli, ["validate", "-f", str(file)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    exp = expectations(file)[0]
    first = f"{file}:{exp.line}:{exp.col}: error: "
    line = next((ln for ln in result.output.splitlines() if ln.startswith(first)), None)
    assert line is not None, result.output
    assert exp.message in line
    if exp.path:
        assert line.endswith(f"(at {exp.path})")


@pytest.mark.parametrize("file", FILES, ids=lambda p: p.stem)
def test_fleet_validate_json(file: Path) -> None:
    result = CliRunner().invoke(cli, ["validate", "-f", str(file), "--format", "json"])
    assert result.exit_code == 1, result.output
    payload = json.loads(result.stdout)  # stdout is the JSON alone: diagnostics are not printed as text
    assert payload["valid"] is False
    assert payload["file"] == str(file)
    assert payload["errors"] == len(expectations(file))
    exp = expectations(file)[0]
    diag = next(d for d in payload["diagnostics"] if d["severity"] == "error")
    assert (diag["file"], diag["line"], diag["col"]) == (str(file), exp.line, exp.col)
    assert exp.message in diag["message"]
    if exp.path:
        assert diag["path"] == exp.path


def test_an_inline_secret_is_never_echoed() -> None:
    file = CORPUS / "schema-secret-inline.yaml"
    for args in ([], ["--format", "json"]):
        result = CliRunner().invoke(cli, ["validate", "-f", str(file), *args])
        assert result.exit_code == 1
        assert "fk_live_7hQ2xZ9" not in result.output


# -- inputs generated at test time ---------------------------------------------------------------------------


def _directory(tmp: Path) -> Path:
    (tmp / "conf").mkdir()
    return tmp / "conf"


def _missing(tmp: Path) -> Path:
    return tmp / "nope" / "fleet.yaml"


def _huge(tmp: Path) -> Path:
    path = tmp / "huge.yaml"
    with path.open("wb") as fh:
        fh.write(b"version: 1\nnotes: |\n")
        line = b"  " + b"x" * 1022 + b"\n"
        fh.write(line * (50 * 1024))  # 50 MiB
    return path


def _endless(tmp: Path) -> Path:
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    return Path("/dev/zero")  # its size says 0: the loader must not trust it and read forever


GENERATED = [
    ("directory", _directory, "is a directory, not a fleet.yaml file", "-f DIR/fleet.yaml"),
    ("missing", _missing, "no such file", "fleet.yaml.example"),
    ("50MB", _huge, "file is too large (52.5 MB; the limit is 10 MiB)", "should stay small"),
    ("dev-zero", _endless, "file is too large (more than 10.5 MB; the limit is 10 MiB)", "should stay small"),
]


@pytest.mark.parametrize(("make", "message", "hint"), [g[1:] for g in GENERATED], ids=[g[0] for g in GENERATED])
def test_whole_file_problems(tmp_path: Path, make, message: str, hint: str) -> None:
    path = make(tmp_path)
    result = load_fleet(path, backends=BACKENDS, now=NOW)
    assert not result.ok
    [diag] = result.diagnostics
    # a problem with the whole file has no line: it is printed as `FILE: error: …`
    assert (diag.file, diag.line, diag.col, diag.message) == (str(path), 0, 0, message)
    assert diag.hint and hint in diag.hint

    cli_result = CliRunner().invoke(cli, ["validate", "-f", str(path)])
    assert cli_result.exit_code == 1
    assert f"{path}: error: {message}" in cli_result.output
    assert "Traceback" not in cli_result.output
