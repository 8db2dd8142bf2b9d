"""Helpers for integration tests that run the real `fleet` CLI as a subprocess against a real nats-server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "fleet.yaml.example"
# random, at least 128 bits (fleet refuses weaker enrollment key secrets)
SECRETS = {"FLEET_KEY_LOCAL_DEV": "3f1c9a7be4d2f05a6c8e1b7d9f2a4c6e8b0d2f4a6c8e0b2d",
           "FLEET_KEY_HEALTH_GPU": "9e7c5a3f1d0b8e6c4a2f0d9b7e5c3a1f8d6b4e2c0a9f7d5b"}


def fleet_env(url: str, **extra: str) -> dict[str, str]:
    # the test's own settings are dropped, but not its identity (live_fleet runs the CLI as the admin)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_") or k == "FLEET_NATS_CREDS"}
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
