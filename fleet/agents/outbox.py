"""The agent's outbox: the final report of each session it ran, kept on disk until the server answered it.

Used by fleet.agents.sessions.Runner: `put` when a session ends (before the report is sent), `drop` once the server
acknowledged it (or said it is no longer this host's), `load` when the agent starts (the reports its previous run
could not deliver: the server was restarting, NATS was away, the agent was killed meanwhile), which the Runner
sends again and lists in its heartbeats meanwhile, so that no server re-queues a session that this host finished.
The server deduplicates by (session, fencing token, phase): the same report twice is answered ok once recorded.

Layout: STATE_DIR/outbox/<session id>.json, one WorkEvent each, mode 0600, written atomically (a temporary file,
then a rename). A file that is not a valid report (corrupt, oversize, a name that is not a session ID) is logged
and removed: the outbox is this agent's own, but a bad file must not stop it from starting.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path

from pydantic import ValidationError

from fleet.bus.messages import MAX_MESSAGE_BYTES, WorkEvent
from fleet.bus.trust import write_secret

log = logging.getLogger(__name__)

MAX_KEPT = 1000  # reports kept at most (the oldest are never dropped: a new one beyond this is sent unkept)
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Outbox:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "outbox"
        self.kept: set[str] = set()

    def _path(self, session: str) -> Path | None:
        return self.dir / f"{session}.json" if _NAME.fullmatch(session) else None

    def put(self, event: WorkEvent) -> bool:
        """Keep `event` until `drop`; False if it cannot be kept (full, or an unusable name): it is sent anyway."""
        path = self._path(event.session)
        if path is None or (len(self.kept) >= MAX_KEPT and event.session not in self.kept):
            return False
        try:
            write_secret(path, event.model_dump_json())
        except OSError as exc:
            log.warning("cannot keep the report of session %s in %s: %s", event.session, self.dir, exc)
            return False
        self.kept.add(event.session)
        return True

    def drop(self, session: str) -> None:
        path = self._path(session)
        self.kept.discard(session)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def load(self) -> list[WorkEvent]:
        """The reports kept by an earlier run of this agent, oldest first."""
        if not self.dir.is_dir():
            return []
        found: list[tuple[float, WorkEvent]] = []
        for path in sorted(self.dir.iterdir())[: MAX_KEPT * 2]:
            try:
                if not path.name.endswith(".json") or not _NAME.fullmatch(path.name[:-5]) or not path.is_file():
                    raise ValueError("not a report file")
                if path.stat().st_size > MAX_MESSAGE_BYTES:
                    raise ValueError("too large")
                event = WorkEvent.model_validate_json(path.read_bytes())
                if event.session != path.name[:-5] or len(found) >= MAX_KEPT:
                    raise ValueError("not this file's session" if event.session != path.name[:-5] else "too many")
            except (OSError, ValueError, ValidationError) as exc:
                log.warning("removing %s from the outbox: %s", path.name[:80], str(exc).splitlines()[0][:200])
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            found.append((event.at, event))
            self.kept.add(event.session)
        return [event for _, event in sorted(found, key=lambda item: item[0])]
