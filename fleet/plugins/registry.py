"""The backend registry: finds Backend classes through the `fleet.backends` entry-point group.

A plugin that fails to load becomes a warning (returned, not raised), never a crash, and a row of `fleet backends
list` (fleet.cli.backend_cmds) with the reason. Called by the CLI to validate pool settings and compose `fleet
schema`, and later by the controller to create capacity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points

from fleet.plugins.base import Backend

GROUP = "fleet.backends"


@dataclass(frozen=True)
class Installed:
    """One entry point of the group: where it comes from, and what loading it gave."""

    name: str
    target: str  # module:attribute
    package: str | None
    version: str | None
    backend: type[Backend] | None = None
    error: str | None = None  # why it failed to load

    @property
    def description(self) -> str:
        return self.backend.description if self.backend is not None else ""


@dataclass
class Registry:
    backends: dict[str, type[Backend]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    installed: list[Installed] = field(default_factory=list)

    def settings_schemas(self) -> dict[str, dict]:
        return {name: cls.settings_schema() for name, cls in self.backends.items()}

    def settings_validators(self) -> dict:
        return {name: cls.validate_settings for name, cls in self.backends.items()}


def load_registry() -> Registry:
    """Every installed backend; broken plugins are reported in `warnings`."""
    reg = Registry()
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        package, version = (dist.name, dist.version) if dist is not None else (None, None)
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Backend)):
                raise TypeError(f"{ep.value} is not a fleet Backend subclass")
            if ep.name in reg.backends:
                raise ValueError(f"another package already installs a backend named {ep.name!r}")
        except Exception as exc:  # a third-party plugin may fail in any way (BaseException: a SystemExit too)
            why = f"{type(exc).__name__}: {str(exc)[:300]}"
            reg.warnings.append(f"backend plugin {ep.name!r} failed to load: {why}")
            reg.installed.append(Installed(ep.name, ep.value, package, version, error=why))
            continue
        reg.backends[ep.name] = cls
        reg.installed.append(Installed(ep.name, ep.value, package, version, backend=cls))
    return reg
