"""The session phases and every transition between them, as one table. Pure.

A session's history (fleet.bus.messages.SessionRecord.history) is a walk through this table: queued -> assigned ->
running -> a final phase, with `lost` when its host goes away (then queued again, or failed when out of attempts,
or cancelled when a cancel was pending). `assigned` may go straight to a final phase (the host ran and ended it
before its running event arrived: the dispatcher records `running` first, see TRANSITIONS). Final phases have no
way out. The dispatcher (fleet.dispatch.dispatcher) checks every history event it appends against `allowed`, and a
host's report against `allowed` before it accepts it; tests/unit/test_scheduler.py walks the whole table and holds
fleet.bus.messages' LIVE_PHASES / FINAL_PHASES / SessionPhase equal to it.
"""

from __future__ import annotations

from collections.abc import Mapping

PHASES: tuple[str, ...] = ("queued", "assigned", "running", "succeeded", "failed", "cancelled", "timed_out", "lost")
FINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
LIVE: frozenset[str] = frozenset({"assigned", "running"})  # on a host, under a fencing token

#: (from, to) -> what makes it happen. Anything not listed is not a transition.
TRANSITIONS: Mapping[tuple[str, str], str] = {
    ("queued", "assigned"): "the scheduler placed it on a host",
    ("queued", "cancelled"): "cancelled before it ran",
    ("assigned", "running"): "its host started it",
    ("assigned", "cancelled"): "cancelled, or its host was gone when it was cancelled",
    ("assigned", "timed_out"): "the server ended it past its timeout",
    ("assigned", "lost"): "its host went away, or never took it up",
    ("running", "succeeded"): "its command exited 0",
    ("running", "failed"): "its command exited non-zero, or could not start",
    ("running", "cancelled"): "cancelled and its host stopped it (or did not confirm in time)",
    ("running", "timed_out"): "it ran past its timeout",
    ("running", "lost"): "its host went away, or no longer runs it",
    ("lost", "queued"): "re-queued for another attempt",
    ("lost", "failed"): "lost with no attempts left",
    ("lost", "cancelled"): "lost while a cancel was pending",
}


def allowed(before: str, after: str) -> bool:
    """Whether a session may go from phase `before` to phase `after`."""
    return (before, after) in TRANSITIONS


def successors(phase: str) -> tuple[str, ...]:
    """The phases a session in `phase` may go to next (none for a final phase)."""
    return tuple(b for (a, b) in TRANSITIONS if a == phase)
