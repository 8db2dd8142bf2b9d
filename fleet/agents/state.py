"""The agent's state directory: identity (machine ID), host credential (mode 0600), admin status, sockets.

Read and written by fleet.agents.agent; the CLI (`fleet agent …`, `fleet down`) reads the paths from here.
Layout of STATE_DIR:
    identity.json   machine_id, tenant, pools, enrolled_at (written at first enrollment, stable afterwards)
    credential      the host credential (random token; the server stores only its SHA-256), mode 0600
    status.json     the admin status the operator set (active, paused, draining), kept across restarts
    agent.pid       PID of the running agent
    agent.log       the agent's log (`fleet agent logs`)
    control.sock    local control socket (`fleet agent pause|resume|drain|status`)
    cred.sock       credential socket: a session running here reads its identity from it
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.errors import FleetError

DEFAULT_AGENT_STATE_DIR = "~/.local/state/fleet-agent"
AGENT_PROCESS_MARK = "agent run"  # in the command line of every running agent (PID-file checks)


class StateError(FleetError):
    """The agent's state directory is unusable."""


@dataclass(frozen=True)
class AgentPaths:
    root: Path

    @classmethod
    def of(cls, state_dir: str | Path) -> AgentPaths:
        return cls(Path(state_dir).expanduser().absolute())

    @property
    def identity(self) -> Path:
        return self.root / "identity.json"

    @property
    def credential(self) -> Path:
        return self.root / "credential"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def pid(self) -> Path:
        return self.root / "agent.pid"

    @property
    def log(self) -> Path:
        return self.root / "agent.log"

    @property
    def control_socket(self) -> Path:
        return self.root / "control.sock"

    @property
    def credential_socket(self) -> Path:
        return self.root / "cred.sock"

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        for sock in (self.control_socket, self.credential_socket):
            if len(str(sock)) > 100:
                raise StateError(f"state dir path too long for a unix socket: {sock}",
                                 hint="use a shorter --state-dir")


def load_identity(paths: AgentPaths) -> tuple[dict[str, Any], str] | None:
    """The saved identity and credential, or None before the first enrollment."""
    if not paths.identity.exists():
        return None
    try:
        identity = json.loads(paths.identity.read_text())
        credential = paths.credential.read_text().strip()
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read the agent identity in {paths.root}: {exc}",
                         hint="remove identity.json and credential to enroll again") from exc
    if not isinstance(identity, dict) or "machine_id" not in identity or not credential:
        raise StateError(f"corrupt agent identity in {paths.root}",
                         hint="remove identity.json and credential to enroll again")
    return identity, credential


def save_identity(paths: AgentPaths, identity: dict[str, Any], credential: str) -> None:
    paths.ensure()
    fd = os.open(paths.credential, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(credential + "\n")
    os.chmod(paths.credential, 0o600)
    tmp = paths.identity.with_suffix(".tmp")
    tmp.write_text(json.dumps(identity, indent=2, sort_keys=True) + "\n")
    tmp.replace(paths.identity)


def load_status(paths: AgentPaths) -> str:
    try:
        status = json.loads(paths.status.read_text()).get("status", "active")
    except (OSError, ValueError, AttributeError):
        return "active"
    return status if status in ("active", "paused", "draining") else "active"


def save_status(paths: AgentPaths, status: str) -> None:
    tmp = paths.status.with_suffix(".tmp")
    tmp.write_text(json.dumps({"status": status}) + "\n")
    tmp.replace(paths.status)
