"""fleet.yaml's diagnostics as CI annotations, so that a validation error shows on its line in the PR/MR diff.

`github_commands` renders GitHub Actions workflow commands (`::error file=…,line=…,col=…,title=…::message`,
escaped as the Actions toolkit escapes them); `gitlab_report` renders a GitLab Code Quality report (the Code
Climate issue list GitLab reads from `artifacts:reports:codequality`), with a fingerprint that stays the same
when the line moves. Both name files relative to the repository root (`repo_path`: GITHUB_WORKSPACE,
CI_PROJECT_DIR, else the working directory), as the providers match annotations to the diff by that path.
Pure; called by `fleet validate --format github|gitlab` (fleet.cli.config_cmds).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fleet.schema.diagnostics import Diagnostic

#: Code Quality severities for fleet's two (GitLab: info, minor, major, critical, blocker)
GITLAB_SEVERITY = {"error": "major", "warning": "minor"}


def repo_root(env: Mapping[str, str], provider: str) -> Path:
    """The repository root the provider resolves annotation paths against."""
    name = "GITHUB_WORKSPACE" if provider == "github" else "CI_PROJECT_DIR"
    return Path(env.get(name) or os.getcwd())


def repo_path(file: str, root: Path) -> str:
    """`file` relative to `root` when it lies under it (POSIX separators), else as given."""
    path = Path(file)
    full = path if path.is_absolute() else Path(os.getcwd()) / path
    try:
        return Path(os.path.normpath(full)).relative_to(os.path.normpath(root.resolve())).as_posix()
    except ValueError:
        return path.as_posix()


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _message(d: Diagnostic) -> str:
    text = d.message + (f" (at {d.json_path})" if d.path else "")
    return text + (f"\nhint: {d.hint}" if d.hint else "")


def github_commands(diagnostics: Iterable[Diagnostic], root: Path) -> list[str]:
    """One `::error …::` or `::warning …::` line per diagnostic."""
    lines = []
    for d in diagnostics:
        props = {"file": repo_path(d.file, root)}
        if d.line:
            props["line"] = str(d.line)
            if d.col:
                props["col"] = str(d.col)
        props["title"] = f"fleet validate: {d.code}"
        rendered = ",".join(f"{k}={_escape_property(v)}" for k, v in props.items())
        lines.append(f"::{d.severity} {rendered}::{_escape_data(_message(d))}")
    return lines


def gitlab_report(diagnostics: Iterable[Diagnostic], root: Path) -> list[dict[str, Any]]:
    """The Code Quality issues of `diagnostics` (a JSON array once dumped)."""
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for d in diagnostics:
        path = repo_path(d.file, root)
        basis = "\0".join([path, d.code, d.json_path, d.message])
        n = seen.get(basis, 0)
        seen[basis] = n + 1
        fingerprint = hashlib.sha256(f"{basis}\0{n}".encode()).hexdigest()
        out.append({
            "type": "issue",
            "check_name": f"fleet/{d.code}",
            "description": _message(d),
            "categories": ["Bug Risk"],
            "severity": GITLAB_SEVERITY[d.severity],
            "fingerprint": fingerprint,
            "location": {"path": path,
                         "positions": {"begin": {"line": max(d.line, 1), "column": max(d.col, 1)}}},
        })
    return out
