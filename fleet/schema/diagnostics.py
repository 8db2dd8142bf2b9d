"""Diagnostics: configuration problems as data, collected and reported all at once.

Every stage of reading fleet.yaml (loading, JSON Schema validation, models, reference checks) returns
Diagnostic objects rather than raising. The CLI renders them as `FILE:LINE:COL: error: message (at $.path)` with
an optional hint line, or as JSON for CI. Called by fleet.schema.* and fleet.cli.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

Severity = Literal["error", "warning"]
PathPart = str | int


def json_path(parts: Sequence[PathPart]) -> str:
    """Render a path as `$.pools[2].mode` (keys that are not identifiers are quoted: `$["a b"]`)."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.replace("_", "").replace("-", "").isalnum() and not part[:1].isdigit():
            out += f".{part}"
        else:
            out += f"[{part!r}]"
    return out


@dataclass(frozen=True)
class Diagnostic:
    """One problem in a configuration file. line/col are 1-based; 0 means unknown."""

    message: str
    file: str
    line: int = 0
    col: int = 0
    path: tuple[PathPart, ...] = ()
    severity: Severity = "error"
    code: str = "error"
    hint: str | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def json_path(self) -> str:
        return json_path(self.path)

    def format(self) -> str:
        """`file:line:col: error: message (at $.path)`, plus an indented hint line when there is one."""
        loc = f"{self.file}:{self.line}:{self.col}" if self.line else self.file
        text = f"{loc}: {self.severity}: {self.message}"
        if self.path:
            text += f" (at {self.json_path})"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("extra")
        data["path"] = self.json_path
        return data


def did_you_mean(word: object, choices: Iterable[object]) -> str | None:
    """A 'did you mean …?' hint for a near-miss, or None."""
    if not isinstance(word, str):
        return None
    options = [str(c) for c in choices]
    matches = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not matches:
        lowered = {o.lower().replace("-", "_"): o for o in options}
        key = word.lower().replace("-", "_")
        if key in lowered:
            matches = [lowered[key]]
    return f"did you mean {matches[0]!r}?" if matches else None


def sort_key(d: Diagnostic) -> tuple:
    return (d.file, d.line, d.col, d.message)


def has_errors(diagnostics: Iterable[Diagnostic]) -> bool:
    return any(d.severity == "error" for d in diagnostics)
