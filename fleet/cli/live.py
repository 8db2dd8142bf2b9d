"""Reading the live fleet for CLI commands: connect, snapshot the applied config, list hosts from the server.

`observe(nats)` returns the hosts the control plane reports as ObservedHost models (or none, with a warning,
when no `fleet server` answers: plan still works from the applied state). Used by plan, apply and route test.
"""

from __future__ import annotations

from typing import Any

from fleet.bus import subjects
from fleet.bus.connection import Bus
from fleet.reconciler.live import ObservedHost, ObservedSession
from fleet.service.client import ServerUnavailable, call


def observed_host(h: dict[str, Any]) -> ObservedHost:
    sessions = h.get("sessions") or {}
    return ObservedHost(
        machine_id=h["id"],
        hostname=h.get("hostname") or "",
        tenant=h.get("tenant") or "",
        key_id=h.get("key_id"),
        pools=tuple(h.get("pools") or ()),
        labels=tuple(h.get("labels") or ()),
        models=tuple(h.get("models") or ()),
        status=h.get("status") or "offline",
        running=int(sessions.get("running") or 0),
        max_sessions=int(sessions.get("max") or 0),
        sessions=tuple(ObservedSession(session_id=s.get("id") or s.get("session_id", "?"), phase=s.get("phase", "?"))
                       for s in h.get("active_sessions") or [] if isinstance(s, dict)),
    )


async def observe_hosts(bus: Bus, *, required: bool = False) -> tuple[list[ObservedHost], str | None]:
    """Hosts from the control plane, and a warning when it could not be asked (unless required)."""
    try:
        hosts = await call(bus, subjects.API_HOSTS_LIST, timeout=10.0)
    except ServerUnavailable as exc:
        if required:
            raise
        return [], f"{exc.message}: hosts were not observed (consequences and drift use the applied state only)"
    return [observed_host(h) for h in hosts], None
