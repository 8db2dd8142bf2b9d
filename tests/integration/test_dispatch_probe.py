"""An attacker's probe of the dispatch path (sessions), which test_security_probe.py (the bus) did not cover: a real
nats-server in operator mode, a real `fleet server`, real agents, and an attacker who holds either the creds of one
of those agents (a compromised host of tenant fin-prod: it may publish on its own work subjects, nothing else) or a
submitter identity of a tenant.

Each weakness found was a test that failed while the attack succeeded, marked `xfail(strict=True)` with the finding
in its reason; every one is fixed now and its marker removed (docs/security.md, the threat model, names each):
a `security:` log line per forged claim; terminal escapes stored from a host's final note; other tenants' project
names told apart from unknown ones; a full re-read of the sessions bucket per submit of an old session's ID; a
cancelled session re-queued when its host was lost before confirming; cancel and timeout enforced by the host only;
lists ordered by client-chosen IDs. Attacks that were already refused have a plain test here only where
tests/integration/test_dispatch.py and test_security_probe.py do not cover them.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import pytest

from fleet.bus import subjects
from fleet.bus.connection import Bus, connect
from fleet.bus.kv import open_store
from fleet.bus.messages import FINAL_PHASES, OutputChunk, SessionRecord, WorkEvent, WorkReply, decode
from fleet.bus.trust import read_creds
from fleet.sessions.client import Client
from tests.conftest import LiveFleet, wait_for
from tests.integration.test_dispatch import HEALTH, MAIN, client, server_log, setup, until, worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


# ------------------------------------------------------------------------------------------------ helpers


def _creds(lf: LiveFleet, name: str) -> str:
    """The creds file of a running agent: what an attacker who took over that host holds."""
    return str(lf.agent_dir(name) / "host.creds")


def _inbox(creds: str) -> str:
    return f"_INBOX.{read_creds(creds).public}.probe"


async def _blast(bus: Bus, subject: str, payloads: list[bytes], *, reply: str = "") -> None:
    """Publish every payload once, as fast as NATS takes them (requests with `reply`: nobody waits for the answers)."""
    for i, payload in enumerate(payloads):
        await bus.nc.publish(subject, payload, reply=reply)
        if i % 500 == 499:
            await bus.flush()
    await bus.flush()


async def _ask(bus: Bus, machine_id: str, ev: WorkEvent | bytes) -> WorkReply | dict[str, Any]:
    """One work event, request/reply, on the host's own subject: a WorkReply, or the error reply as a dict."""
    data = await bus.request(f"{subjects.host_work(machine_id)}.event",
                             ev if isinstance(ev, bytes) else ev.encode(), timeout=5)
    obj = json.loads(data)
    return decode(WorkReply, data) if "ok" in obj and "error" not in obj else obj


def _two_fin_workers(lf: LiveFleet) -> tuple[str, str]:
    """Two fin-prod agents on pool-local-main (2 slots each): w-a and w-b; their machine IDs."""
    keys = setup(lf)
    return worker(lf, "w-a", keys["fin"], MAIN), worker(lf, "w-b", keys["fin"], MAIN)


# ------------------------------------------------------------------------------------------------ a compromised host


def test_a_hosts_flood_of_claims_on_other_hosts_sessions_is_not_a_log_flood(live_fleet: LiveFleet) -> None:
    """w-b (compromised) floods its own event subject with completions of a session of w-a, and w-a's own session with
    wrong fencing tokens: the session keeps running, and the server's log does not grow a `security:` line per
    message (the count is in the metrics)."""
    a, b = _two_fin_workers(live_fleet)
    with client(live_fleet) as c:
        s = c.submit("solo-app", ["sleep", "60"])
        victim = s.host
        attacker = b if victim == a else a
        running = until(c, s.id, "running")
        assert running.fence is not None
        creds = _creds(live_fleet, "w-b" if attacker == b else "w-a")

        async def attack() -> WorkReply | dict[str, Any]:
            async with await connect(live_fleet.url, creds=creds) as bus:
                claims = [WorkEvent(session=s.id, fence=running.fence + i % 3, phase="succeeded", exit_code=0,
                                    at=time.time()).encode() for i in range(2000)]
                await _blast(bus, f"{subjects.host_work(attacker)}.event", claims, reply=_inbox(creds))
                return await _ask(bus, attacker, WorkEvent(session=s.id, fence=running.fence, phase="failed",
                                                           exit_code=1, at=time.time()))

        last = asyncio.run(attack())
        assert isinstance(last, WorkReply) and last.stale, last
        still = c.get(s.id)
        assert still.phase == "running" and still.host == victim
        lines = [ln for ln in server_log(live_fleet).splitlines() if f"security: host {attacker} reported" in ln]
        assert 1 <= len(lines) <= 5, f"{len(lines)} security lines for one flood"
        c.cancel(s.id)


def test_a_host_cannot_store_terminal_escapes_nor_complete_a_session_twice(live_fleet: LiveFleet) -> None:
    """The holder of a session reports it finished with a hostile note (an escape sequence that retitles and clears
    the operator's terminal, a bidi override, a NUL) and an exit code out of range, then again (failed) and back to
    running under the same token: what is stored is printable, and the first accepted completion is the only one."""
    a, b = _two_fin_workers(live_fleet)
    with client(live_fleet) as c:
        s = c.submit("solo-app", ["sleep", "60"])
        running = until(c, s.id, "running")
        holder = running.host
        assert holder is not None and running.fence is not None
        creds = _creds(live_fleet, "w-a" if holder == a else "w-b")
        hostile = "\x1b]0;pwned\x07\x1b[2J\u202eevil\x00 note\r\n"

        async def attack() -> list[Any]:
            async with await connect(live_fleet.url, creds=creds) as bus:
                ev = lambda **kw: WorkEvent.model_construct(**{  # noqa: E731  (unvalidated: the attacker's own)
                    "v": 1, "session": s.id, "fence": running.fence, "at": time.time(), "started_at": None,
                    "output_tail": "", "note": None, **kw})
                out: list[Any] = [await _ask(bus, holder, ev(phase="failed", exit_code=10**6).encode())]
                out.append(await _ask(bus, holder, ev(phase="failed", exit_code=-3, note=hostile)))
                out.append(await _ask(bus, holder, ev(phase="succeeded", exit_code=0)))
                out.append(await _ask(bus, holder, ev(phase="running", exit_code=None)))
                return out

        too_big, first, second, back = asyncio.run(attack())
        assert isinstance(too_big, dict) and too_big["error"] == "malformed", too_big
        assert isinstance(first, WorkReply) and first.ok, first
        assert isinstance(second, WorkReply) and second.stale and isinstance(back, WorkReply) and back.stale
        done = c.get(s.id)
        assert (done.phase, done.exit_code) == ("failed", -3)
        assert [e.phase for e in done.history].count("failed") == 1 and "succeeded" not in [e.phase for e in
                                                                                              done.history]
        texts = [done.reason or ""] + [e.note or "" for e in done.history]
        bad = [t for t in texts if any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 or ch in "\u202e" for ch in t)]
        assert bad == [], bad
        assert "evil" in (done.reason or "")  # kept, made harmless: not dropped


def test_output_of_a_running_session_is_bounded_and_a_flood_of_it_takes_no_host_offline(live_fleet: LiveFleet) -> None:
    """The holder of a running session sends its output as fast as it can (8 KiB chunks, for 4 s), and output and
    completions for sessions it does not hold: the server keeps at most 64 KiB of the session's output, `logs`
    returns no more, and another tenant's host, heartbeating every 0.2 s with a 1 s grace, never goes offline."""
    keys = setup(live_fleet)
    fin = worker(live_fleet, "w-fin", keys["fin"], MAIN)
    worker(live_fleet, "w-health", keys["health"], HEALTH)
    bystander = live_fleet.machine_id("w-health")
    creds = _creds(live_fleet, "w-fin")
    with client(live_fleet) as c:
        s = c.submit("solo-app", ["sleep", "60"])
        running = until(c, s.id, "running")
        assert running.fence is not None

        async def flood() -> int:
            sent = 0
            chunk = "x" * 8192
            other = "f" * 20
            async with await connect(live_fleet.url, creds=creds) as bus:
                out, event = f"{subjects.host_work(fin)}.output", f"{subjects.host_work(fin)}.event"
                stray = WorkEvent(session=other, fence=1, phase="succeeded", at=time.time()).encode()
                deadline = time.monotonic() + 4
                while time.monotonic() < deadline:
                    for _ in range(200):
                        await bus.nc.publish(out, OutputChunk(session=s.id, fence=running.fence, offset=sent * 8192,
                                                              data=chunk).encode())
                        await bus.nc.publish(out, OutputChunk(session=other, fence=1, offset=0, data=chunk).encode())
                        await bus.nc.publish(event, stray, reply=_inbox(creds))
                        sent += 1
                    await bus.flush()
            return sent

        sent = asyncio.run(flood())
        assert sent > 1000, sent

        async def read_logs() -> dict[str, Any]:
            async with await connect(live_fleet.url, creds=live_fleet.creds("admin")) as bus:
                req = json.dumps({"v": 1, "id": s.id, "offset": 0}).encode()
                return json.loads(await bus.request(subjects.api_sessions("_all", "logs"), req, timeout=10))["data"]

        got = wait_for(lambda: (d := asyncio.run(read_logs()))["offset"] > 0 and d, 10, what="the flood handled")
        assert len(got["text"].encode()) <= 64 * 1024 and set(got["text"]) <= {"x"}
        assert c.get(s.id).phase == "running"
        c.cancel(s.id)
    assert f"host {bystander} (w-health) offline" not in server_log(live_fleet)


# ------------------------------------------------------------------------------------------------ a submitter


def test_a_submitter_learns_nothing_of_another_tenants_projects_or_sessions(live_fleet: LiveFleet) -> None:
    """A health-prod submitter probes fin-prod: a fin project and a project nobody has get the same answer (no oracle
    of project names), repeated 300 times it is not a log line each; a fin session's ID, its prefix, and a random ID
    get the same not_found from get, cancel, wait and logs; submitting a fin session's own ID (client-chosen IDs) is
    refused without saying whose it is, and changes nothing of the fin session."""
    keys = setup(live_fleet)
    worker(live_fleet, "w-fin", keys["fin"], MAIN)
    health = live_fleet.issue("health-ci", "submitter", tenant="health-prod")
    with client(live_fleet) as c:
        victim = c.submit("solo-app", ["sleep", "60"], env={"TOKEN": "fin-secret"})
        until(c, victim.id, "running")

    async def probe() -> dict[str, Any]:
        async with await connect(live_fleet.url, creds=health) as bus:
            async def ask(verb: str, body: dict[str, Any]) -> dict[str, Any]:
                data = await bus.request(subjects.api_sessions("health-prod", verb), json.dumps({"v": 1, **body})
                                         .encode(), timeout=10)
                return json.loads(data)

            out: dict[str, Any] = {
                "fin_project": await ask("submit", {"project": "my-fintech-app", "command": ["true"]}),
                "no_project": await ask("submit", {"project": "no-such-app", "command": ["true"]}),
                "same_id": await ask("submit", {"id": victim.id, "project": "health-app", "command": ["true"]}),
            }
            await asyncio.gather(*(ask("submit", {"project": "my-fintech-app", "command": ["true"]})
                                   for _ in range(300)))
            for name, ident in (("full", victim.id), ("prefix", victim.id[:14]), ("random", "0123456789abcdef0123")):
                for verb in ("get", "cancel", "wait", "logs"):
                    reply = await ask(verb, {"id": ident})
                    out[f"{verb}_{name}"] = (reply["ok"], reply.get("error"),
                                             reply.get("message", "").replace(ident, "<id>"))
            return out

    out = asyncio.run(probe())
    fin, nobody = out["fin_project"], out["no_project"]
    assert (fin["ok"], fin["error"]) == (nobody["ok"], nobody["error"]) == (False, "refused")
    assert fin["message"].replace("my-fintech-app", "P") == nobody["message"].replace("no-such-app", "P")
    assert (out["same_id"]["ok"], out["same_id"]["error"]) == (False, "refused")
    assert "fin" not in out["same_id"]["message"] and "solo-app" not in out["same_id"]["message"]
    for verb in ("get", "cancel", "wait", "logs"):
        assert out[f"{verb}_full"] == out[f"{verb}_prefix"] == out[f"{verb}_random"], (verb, out)
        assert out[f"{verb}_full"][:2] == (False, "not_found")
    lines = [ln for ln in server_log(live_fleet).splitlines() if "security: a submitter of tenant health-prod" in ln]
    assert 1 <= len(lines) <= 5, f"{len(lines)} security lines"
    with client(live_fleet) as c:
        still = c.get(victim.id)
        assert (still.phase, still.tenant, still.project, still.env) == ("running", "fin-prod", "solo-app", ["TOKEN"])
        c.cancel(victim.id)


def test_submitting_the_id_of_an_old_session_is_answered_from_the_bucket_without_reading_it_all(
        live_fleet: LiveFleet) -> None:
    """Session IDs are the client's choice; a session that finished long ago is in the bucket but no longer in the
    leader's memory (only the last 2,000 are). Submitting its ID again (its own tenant: a client that retries; another
    tenant: an attacker) must be answered from that one key: the stored session, or `refused`, and never make the
    leader read the whole bucket again (once per request, for as many old IDs as a submitter knows)."""
    keys = setup(live_fleet)
    worker(live_fleet, "w-fin", keys["fin"], MAIN)
    fin = live_fleet.issue("fin-ci", "submitter", tenant="fin-prod")
    health = live_fleet.issue("health-ci", "submitter", tenant="health-prod")
    old = SessionRecord(id="0000000000ab00000001", tenant="fin-prod", project="solo-app", command=["true"],
                        phase="succeeded", exit_code=0, submitted_at=1.0, finished_at=2.0)

    async def scenario() -> dict[str, Any]:
        async with await live_fleet.bus("server") as server:  # an old session, written long ago
            await (await open_store(server, subjects.BUCKET_SESSIONS, create=False)).create(old.id, old.encode())
        out: dict[str, Any] = {}
        for who, creds, tenant, project in (("fin", fin, "fin-prod", "solo-app"),
                                            ("health", health, "health-prod", "health-app")):
            async with await connect(live_fleet.url, creds=creds) as bus:
                body = json.dumps({"v": 1, "id": old.id, "project": project, "command": ["true"]}).encode()
                out[who] = [json.loads(await bus.request(subjects.api_sessions(tenant, "submit"), body, timeout=10))
                            for _ in range(3)]
        return out

    took_over = server_log(live_fleet).count("dispatcher took over")
    out = asyncio.run(scenario())
    assert [(r["ok"], (r.get("data") or {}).get("phase"), r.get("error")) for r in out["fin"]] == [(True, "succeeded", None)] * 3, out["fin"]
    assert [(r["ok"], r.get("error")) for r in out["health"]] == [(False, "refused")] * 3, out["health"]
    assert server_log(live_fleet).count("dispatcher took over") == took_over


def test_a_host_that_ignores_cancel_and_timeout_cannot_hold_a_session_forever(live_fleet: LiveFleet) -> None:
    """A compromised host keeps its lease (heartbeats listing the session as running) but ignores the cancel order
    and the session's timeout (here: its agent is frozen and the attacker heartbeats in its place, with its creds).
    The sessions must still end: the server enforces a cancel and a timeout itself after a grace (HOST_GRACE_S),
    rather than leave the submitter waiting as long as the host likes."""
    keys = setup(live_fleet)
    mid = worker(live_fleet, "w-fin", keys["fin"], MAIN)
    creds = _creds(live_fleet, "w-fin")
    agent = next(p for p in live_fleet.procs.procs if p.log.name == "agent-w-fin.out")
    with client(live_fleet) as c:
        timed = c.submit("solo-app", ["sleep", "20"], timeout=1.0)
        cancelled = c.submit("solo-app", ["sleep", "20"])
        fences = {s.id: until(c, s.id, "running").fence for s in (timed, cancelled)}
        agent.popen.send_signal(signal.SIGSTOP)
        stop = asyncio.Event()

        async def heartbeat() -> None:
            async with await connect(live_fleet.url, creds=creds) as bus:
                started = time.time()
                while not stop.is_set():
                    beat = {"v": 1, "seq": 1, "sent_at": time.time(), "started_at": started, "status": "active",
                            "running": 2, "version": "0.1.0",
                            "sessions": [{"id": sid, "phase": "running", "fence": f} for sid, f in fences.items()]}
                    await bus.publish(subjects.heartbeat(mid), json.dumps(beat).encode())
                    await asyncio.sleep(0.1)

        async def scenario() -> dict[str, str]:
            task = asyncio.create_task(heartbeat())
            try:
                async with Client(live_fleet.url, creds=live_fleet.creds("admin")) as ac:
                    await ac.cancel(cancelled.id)
                    deadline = time.monotonic() + 20  # the host's grace is 10 s (HOST_GRACE_S)
                    while time.monotonic() < deadline:
                        phases = {s: (await ac.get(s)).phase for s in fences}
                        if all(p in FINAL_PHASES for p in phases.values()):
                            break
                        await asyncio.sleep(0.2)
                    return phases
            finally:
                stop.set()
                await task

        try:
            phases = asyncio.run(scenario())
        finally:
            agent.popen.send_signal(signal.SIGKILL)
            agent.popen.send_signal(signal.SIGCONT)
        assert phases == {timed.id: "timed_out", cancelled.id: "cancelled"}, phases


def test_a_cancelled_session_whose_host_dies_before_confirming_stays_cancelled(live_fleet: LiveFleet) -> None:
    """A session is cancelled while its host is unresponsive (frozen: it never confirms); the host then goes
    offline. Its sessions are lost and re-queued, but this one was cancelled: it must end cancelled, not run again."""
    keys = setup(live_fleet)
    worker(live_fleet, "w-fin", keys["fin"], MAIN)
    agent = next(p for p in live_fleet.procs.procs if p.log.name == "agent-w-fin.out")
    with client(live_fleet) as c:
        s = c.submit("solo-app", ["sleep", "20"])
        until(c, s.id, "running")
        agent.popen.send_signal(signal.SIGSTOP)
        try:
            c.cancel(s.id)
            live_fleet.wait_status("w-fin", "offline", 10)
            after = until(c, s.id, FINAL_PHASES | {"queued"}, 10)
        finally:
            agent.popen.send_signal(signal.SIGKILL)
            agent.popen.send_signal(signal.SIGCONT)
        assert (after.phase, after.attempt) == ("cancelled", 1), (after.phase, after.attempt, after.reason)


def test_a_submitters_chosen_ids_do_not_decide_what_is_listed_as_newest(live_fleet: LiveFleet) -> None:
    """Session IDs are the client's choice, and start with a timestamp by convention only: a fin submitter picks IDs
    from the year 10889 (`ffffffffffff…`). A list (newest first, as many as the limit) must still show what was
    submitted last, here a health session, instead of the fin sessions forever."""
    setup(live_fleet)
    fin = live_fleet.issue("fin-ci", "submitter", tenant="fin-prod")
    health = live_fleet.issue("health-ci", "submitter", tenant="health-prod")
    with client(live_fleet, creds=fin) as c:
        future = [c.submit("solo-app", ["true"], session_id=f"ffffffffffff{i:08x}") for i in range(3)]
    with client(live_fleet, creds=health) as c:
        last = c.submit("health-app", ["true"])
    with client(live_fleet) as admin:
        newest = admin.list(limit=2)
    assert [s.id for s in newest] == [future[-1].id, last.id], [s.id for s in newest]


def test_a_submitter_cannot_override_what_the_host_tells_a_session_nor_smuggle_env_names(
        live_fleet: LiveFleet) -> None:
    """The session's own variables come before the host's: FLEET_SESSION_ID, FLEET_ATTEMPT, FLEET_PROJECT and
    FLEET_CREDENTIALS_SOCKET set by the submitter are overwritten (a command that checks its ID or attempt, or talks
    to the host's credential socket, must get the real ones); the agent's own environment (its enrollment key) is not
    passed on; a name with `=` or a NUL, or an empty one, is refused before anything is stored."""
    keys = setup(live_fleet)
    worker(live_fleet, "w-fin", keys["fin"], MAIN)
    forged = {"FLEET_SESSION_ID": "f" * 20, "FLEET_ATTEMPT": "9", "FLEET_PROJECT": "health-app",
              "FLEET_CREDENTIALS_SOCKET": "/tmp/evil.sock"}
    script = 'echo "$FLEET_SESSION_ID $FLEET_ATTEMPT $FLEET_PROJECT $FLEET_CREDENTIALS_SOCKET ${FLEET_ENROLL_KEY:-none}"'
    with client(live_fleet) as c:
        s = c.submit("solo-app", ["sh", "-c", script], env=forged, wait=20)
    sid, attempt, project, socket, key = s.output_tail.split()
    assert (s.phase, sid, attempt, project, key) == ("succeeded", s.id, "1", "solo-app", "none"), s.output_tail
    assert socket == "/run/fleet/session.sock"  # its own, in its sandbox (tests/integration/test_sandbox.py)

    async def smuggle() -> list[tuple[bool, str | None]]:
        async with await connect(live_fleet.url, creds=live_fleet.creds("admin")) as bus:
            out = []
            for name in ("LD_PRELOAD=/tmp/x.so", "A\u0000B", "", "1X", "A" * 200):
                body = json.dumps({"v": 1, "project": "solo-app", "command": ["true"], "env": {name: "x"}}).encode()
                reply = json.loads(await bus.request(subjects.api_sessions("_all", "submit"), body, timeout=10))
                out.append((reply["ok"], reply.get("error")))
            return out

    assert asyncio.run(smuggle()) == [(False, "malformed")] * 5
    with client(live_fleet) as c:
        assert [x.id for x in c.list()] == [s.id]
