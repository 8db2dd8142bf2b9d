"""The `local` backend: worker agents as subprocesses of the machine that runs the fleet server.

Declares the settings of a local pool. Found through the `fleet.backends` entry point; the instance
lifecycle is added with the backends work.
"""

from __future__ import annotations

from pydantic import Field

from fleet.plugins.base import Backend, BackendSettings


class LocalSettings(BackendSettings):
    workdir: str = Field(".fleet/workers", description="Directory under which each local agent gets its state dir.")
    python: str | None = Field(None, description="Python interpreter that runs the agents (default: the fleet's own).")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables for the agents.")


class LocalBackend(Backend):
    name = "local"
    description = "agent processes on this machine"
    settings_model = LocalSettings
