"""The agent's local unix sockets: the control socket and the credential socket (one JSON line each way).

Server side: `serve_json_socket` is started by fleet.agents.agent. Client side: `request` is called by
`fleet agent pause|resume|drain|status` (fleet.cli.agent_cmds) and, for the credential socket, by a session
process running on the host. Requests are `{"cmd": "status" | "pause" | "resume" | "drain"}` on the control
socket and `{"session_id": "…"}` on the credential socket; replies are `{"ok": true, …}` or
`{"ok": false, "error": "…"}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fleet.errors import FleetError

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class AgentNotRunning(FleetError):
    """No agent listens on the control socket of that state dir."""


async def serve_json_socket(path: Path, handler: Handler, *, max_clients: int | None = None,
                            timeout: float = 5.0) -> asyncio.AbstractServer:
    """Listen on unix socket `path` (mode 0600); each connection sends one JSON line, gets one back within
    `timeout`. With `max_clients` (a session's credential socket: the session is hostile), a connection beyond that
    many open ones is closed at once, so that the peer cannot hold the agent's file descriptors."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    open_clients = 0

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_clients
        if max_clients is not None and open_clients >= max_clients:
            writer.close()
            return
        open_clients += 1
        try:
            try:  # a line of at most the reader's limit (64 KiB), one JSON object, nested at most as json allows
                line = await asyncio.wait_for(reader.readline(), timeout)
                request = json.loads(line or b"{}")
                if not isinstance(request, dict):
                    raise ValueError("expected a JSON object")
                reply = await handler(request)
            except (ValueError, RecursionError) as exc:
                reply = {"ok": False, "error": f"bad request: {str(exc)[:200]}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            open_clients -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    server = await asyncio.start_unix_server(on_client, path=str(path), backlog=max_clients or 100)
    os.chmod(path, 0o600)
    return server


def request(path: Path, payload: dict[str, Any], *, timeout: float = 5.0) -> dict[str, Any]:
    """Blocking client: send one JSON line to the socket at `path` and return the reply."""
    if not path.exists():
        raise AgentNotRunning(f"no agent is running with state dir {path.parent} (no {path.name})",
                              hint="start one with `fleet agent run`, or pass --state-dir")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps(payload).encode() + b"\n")
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if chunk.endswith(b"\n"):
                    break
    except (ConnectionRefusedError, FileNotFoundError) as exc:
        raise AgentNotRunning(f"no agent is running with state dir {path.parent} (stale {path.name})",
                              hint="start one with `fleet agent run`") from exc
    except OSError as exc:
        raise FleetError(f"cannot talk to the agent at {path}: {exc}") from exc
    try:
        return json.loads(b"".join(chunks))
    except ValueError as exc:
        raise FleetError(f"the agent at {path} sent a malformed reply") from exc
