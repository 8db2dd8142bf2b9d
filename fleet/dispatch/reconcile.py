"""What the leader's reconciliation decides: the re-queues, stops, failures and resends of a DispatchPlan. No I/O.

Called by the dispatcher (fleet.dispatch.dispatcher) every RECONCILE_S with its hosts (fleet.scheduler.HostState:
the sessions it gave each), its live sessions (fleet.dispatch.store.SessionState), the registry's entries (each
host's last heartbeat: what it reports running) and the monotonic clock; the plan applier (fleet.dispatch.applier)
carries the answer out. It compares what each live host reports running with what it was given:

- a session a host runs without a current assignment (unknown, another host's, another fencing token): stop it;
- an assignment a host never took up: sent again after ASSIGN_RESEND_S, up to ASSIGN_TRIES times, then re-queued;
- a running session the host no longer lists (its agent restarted) for MISSING_S: lost, re-queued;
- a cancel not confirmed within HOST_GRACE_S, or a session live HOST_GRACE_S past its timeout: the server ends it
  itself (a failure in the plan: cancelled or timed_out) and tells its host to stop it. A host that keeps its lease
  but ignores its orders must not hold a session as long as it likes.

It changes nothing but the detector's own memory on the session states (`missing_since`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fleet.bus.messages import LIVE_PHASES, MAX_REPORTED_SESSIONS
from fleet.scheduler import Failure, HostState, Requeue, Resend, Stop

ASSIGN_RESEND_S = 3.0  # an assignment a live host does not report running after this long is sent again
ASSIGN_TRIES = 3  # ... this many times, then the session is re-queued
MISSING_S = 3.0  # a running session its live host has not listed in its heartbeats for this long is lost
HOST_GRACE_S = 10.0  # a host confirms a cancel, or ends a session past its timeout, within this; else the server does
NOT_ASSIGNED = "no longer assigned to this host"


def enforce(hosts: Mapping[str, HostState], sessions: Mapping[str, Any], now: float
            ) -> tuple[list[Failure], list[Stop]]:
    """The sessions the server ends by its own clock, and the orders to stop them on their hosts."""
    failures: list[Failure] = []
    stops: list[Stop] = []
    for host in hosts.values():
        for sid in host.sessions:
            st = sessions.get(sid)
            if st is None or st.record.phase not in LIVE_PHASES:
                continue
            if st.cancel_at is not None and now - st.cancel_at > HOST_GRACE_S:
                phase, why = "cancelled", f"cancelled; its host did not confirm within {HOST_GRACE_S:g}s"
            elif st.deadline is not None and now > st.deadline:
                phase, why = "timed_out", (f"its host did not end it within its timeout of "
                                           f"{st.record.timeout_s:g}s and {HOST_GRACE_S:g}s more")
            else:
                continue
            failures.append(Failure(sid, phase, why))
            stops.append(Stop(host.machine_id, sid, st.fence, NOT_ASSIGNED))
    return failures, stops


def reconcile(hosts: Mapping[str, HostState], sessions: Mapping[str, Any], entries: Mapping[str, Any], now: float
              ) -> tuple[list[Failure], list[Stop], list[Requeue], list[Resend]]:
    """(failures, stops, requeues, resends): see the module docstring."""
    failures, stops = enforce(hosts, sessions, now)
    ended = {f.session for f in failures}
    requeues: list[Requeue] = []
    resends: list[Resend] = []
    for mid, host in hosts.items():
        entry = entries.get(mid)
        if entry is None or not entry.live or entry.beat is None:
            continue
        reported = {s.session_id: s for s in entry.beat.sessions}
        for sid, s in reported.items():
            st = sessions.get(sid)
            if st is None or st.record.host != mid or (s.fence is not None and s.fence != st.fence):
                stops.append(Stop(mid, sid, s.fence, NOT_ASSIGNED))
        beat_age = now - entry.beat.at
        complete = len(entry.beat.sessions) < MAX_REPORTED_SESSIONS  # else the report was cut short
        for sid in host.sessions:
            st = sessions.get(sid)
            if st is None or sid in ended:
                continue
            if sid in reported:
                st.missing_since = None
                continue
            if st.record.phase == "running":
                if not complete or beat_age > MISSING_S:
                    continue
                if st.missing_since is None:
                    st.missing_since = now
                elif now - st.missing_since > MISSING_S:  # the host forgot it (its agent restarted)
                    requeues.append(Requeue(sid, f"host {mid} no longer runs it"))
                continue
            if now - st.assigned_at > ASSIGN_RESEND_S and beat_age < ASSIGN_RESEND_S:
                if st.sends >= ASSIGN_TRIES:
                    requeues.append(Requeue(sid, f"host {mid} did not take up the assignment"))
                else:
                    resends.append(Resend(sid))
    return failures, stops, requeues, resends
