"""The `docker` backend: worker agents in Docker containers (official docker SDK, imported only here).

Declares the settings of a docker pool. Found through the `fleet.backends` entry point; the container
lifecycle is added with the backends work.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fleet.plugins.base import Backend, BackendSettings


class DockerSettings(BackendSettings):
    image: str = Field(..., description="Image of the agent container (built or imported locally).")
    docker_host: str | None = Field(None, description="Docker daemon URL (default: DOCKER_HOST or the local socket).")
    network_mode: Literal["host", "bridge", "none"] = Field("host", description="Container network mode.")
    cpus: float | None = Field(None, gt=0, description="CPU limit per container.")
    memory: str | None = Field(None, pattern=r"^[0-9]+[kmgKMG]?$", description="Memory limit per container, e.g. 2g.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")


class DockerBackend(Backend):
    name = "docker"
    description = "agent containers on a Docker engine"
    settings_model = DockerSettings
