"""The `e2b` backend: worker agents in e2b sandboxes (official e2b SDK, imported only here).

Declares the settings of an e2b pool. Found through the `fleet.backends` entry point; the sandbox
lifecycle is added with the backends work.
"""

from __future__ import annotations

from pydantic import Field

from fleet.plugins.base import Backend, BackendSettings


class E2BSettings(BackendSettings):
    template: str = Field(..., description="e2b sandbox template that runs the agent.")
    timeout_s: int = Field(3600, ge=1, le=86400, description="Sandbox lifetime in seconds.")
    api_key_env: str = Field("E2B_API_KEY", pattern=r"^[A-Z_][A-Z0-9_]*$", description="Environment variable with the e2b API key.")
    metadata: dict[str, str] = Field(default_factory=dict, description="Extra sandbox metadata.")


class E2BBackend(Backend):
    name = "e2b"
    description = "agent sandboxes in the e2b cloud"
    settings_model = E2BSettings
