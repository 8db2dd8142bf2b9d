"""The Plan: the data structure of changes between desired and live state, and what it is based on.

A Plan is plain, versioned data (pydantic): changes (address, action, before/after, attribute-level diffs,
reason), drift, consequences for dispatch, and the basis it was computed against (config hash, applied-state
revision and per-resource revisions, tool version, format version). Human, JSON and Markdown renderers
(fleet.reconciler.rendering) are views of it; `fleet plan --out` saves `to_json()`, `fleet apply plan.json`
loads it with `Plan.from_json()`. Sensitive values are masked before they enter a Plan. Pure; built by
fleet.reconciler.diff.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleet.errors import FleetError

FORMAT_VERSION = 1
Action = Literal["create", "update", "replace", "delete"]
SYMBOLS = {"create": "+", "update": "~", "replace": "-/+", "delete": "-"}


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AttributeChange(_Model):
    """One attribute's before -> after; `path` is dotted (`capacity.max_concurrent_sessions`)."""

    path: str
    before: Any = None
    after: Any = None
    sensitive: bool = False
    forces_replacement: bool = False


class Change(_Model):
    """One resource change. `reason` is for humans only; apply never reads it."""

    address: str
    kind: str
    id: str
    action: Action
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    attributes: tuple[AttributeChange, ...] = ()
    reason: str = ""
    tenant: str | None = None
    base_revision: int = 0

    @property
    def symbol(self) -> str:
        return SYMBOLS[self.action]


class DriftItem(_Model):
    """Observed state that differs from applied state, made outside fleet."""

    address: str
    kind: Literal["host", "pool", "instance"]
    message: str
    tenant: str | None = None
    pool: str | None = None


class ProjectCapacity(_Model):
    """Session slots a project can use, before and after the change (None = unbounded, ∞)."""

    project: str
    tenant: str | None = None
    before: int | None = 0
    after: int | None = 0
    used: int = 0

    @property
    def changed(self) -> bool:
        return self.before != self.after


class Consequence(_Model):
    """Something the change does to dispatch that a reviewer must see."""

    kind: Literal["route-without-capacity", "host-locked-out", "host-orphaned", "host-status", "host-not-registered",
                  "session-unroutable", "project-unroutable"]
    subject: str
    message: str
    tenant: str | None = None
    pool: str | None = None


class Consequences(_Model):
    capacity: tuple[ProjectCapacity, ...] = ()
    items: tuple[Consequence, ...] = ()

    @property
    def capacity_changes(self) -> tuple[ProjectCapacity, ...]:
        return tuple(c for c in self.capacity if c.changed)


class Basis(_Model):
    """What a plan was computed against; apply refuses a saved plan whose basis moved."""

    config_file: str | None = None
    config_hash: str | None = None
    applied_revision: int = 0
    applied_resources: dict[str, int] = Field(default_factory=dict)
    tool_version: str = ""
    created_at: str = Field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))


class Summary(_Model):
    add: int = 0
    change: int = 0
    destroy: int = 0

    @property
    def line(self) -> str:
        return f"Plan: {self.add} to add, {self.change} to change, {self.destroy} to destroy."


class Plan(_Model):
    format_version: int = FORMAT_VERSION
    refresh_only: bool = False
    basis: Basis = Field(default_factory=Basis)
    changes: tuple[Change, ...] = ()
    drift: tuple[DriftItem, ...] = ()
    consequences: Consequences = Field(default_factory=Consequences)
    errors: tuple[str, ...] = ()

    @property
    def summary(self) -> Summary:
        add = sum(1 for c in self.changes if c.action in ("create", "replace"))
        change = sum(1 for c in self.changes if c.action == "update")
        destroy = sum(1 for c in self.changes if c.action in ("delete", "replace"))
        return Summary(add=add, change=change, destroy=destroy)

    @property
    def no_op(self) -> bool:
        """True when applying would change nothing (drift alone is not a change, except in refresh-only)."""
        return not self.changes and not (self.refresh_only and self.drift)

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["no_op"] = self.no_op
        data["summary"] = self.summary.model_dump()
        return data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, source: str = "plan") -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FleetError(f"{source} is not a saved plan (invalid JSON at line {exc.lineno})",
                             hint="save one with `fleet plan --out plan.json`") from exc
        except RecursionError as exc:
            raise FleetError(f"{source} is not a saved plan (JSON nested too deeply)",
                             hint="save one with `fleet plan --out plan.json`") from exc
        if not isinstance(data, dict) or "format_version" not in data:
            raise FleetError(f"{source} is not a saved fleet plan", hint="save one with `fleet plan --out plan.json`")
        if data["format_version"] != FORMAT_VERSION:
            version = repr(data["format_version"])
            version = version if len(version) <= 40 else version[:39] + "…"
            raise FleetError(f"{source} has plan format version {version}; this fleet reads version {FORMAT_VERSION}",
                             hint="re-run `fleet plan --out …` with this version of fleet")
        data.pop("no_op", None)
        data.pop("summary", None)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise FleetError(f"{source} is not a valid saved plan: {exc.errors()[0]['msg']}") from exc
