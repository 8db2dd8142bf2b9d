"""The agent's state directory: identity (machine ID), host credential (mode 0600), admin status, sockets.

Read and written by fleet.agents.agent; the CLI (`fleet agent …`, `fleet down`) reads the paths from here.
Layout of STATE_DIR:
    identity.json   machine_id, tenant, pools, enrolled_at (written at first enrollment, stable afterwards)
    host.creds      the host's NATS identity, mode 0600: the JWT the server signed at enrollment and the nkey seed
                    the agent generated (the seed never left this machine)
    status.json     the admin status the operator set (active, paused, draining), kept across restarts
    agent.pid       PID of the running agent
    agent.log       the agent's log (`fleet agent logs`)
    control.sock    local control socket (`fleet agent pause|resume|drain|status`)
    s/<n>.sock      the credential socket of one running session (a sandboxed session sees it at
                    /run/fleet/session.sock; it answers for that session only and is gone when it ends)
    sessions/<id>/  the scratch directory of one running session (owned by the session's uid, removed after)
    outbox/<id>.json  the final report of a session that the server has not acknowledged yet (fleet.agents.outbox)
Everything is the agent's alone: the directory is 0700 and the files 0600, owned by the agent's uid.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.bus.trust import write_secret
from fleet.errors import FleetError
from fleet.schema.vocabulary import ADMIN_STATUSES

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
    def host_creds(self) -> Path:
        return self.root / "host.creds"

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

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        for path in self.root.iterdir():  # older fleets left their files 0644 (in a 0755 dir)
            if path.is_file() and not path.is_symlink():
                os.chmod(path, 0o600)
        for sock in (self.control_socket, self.root / "s" / "99999999.sock"):
            if len(str(sock)) > 100:
                raise StateError(f"state dir path too long for a unix socket: {sock}",
                                 hint="use a shorter --state-dir")


MAX_IDENTITY_BYTES = 64 * 1024


def load_identity(paths: AgentPaths) -> dict[str, Any] | None:
    """The saved identity (its host.creds beside it), or None before the first enrollment."""
    if not paths.identity.exists():
        return None
    try:
        with open(paths.identity, "rb") as fh:
            raw = fh.read(MAX_IDENTITY_BYTES + 1)
        identity = json.loads(raw) if len(raw) <= MAX_IDENTITY_BYTES else None
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read the agent identity in {paths.root}: {exc}",
                         hint="remove identity.json and host.creds to enroll again") from exc
    if not isinstance(identity, dict) or not isinstance(identity.get("machine_id"), str):
        raise StateError(f"corrupt agent identity in {paths.root}",
                         hint="remove identity.json and host.creds to enroll again")
    if not paths.host_creds.is_file():
        raise StateError(f"the agent identity in {paths.root} has no host.creds (enrolled by an older fleet?)",
                         hint="remove identity.json to enroll again")
    return identity


def save_identity(paths: AgentPaths, identity: dict[str, Any], host_creds: str) -> None:
    """host.creds first (mode 0600 from its creation), then identity.json: an identity is complete once it exists."""
    paths.ensure()
    write_secret(paths.host_creds, host_creds)
    write_secret(paths.identity, json.dumps(identity, indent=2, sort_keys=True) + "\n")


def load_status(paths: AgentPaths) -> str:
    try:
        status = json.loads(paths.status.read_text()).get("status", "active")
    except (OSError, ValueError, AttributeError):
        return "active"
    return status if status in ADMIN_STATUSES else "active"


def save_status(paths: AgentPaths, status: str) -> None:
    write_secret(paths.status, json.dumps({"status": status}) + "\n")
