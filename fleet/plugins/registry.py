"""The backend registry: finds Backend classes through the `fleet.backends` entry-point group.

A plugin that fails to load becomes a warning (returned, not raised), never a crash. Called by the CLI to
validate pool settings and compose `fleet schema`, and later by the controller to create capacity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points

from fleet.plugins.base import Backend

GROUP = "fleet.backends"


@dataclass
class Registry:
    backends: dict[str, type[Backend]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def settings_schemas(self) -> dict[str, dict]:
        return {name: cls.settings_schema() for name, cls in self.backends.items()}

    def settings_validators(self) -> dict:
        return {name: cls.validate_settings for name, cls in self.backends.items()}


def load_registry() -> Registry:
    """Every installed backend; broken plugins are reported in `warnings`."""
    reg = Registry()
    for ep in entry_points(group=GROUP):
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Backend)):
                raise TypeError(f"{ep.value} is not a fleet Backend subclass")
        except Exception as exc:  # a third-party plugin may fail in any way
            reg.warnings.append(f"backend plugin {ep.name!r} failed to load: {type(exc).__name__}: {exc}")
            continue
        reg.backends[ep.name] = cls
    return reg
