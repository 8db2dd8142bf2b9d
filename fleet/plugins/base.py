"""The Backend base class: the seam every capacity backend (local, docker, kubernetes, e2b, third-party) plugs into.

A backend declares `name` and a pydantic `settings_model`; its JSON Schema fragment (`settings_schema()`) is
composed into `fleet schema`, and `validate_settings()` checks a pool's `settings:` block, returning plain
(path, message) problems that fleet.schema.api turns into positioned diagnostics. Lifecycle methods (observe,
create, destroy instances) are added by the backends issue. Subclassed by fleet.plugins.* and found through the
`fleet.backends` entry-point group by fleet.plugins.registry.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError


class BackendSettings(BaseModel):
    """Base of every backend's settings model: unknown keys are errors (typos must be caught)."""

    model_config = ConfigDict(extra="forbid")


class Backend:
    """A capacity backend. Subclasses set `name`, `description` and `settings_model`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    settings_model: ClassVar[type[BackendSettings]] = BackendSettings

    @classmethod
    def settings_schema(cls) -> dict[str, Any]:
        """The JSON Schema fragment of this backend's `settings:` block."""
        schema = cls.settings_model.model_json_schema()
        schema.setdefault("description", f"Settings of the {cls.name} backend.")
        return schema

    @classmethod
    def validate_settings(cls, settings: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
        """Problems with a pool's settings, as (path inside settings, message); empty when valid."""
        try:
            cls.settings_model.model_validate(settings)
        except ValidationError as exc:
            out = []
            for err in exc.errors():
                loc = tuple(err["loc"])
                if err["type"] == "extra_forbidden":
                    msg = f"unknown {cls.name} setting {loc[-1]!r}"
                elif err["type"] == "missing":
                    msg = f"missing required {cls.name} setting {loc[-1]!r}"
                else:
                    msg = f"{cls.name} setting {'.'.join(map(str, loc))}: {err['msg']}"
                out.append((loc, msg))
            return out
        return []
