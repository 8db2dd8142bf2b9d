"""Reading the live fleet for CLI commands: the hosts the control plane observes, as ObservedHost models.

`observe_hosts(bus)` reads every host from `fleet server` page by page (`fleet.v1.api.hosts.observed`, compact
rows of one consistent snapshot; fleet.service.client.observed_rows) and returns them as ObservedHost models,
or none with a warning when no `fleet server` answers (plan still works from the applied state). Used by plan,
apply and route test.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any

from pydantic import TypeAdapter, ValidationError

from fleet.bus.connection import Bus
from fleet.bus.messages import OBSERVED_COLUMNS, ProtocolError
from fleet.reconciler.live import ObservedHost, ObservedSession
from fleet.service.client import ServerUnavailable, observed_rows

_FIELDS = OBSERVED_COLUMNS  # the row columns are named as ObservedHost's fields
_HOSTS = TypeAdapter(list[ObservedHost])


def observed_host(h: dict[str, Any]) -> ObservedHost:
    """An ObservedHost from a host view of `fleet.v1.api.hosts.list` / `.get` (the `describe()` dict)."""
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


def hosts_from_rows(rows: list[list[Any]]) -> list[ObservedHost]:
    """ObservedHosts from rows of `fleet.v1.api.hosts.observed` (columns: fleet.bus.messages.OBSERVED_COLUMNS).

    Validated in one pydantic call (faster than constructing 100k models one by one); a malformed row is a
    ProtocolError naming it, not a crash later in the plan.
    """
    items = []
    for row in rows:
        item = dict(zip(_FIELDS, row, strict=False))  # later columns are additive: ignored
        sessions = item.get("sessions")
        if sessions:
            item["sessions"] = [{"session_id": s[0], "phase": s[1]} if isinstance(s, list) and len(s) >= 2 else s
                                for s in sessions]
        items.append(item)
    try:
        return _HOSTS.validate_python(items)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = first.get("loc", ())
        row = rows[where[0]] if where and isinstance(where[0], int) and where[0] < len(rows) else None
        raise ProtocolError(f"malformed observed host {row[0] if row else '?'}: "
                            f"{'.'.join(str(p) for p in where[1:])}: {first.get('msg')}") from exc


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic GC while 100k long-lived objects are built (it would traverse them again and again, doubling
    the time); they are all kept, so there is nothing to collect. Afterwards what exists now (the hosts, the
    loaded config) is frozen out of the collector's generations, so the rest of the command (diff, consequences)
    does not pay full collections over it either: a CLI command is short-lived, and these objects live as long."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was:
            gc.enable()


async def observe_hosts(bus: Bus, *, required: bool = False) -> tuple[list[ObservedHost], str | None]:
    """Hosts from the control plane, and a warning when it could not be asked (unless required)."""
    with _gc_paused():
        try:
            hosts = await observed_rows(bus, convert=hosts_from_rows)  # page by page, while the server builds the next
        except ServerUnavailable as exc:
            if required:
                raise
            return [], f"{exc.message}: hosts were not observed (consequences and drift use the applied state only)"
        return hosts, None
