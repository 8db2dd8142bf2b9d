"""One call to read a fleet.yaml: load, validate against the schema, check references, build models.

`load_fleet(path)` returns a LoadResult with the FleetConfig (None when there are errors), every diagnostic
of every stage at once, the parsed document (for in-place edits) and the reference graph. It never raises for
bad input. Called by the CLI (`fleet validate`, `plan`, `apply`, `route …`) and by tests.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
from pydantic import ValidationError

from fleet.schema.diagnostics import Diagnostic, has_errors
from fleet.schema.loading import LoadedDocument, load_document, load_text
from fleet.schema.models import FleetConfig, pool_from_resolved
from fleet.schema.references import SettingsValidator, check_references
from fleet.schema.validation import validate_data


@dataclass
class LoadResult:
    document: LoadedDocument
    config: FleetConfig | None = None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    graph: nx.DiGraph | None = None

    @property
    def ok(self) -> bool:
        return self.config is not None and not has_errors(self.diagnostics)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]


def load_fleet(path: str | Path, *, backends: Mapping[str, SettingsValidator] | None = None,
               now: dt.datetime | None = None) -> LoadResult:
    """Read, validate and model one fleet.yaml file."""
    return _finish(load_document(path), backends, now)


def load_fleet_text(text: str, file: str = "<string>", *, backends: Mapping[str, SettingsValidator] | None = None,
                    now: dt.datetime | None = None) -> LoadResult:
    """Same as load_fleet, for YAML given as text."""
    return _finish(load_text(text, file), backends, now)


def _finish(doc: LoadedDocument, backends: Mapping[str, SettingsValidator] | None, now: dt.datetime | None) -> LoadResult:
    result = LoadResult(doc, diagnostics=list(doc.diagnostics))
    if doc.data is None:
        return result
    result.diagnostics += validate_data(doc)
    checked = check_references(doc, backends=backends, now=now)
    result.diagnostics += checked.diagnostics
    result.graph = checked.graph
    result.diagnostics.sort(key=lambda d: (d.line, d.col, d.severity != "error"))
    if has_errors(result.diagnostics):
        return result
    try:
        data = dict(doc.data)
        data["pools"] = [pool_from_resolved(checked.pools[p["id"]].data) for p in data.get("pools", [])]
        data["source_hash"] = "sha256:" + hashlib.sha256(doc.text.encode()).hexdigest()
        data.pop("$schema", None)
        result.config = FleetConfig.model_validate(data)
    except (ValidationError, ValueError, KeyError) as exc:  # the schema should make this unreachable
        result.diagnostics.append(Diagnostic(f"internal model check failed: {exc}", doc.file, 1, 1, code="model"))
    return result
