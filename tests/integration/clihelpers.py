"""Helpers for integration tests that run the real `fleet` CLI as a subprocess against a real nats-server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "fleet.yaml.example"
SECRETS = {"FLEET_KEY_LOCAL_DEV": "local-dev-secret-7c1f9a", "FLEET_KEY_HEALTH_GPU": "health-gpu-secret-55e2b0"}


def fleet_env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(SECRETS)
    env.update({"FLEET_NATS_URL": url, "NO_COLOR": "1", "CI": "true"})
    env.update(extra)
    return env


def fleet(args: list[str], url: str, *, cwd: Path, timeout: float = 60, input: str | None = None,
          **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleet.cli.main", *args], cwd=cwd, env=fleet_env(url, **extra),
                          capture_output=True, text=True, timeout=timeout, input=input)


def popen(args: list[str], url: str, *, cwd: Path, **kw) -> subprocess.Popen:
    extra = kw.pop("env_extra", {})
    return subprocess.Popen([sys.executable, "-m", "fleet.cli.main", *args], cwd=cwd, env=fleet_env(url, **extra), **kw)
