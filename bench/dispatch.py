"""Dispatch: submit -> assigned -> completed through a real `fleet server`, against raw NATS request/reply and Celery.

Run: `python bench/dispatch.py [--quick] [--json]` (`make bench` runs every bench with --quick); the figures are
recorded in docs/benchmarks.md. Everything runs in ONE run, on servers the bench starts on free 127.0.0.1 ports in a
temp dir and stops by PID:

- a nats-server in operator mode with a fresh trust directory (fleet.bus.trustdir, as `fleet up` runs it): every
  connection below authenticates with its own JWT-signed identity and permissions;
- (a) raw nats-py request/reply: the bench (an identity that may publish only `bench.echo`, with its own reply
  inbox) to an echo responder in its own process (an identity that may subscribe to `bench.echo` and answer), with
  the payload of a fleet submit request: 1 in flight (p50/p99) and 128 in flight (requests/s); and the JetStream
  write a session costs twice, a KV compare-and-set (fleet.bus.kv.Store.update) of a finished session's record;
- (b) fleet: `fleet apply` of a small fleet (tenant `bench`, pools `pool-noop` and `pool-agents`, 32 slots a host),
  a real `fleet server` process, then **no-op hosts**: 4 hosts enrolled for real (each its own nkey, the enrollment
  key over the enrollment identity, the host JWT the server signs), in one process, each with its own connection:
  they register, heartbeat (fleet.bus.messages.Heartbeat, every 2 s), take each Assignments message (the server's
  assignments of one moment for that host) on their own assign subject and answer it at once with the final
  WorkEvents (phase succeeded) of its sessions in one request on their work subject (`.events`, as an agent
  reports the sessions that ended in the same moment): the real protocol without a subprocess. The client is fleet.sessions.client.Client with a submitter identity of
  tenant `bench`; one session = `submit(project, ["true"], wait=…)`, one request answered when the session is final
  (submit -> stored and assigned -> host -> completed -> reply). 1 in flight (p50/p99) and 128 in flight
  (sessions/s). Also, at 1 in flight, `submit` then `wait(id)` as two requests, the other way a client follows a
  session. Then **real agents**: 4 `fleet agent run` processes (32 slots each) running a real `true` subprocess
  per session, 1 and 128 in flight;
- (c) Celery 5 with a Redis broker and Redis result backend: the bench's own `redis-server` (no persistence), one
  Celery worker process (prefork, concurrency 2 = the cores; --without-gossip/mingle/heartbeat) running a no-op
  task; the client calls `noop.delay().get()` at 1 in flight; at 128 in flight one client thread keeps 128 tasks
  submitted and takes their results in order (cheaper for Celery's client than 128 threads);
- (d) the routing decision: `fleet.scheduler.place()` (what `schedule` does per session) over a pool of 1,000 active hosts (µs a decision,
  median of many); also with the re-ranking the dispatcher does after each decision, and with a label filter that
  1 host in 10 passes.

It prints one table (throughput, p50, p99), the issue's targets (met / not met, with the numbers), and where the time
goes: the CPU time each process spent per operation at 128 in flight (from /proc, with the kernel's part), the NATS
messages and session-bucket writes per session (nats-server's VARZ, the bucket's stream), the rate by tenth of the
run (a falling rate is state that grows), and the 1-in-flight round trip cut in three by wall-clock stamps taken by
the client and the no-op hosts. Nothing fails the
run on a timing. If redis-server or Celery is missing, the Celery baseline is skipped with a line saying why.

    python bench/dispatch.py            # full run (~40 s on 2 cores)
    python bench/dispatch.py --quick    # short run (make bench, ~12 s)
    python bench/dispatch.py --json     # one JSON object
    python bench/dispatch.py --py-spy out.svg   # also profile the fleet server during the 128-in-flight no-op run
    python bench/dispatch.py --cprofile s.prof  # or cProfile it (CPU clock, that run only): python -m pstats s.prof
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from benchkit.measure import CpuMeter, LoopResult, closed_loop, closed_loop_threads, median, percentile  # noqa: E402

from fleet import __version__  # noqa: E402
from fleet.bus import subjects  # noqa: E402
from fleet.bus.api import call  # noqa: E402
from fleet.bus.connection import connect  # noqa: E402
from fleet.bus.embedded import EmbeddedNats, free_port, terminate_child  # noqa: E402
from fleet.bus.enrolling import ReplyKey, enroll_inbox, enrollment_request, request_enrollment  # noqa: E402
from fleet.bus.messages import (  # noqa: E402
    MAX_MESSAGE_BYTES,
    Assignment,
    Assignments,
    Heartbeat,
    JoinReply,
    PhaseEvent,
    RegisterRequest,
    SessionInfo,
    SessionRecord,
    SubmitRequest,
    WorkEvent,
    WorkEvents,
    WorkReplies,
    decode,
    new_session_id,
)
from fleet.bus.trust import Key, Permissions, creds_text, inbox_prefix, write_secret  # noqa: E402
from fleet.bus.trustdir import TrustDir  # noqa: E402
from fleet.scheduler import HostState, Route, Snapshot, place  # noqa: E402
from fleet.schema.models import Pool  # noqa: E402
from fleet.sessions.client import Client  # noqa: E402

TENANT = "bench"
NOOP_POOL, AGENT_POOL, BARE_POOL = "pool-noop", "pool-agents", "pool-agents-bare"
NOOP_PROJECT, AGENT_PROJECT, BARE_PROJECT = "bench-noop", "bench-true", "bench-true-bare"
HOSTS = 4  # no-op hosts, and real agents
SLOTS = 32  # per host: 4 x 32 = 128 slots, the 128 in flight
INFLIGHT = 128
HEARTBEAT_S = 2.0  # the agents' default
ECHO_SUBJECT = "bench.echo"
KEY_ENV = "FLEET_BENCH_KEY"
WAIT_S = 60.0  # a session's submit waits this long at most for its end
CELERY_CONCURRENCY = 2  # prefork processes: the machine's 2 cores

AGENT_TURNS = 2  # the sandboxed and unsandboxed agents are measured in turns, A B A B

SIZES = {  # operations per phase: x_1 at 1 in flight, x_n at 128 in flight, warm: the warm-ups; route: decisions
    "full": {"raw_1": 3000, "raw_n": 40000, "noop_1": 1500, "noop_n": 20000, "agent_1": 300, "agent_n": 4000,
             "celery_1": 1000, "celery_n": 6000, "route": 100_000, "warm": 300, "bulk": 8_000},
    "quick": {"raw_1": 500, "raw_n": 6000, "noop_1": 300, "noop_n": 3000, "agent_1": 60, "agent_n": 640,
              "celery_1": 200, "celery_n": 1500, "route": 20_000, "warm": 128, "bulk": 4_000},
}

# Targets of the scheduler issue (15).
MUST_CELERY_FACTOR = 6.0
MUST_P50_RAW_FACTOR = 4.0  # p50 at 1 in flight: below Celery's and at most this many times raw request/reply's
MUST_SERVER_US = 150.0  # `fleet server` CPU per no-op session at 128 in flight
GOAL_CELERY_FACTOR = 10.0
GOAL_RAW_SHARE = 0.25
GOAL_BULK_CELERY_FACTOR = 20.0  # sessions enqueued by submit_many and run, per second, against Celery's tasks/s
GOAL_ROUTE_US = 50.0
BULK_BATCH = 500  # sessions per submit_many request of the bulk phase (MAX_SUBMIT_BATCH is 1000)


def submit_payload() -> bytes:
    """What the fleet client sends for one no-op session (the raw baseline's payload has the same size)."""
    return SubmitRequest(id=new_session_id(), project=NOOP_PROJECT, command=["true"], wait_s=WAIT_S).encode()


# ============================================================================================ subprocess roles


async def role_echo(url: str, creds: str) -> None:
    """The raw baseline's responder: answers every request on bench.echo with its own payload."""
    bus = await connect(url, creds=creds, connect_timeout=5, name="bench-echo")
    nc = bus.nc

    async def echo(msg: Any) -> None:
        await nc.publish(msg.reply, msg.data)

    await nc.subscribe(ECHO_SUBJECT, cb=echo, pending_msgs_limit=1_000_000, pending_bytes_limit=2**30)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the bench closes our stdin
    await bus.close()


async def role_hosts(url: str, spec_file: str) -> None:
    """No-op hosts: each enrolled host (machine ID + its own creds) connects, registers, heartbeats, and answers
    every Assignments message at once with the final WorkEvents (succeeded) of its sessions, one request on its work
    subject (`.events`) per message, as a fleet agent reports the sessions that ended in the same moment."""
    spec = json.loads(Path(spec_file).read_text())
    counts = {"assigned": 0, "acked": 0, "refused": 0, "errors": 0}
    stamps: dict[str, tuple[float, float]] = {}  # session -> (assignment received, completion acknowledged), wall
    started_at = time.time()
    tasks: set[asyncio.Task] = set()
    hosts = []
    for item in spec:
        mid = item["machine_id"]
        bus = await connect(url, creds=item["creds"], connect_timeout=5, name=f"bench-host {item['hostname']}",
                            persistent=True)
        reply = decode(JoinReply, await bus.request(subjects.register(mid), RegisterRequest(
            hostname=item["hostname"], version=__version__).encode(), timeout=10))
        if not reply.ok:
            raise SystemExit(f"host {item['hostname']} could not register: {reply.message}")
        host = {"mid": mid, "bus": bus, "running": {}, "seq": 0, "events": f"{subjects.host_work(mid)}.events"}
        hosts.append(host)

        async def finish(batch: list[Assignment], received: float, host: dict = host) -> None:
            """The final events of one Assignments message, in one WorkEvents request (as the agent's Reports
            sends the sessions that ended in the same moment)."""
            now = time.time()
            events = [WorkEvent(session=a.session, fence=a.fence, phase="succeeded", exit_code=0, started_at=now,
                                at=now) for a in batch]
            try:
                answer = decode(WorkReplies, await host["bus"].request(
                    host["events"], WorkEvents(items=events).encode(), timeout=10), max_bytes=2**20)
                done = time.time()
                for a, reply in zip(batch, answer.items, strict=True):
                    stamps[a.session] = (received, done)
                    counts["acked" if reply.ok else "refused"] += 1
            except Exception:  # counted; the bench reports it
                counts["errors"] += len(batch)
            finally:
                for a in batch:
                    host["running"].pop(a.session, None)

        async def on_assign(msg: Any, host: dict = host, finish: Any = finish) -> None:
            received = time.time()
            batch = decode(Assignments, msg.data, max_bytes=MAX_MESSAGE_BYTES + 1024).items
            for a in batch:
                counts["assigned"] += 1
                host["running"][a.session] = a.fence
            task = asyncio.get_running_loop().create_task(finish(batch, received))  # as the agent's Runner
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        await bus.subscribe(subjects.host_assign(mid), on_assign)
        await bus.flush()

    async def heartbeats(host: dict) -> None:
        subject = subjects.heartbeat(host["mid"])
        while True:
            host["seq"] += 1
            running = host["running"]
            beat = Heartbeat(seq=host["seq"], sent_at=time.time(), started_at=started_at, status="active",
                             running=min(len(running), 100_000),
                             sessions=[SessionInfo(id=s, phase="running", fence=f)
                                       for s, f in list(running.items())[:128]], version=__version__)
            with contextlib.suppress(Exception):
                await host["bus"].publish(subject, beat.encode())
            await asyncio.sleep(HEARTBEAT_S)

    beaters = [asyncio.get_running_loop().create_task(heartbeats(h)) for h in hosts]
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for t in beaters:
        t.cancel()
    Path(spec_file).with_suffix(".stamps.json").write_text(json.dumps(stamps))
    print(json.dumps(counts), flush=True)
    for h in hosts:
        await h["bus"].close()


def celery_app(broker: str) -> tuple[Any, Any]:
    from celery import Celery

    app = Celery("fleet_bench", broker=broker, backend=broker)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
                    worker_send_task_events=False, task_send_sent_event=False, result_expires=3600)

    @app.task(name="bench.noop")
    def noop() -> None:
        return None

    return app, noop


def role_celery_worker(broker: str, pool: str, concurrency: int) -> None:
    app, _ = celery_app(broker)
    app.worker_main(["worker", "-P", pool, "-c", str(concurrency), "--loglevel", "WARNING", "--without-gossip",
                     "--without-mingle", "--without-heartbeat", "-n", f"bench-{os.getpid()}@localhost"])


# ============================================================================================ helpers


def spawn_role(*args: str, log: Path, stdin: bool = True) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=log.open("wb"), text=True, cwd=ROOT)


def wait_ready(proc: subprocess.Popen, what: str, log: Path) -> None:
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if line.strip() != "ready":
        raise SystemExit(f"{what} failed to start: {line!r}\n{log.read_text(errors='replace')[-2000:]}")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None:
        terminate_child(proc, 10)


def fleet_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "fleet.cli.main", *args], env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"fleet {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc


def fleet_yaml(secret_env: str) -> str:
    pool = lambda pid: {"id": pid, "tenant": TENANT, "backend": "local", "mode": "persistent",  # noqa: E731
                        "capacity": {"max_concurrent_sessions": SLOTS}}
    doc = {
        "version": 1,
        "org": {"id": "bench"},
        "tenants": [{"id": TENANT}],
        "projects": [
            {"id": NOOP_PROJECT, "tenant": TENANT, "routing": {"mode": "preferred-only", "preferred_pool": NOOP_POOL}},
            {"id": AGENT_PROJECT, "tenant": TENANT, "routing": {"mode": "preferred-only", "preferred_pool": AGENT_POOL}},
            {"id": BARE_PROJECT, "tenant": TENANT, "routing": {"mode": "preferred-only", "preferred_pool": BARE_POOL}},
        ],
        "pools": [pool(NOOP_POOL), pool(AGENT_POOL), {**pool(BARE_POOL), "isolation": "none"}],
        "keys": [{"id": "bench-hosts", "tenant": TENANT, "pools": [NOOP_POOL, AGENT_POOL, BARE_POOL], "max_uses": 64,
                  "secret": {"from_env": secret_env}}],
    }
    return json.dumps(doc, indent=2) + "\n"  # JSON is YAML


def merged(parts: list[LoopResult]) -> LoopResult:
    """Loops measured in turns, as one: their operations over their summed wall time."""
    out = LoopResult(ops=0, elapsed=0.0)
    for r in parts:
        out.done_at += [out.elapsed + t for t in r.done_at]
        out.ops, out.elapsed, out.failures = out.ops + r.ops, out.elapsed + r.elapsed, out.failures + r.failures
        out.latencies += r.latencies
        out.first_failure = out.first_failure or r.first_failure
    return out


def summary(r: LoopResult) -> dict[str, Any]:
    return {"ops": r.ops, "elapsed_s": round(r.elapsed, 3), "per_s": round(r.per_s, 1),
            "p50_ms": round(r.pct(50) * 1e3, 3), "p99_ms": round(r.pct(99) * 1e3, 3), "failures": r.failures,
            "per_s_by_tenth": [round(x) for x in r.rate_by_part(10)],
            **({"first_failure": r.first_failure[:300]} if r.failures else {})}


def breakdown(marks: dict[str, tuple[float, float]], stamps: dict[str, list[float]]) -> dict[str, float]:
    """Where a session's round trip at 1 in flight goes (medians, ms; one machine, one wall clock): submit sent ->
    its host got the Assignment (submit request, placement, the session stored, the assignment published); -> the host
    got the reply to its final WorkEvent (the event request, the completion stored by compare-and-set, the reply);
    -> the client got the final reply to its submit."""
    a, b, c = [], [], []
    for sid, (sent, done) in marks.items():
        if sid in stamps:
            received, acked = stamps[sid]
            a.append(received - sent)
            b.append(acked - received)
            c.append(done - acked)
    if not a:
        return {}
    return {"to_host": round(median(a) * 1e3, 3), "host_event_round_trip": round(median(b) * 1e3, 3),
            "to_client": round(median(c) * 1e3, 3), "sessions": len(a)}


def cpu_per_op(spent: dict[str, float], ops: int) -> dict[str, float]:
    """Microseconds of CPU per operation, by process."""
    return {name: round(s / max(ops, 1) * 1e6, 1) for name, s in spent.items()}


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ============================================================================================ (a) raw NATS


# ============================================================================================ (b) fleet


async def enroll(url: str, enroll_creds: str, secret: str, hostname: str, pool: str, out: Path) -> dict[str, str]:
    """Enroll one host as an agent does (its own nkey, over the enrollment identity); its machine ID and creds."""
    user = Key.generate("user")
    box = ReplyKey.generate()  # as fleet.agents.agent: proof of the nkey, the reply sealed to a one-time key
    req = enrollment_request(user, box, key=secret, hostname=hostname, version=__version__, pools=[pool])
    async with await connect(url, creds=enroll_creds, connect_timeout=5, inbox_prefix=enroll_inbox(user.public)) as bus:
        for _ in range(40):
            reply = await request_enrollment(bus, req, box, timeout=10)
            if reply.ok or reply.reason not in (None, "rate_limited", "unavailable"):
                break
            await asyncio.sleep(0.25)
    if not reply.ok or not reply.jwt or not reply.machine_id:
        raise SystemExit(f"enrollment of {hostname} refused: {reply.reason}: {reply.message}")
    path = out / f"{hostname}.creds"
    write_secret(path, creds_text(reply.jwt, user.seed))
    return {"machine_id": reply.machine_id, "creds": str(path), "hostname": hostname}


async def wait_active(url: str, admin_creds: str, names: list[str], timeout: float = 60) -> None:
    """Until every host in `names` is active in the server's registry."""
    from fleet.hosts.client import ControlPlaneClient

    deadline = time.monotonic() + timeout
    async with ControlPlaneClient(url, creds=admin_creds) as api:
        while True:
            status = {h.hostname: h.status for h in await api.hosts()}
            if all(status.get(n) == "active" for n in names):
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"hosts not active after {timeout:g}s: {status}")
            await asyncio.sleep(0.2)


async def bus_counters(url: str, trust: TrustDir) -> dict[str, int]:
    """Messages nats-server received and sent so far ($SYS VARZ, as the SYS identity), and the last sequence of the
    sessions bucket's stream (every write to any session moves it by one; read as the server identity)."""
    out: dict[str, int] = {}
    async with await connect(url, creds=str(trust.path("sys.creds")), connect_timeout=5) as bus:
        varz = json.loads((await bus.nc.request("$SYS.REQ.SERVER.PING.VARZ", b"", timeout=5)).data)["data"]
        out["nats_in_msgs"], out["nats_out_msgs"] = int(varz["in_msgs"]), int(varz["out_msgs"])
    async with await connect(url, creds=str(trust.path("server.creds")), connect_timeout=5) as bus:
        with contextlib.suppress(Exception):  # no sessions bucket, no fleet server (the raw phase runs before them)
            info = await bus.js.stream_info(f"KV_{subjects.BUCKET_SESSIONS}")
            out["session_writes"] = int(info.state.last_seq)
            ping = await call(bus, subjects.API_PING, timeout=5, attempts=1)
            out["heartbeats"] = int((ping or {}).get("heartbeats", 0))
    return out


def per_op(before: dict[str, int], after: dict[str, int], ops: int) -> dict[str, float]:
    return {k: round((after[k] - before.get(k, 0)) / max(ops, 1), 2) for k in after}


async def server_metrics(url: str, creds: str) -> dict[str, Any]:
    async with await connect(url, creds=creds, connect_timeout=5) as bus:
        info = await call(bus, subjects.API_PING, timeout=5)
    return dict((info or {}).get("metrics") or {})


async def bench_sessions(url: str, creds: str, project: str, n1: int, nn: int, warm: int, meter: CpuMeter,
                         trust: TrustDir, *, two_step: int = 0, profile: Any = None, bulk: int = 0,
                         cprofile: tuple[int, str] | None = None) -> dict[str, Any]:
    """Sessions of `project` through the fleet client: warm-up, 1 in flight, 128 in flight (CPU metered), and
    optionally `two_step` sessions as submit then wait(id)."""
    bad: list[str] = []
    marks: dict[str, tuple[float, float]] = {}  # session -> (submit sent, final reply received), wall clock

    async with Client(url, creds=creds) as client:
        async def one(_: int) -> None:
            view = await client.submit(project, ["true"], wait=WAIT_S)
            if view.phase != "succeeded":
                bad.append(f"{view.id} {view.phase} {view.reason}")
                raise RuntimeError(f"session {view.id} ended {view.phase}: {view.reason}")

        async def marked(_: int) -> None:
            sid = new_session_id()
            sent = time.time()
            view = await client.submit(project, ["true"], wait=WAIT_S, session_id=sid)
            marks[sid] = (sent, time.time())
            if view.phase != "succeeded":
                bad.append(f"{view.id} {view.phase} {view.reason}")
                raise RuntimeError(f"session {view.id} ended {view.phase}: {view.reason}")

        async def two(_: int) -> None:
            view = await client.submit(project, ["true"])
            done = await client.wait(view.id, timeout=WAIT_S)
            if done.phase != "succeeded":
                raise RuntimeError(f"session {view.id} ended {done.phase}: {done.reason}")

        await closed_loop(one, warm, INFLIGHT)
        await closed_loop(one, max(20, warm // 4), 1)
        seq = await closed_loop(marked, n1, 1)
        out: dict[str, Any] = {"seq": seq, "marks": marks}
        if two_step:
            out["seq_two_step"] = await closed_loop(two, two_step, 1)
        before = await bus_counters(url, trust)
        meter.start()
        prof = profile() if profile is not None else None
        if cprofile is not None:  # (server pid, stats file): cProfile in the server, the 128-in-flight run only
            Path(cprofile[1]).unlink(missing_ok=True)
            os.kill(cprofile[0], signal.SIGUSR1)
        out["par"] = await closed_loop(one, nn, INFLIGHT)
        if isinstance(prof, subprocess.Popen):  # the profile covers the 128-in-flight run only
            prof.send_signal(signal.SIGINT)
        if cprofile is not None:
            os.kill(cprofile[0], signal.SIGUSR2)
            deadline = time.monotonic() + 30
            while not Path(cprofile[1]).exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        out["cpu"] = meter.stop()
        out["cpu_sys"] = meter.spent_system
        out["per_session"] = per_op(before, await bus_counters(url, trust), out["par"].ops)
        if prof is not None:
            out["profile"] = prof
        out["not_succeeded"] = bad[:5]
        if bulk:
            out["bulk"] = await bench_bulk(client, url, trust, project, bulk)
    return out


async def bench_bulk(client: Client, url: str, trust: TrustDir, project: str, n: int) -> dict[str, Any]:
    """`n` no-op sessions enqueued by Client.submit_many (BULK_BATCH a request, two requests in flight) and run to
    their end: the time from the first request to the server's count of succeeded sessions reaching them all. `n`
    stays below the server's bound of open sessions per tenant (10,000: past it a submit is refused, QueueFull)."""
    admin = str(trust.path("admin.creds"))
    done_before = (await server_metrics(url, admin)).get("finished_succeeded", 0)
    batches = [BULK_BATCH] * (n // BULK_BATCH)
    started = time.perf_counter()
    stored_at: list[float] = []
    window = asyncio.Semaphore(2)

    async def one(size: int) -> None:
        async with window:
            views = await client.submit_many(project, [["true"]] * size)
            assert len(views) == size
            stored_at.append(time.perf_counter())

    await asyncio.gather(*(one(b) for b in batches))
    total = sum(batches)
    while (await server_metrics(url, admin)).get("finished_succeeded", 0) - done_before < total:
        if time.perf_counter() - started > 300:
            raise RuntimeError("bulk sessions did not all succeed within 300 s")
        await asyncio.sleep(0.02)
    ended = time.perf_counter()
    return {"sessions": total, "batch": BULK_BATCH, "stored_per_s": round(total / (max(stored_at) - started)),
            "run_per_s": round(total / (ended - started)), "seconds": round(ended - started, 3)}


def py_spy(pid: int, out: str, seconds: float, native: bool = False) -> subprocess.Popen | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        note("--py-spy: py-spy is not installed (pip install py-spy); no profile taken")
        return None
    fmt = "speedscope" if out.endswith(".json") else "raw" if out.endswith(".txt") else "flamegraph"
    return subprocess.Popen([exe, "record", "-p", str(pid), "-o", out, "-d", str(max(1, int(seconds))), "-f", fmt,
                             "-r", "200", *(["--native"] if native else ["--nonblocking"])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ============================================================================================ (c) Celery


def celery_missing() -> str | None:
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install -y redis-server)"
    try:
        import celery  # noqa: F401
        import redis  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install -e '.[bench]')"
    return None


def start_redis(work: Path) -> tuple[subprocess.Popen, str]:
    import redis

    port = free_port()
    log = work / "redis.log"
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--daemonize", "no", "--dir", str(work), "--logfile", str(log)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.exceptions.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc)
                raise SystemExit(f"redis-server did not start: {log.read_text(errors='replace')[-1000:]}") from None
            time.sleep(0.05)


def window(task: Any, total: int, inflight: int) -> LoopResult:
    """Celery at `inflight` in flight, the cheapest way its client allows: one thread keeps `inflight` tasks
    submitted and takes their results in order (`.get()` of the oldest, then one more `.delay()`). (128 client
    threads each doing `.delay().get()` cost the client twice the CPU per task and gave ~20 % fewer tasks/s.)"""
    clock = time.perf_counter
    start = clock()
    queue: deque[tuple[float, Any]] = deque()
    latencies: list[float] = []
    done_at: list[float] = []
    failures: list[str] = []
    sent = 0
    while sent < min(inflight, total):
        queue.append((clock(), task.delay()))
        sent += 1
    while queue:
        submitted, result = queue.popleft()
        try:
            result.get(timeout=30)
            now = clock()
            latencies.append(now - submitted)
            done_at.append(now - start)
        except Exception as exc:  # counted and reported, never hidden
            failures.append(f"{type(exc).__name__}: {exc}")
        if sent < total:
            queue.append((clock(), task.delay()))
            sent += 1
    elapsed = clock() - start
    return LoopResult(len(latencies), elapsed, latencies, len(failures), failures[0] if failures else "", done_at)


def bench_celery(work: Path, sizes: dict[str, int], pool: str) -> dict[str, Any]:
    redis_proc, url = start_redis(work)
    worker = None
    try:
        log = work / "celery-worker.log"
        worker = spawn_role("--role", "celery-worker", "--url", url, "--celery-pool", pool, log=log, stdin=False)
        app, noop = celery_app(url)

        def one(_: int) -> None:
            noop.delay().get(timeout=30)

        deadline = time.monotonic() + 60
        while True:  # the worker is ready when a task comes back
            try:
                noop.delay().get(timeout=5)
                break
            except Exception:
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the Celery worker did not start:\n{log.read_text(errors='replace')[-2000:]}") \
                        from None
        window(noop, sizes["warm"], INFLIGHT)
        closed_loop_threads(one, 50, 1)
        seq = closed_loop_threads(one, sizes["celery_1"], 1)
        meter = CpuMeter({"client (bench)": [os.getpid()], "celery worker": [worker.pid],
                          "redis-server": [redis_proc.pid]})
        meter.start()
        par = window(noop, sizes["celery_n"], INFLIGHT)
        cpu = meter.stop()
        cpu_sys = meter.spent_system
        with contextlib.suppress(Exception):
            app.close()
        return {"seq": seq, "par": par, "cpu": cpu, "cpu_sys": cpu_sys, "pool": pool,
                "concurrency": CELERY_CONCURRENCY}
    finally:
        stop(worker)
        stop(redis_proc)


# ============================================================================================ (d) routing


def bench_route(decisions: int, hosts: int = 1000) -> dict[str, Any]:
    """place() over one pool of `hosts` active hosts of mixed load (32 slots, 0-31 used)."""
    rng = random.Random(7)
    random.seed(7)  # PoolIndex breaks ties with the random module: the same heap every run
    pools = Snapshot()
    pools.set_config({"p": Pool.from_spec("p", {"tenant": TENANT, "capacity": {"max_concurrent_sessions": SLOTS}})}, {})
    pool_hosts = []
    for i in range(hosts):
        h = HostState(machine_id=f"{i:08x}-0000-4000-8000-000000000000", tenant=TENANT, pools=("p",),
                      labels=frozenset({"region=eu"} | ({"gpu"} if i % 10 == 0 else set())),
                      models=frozenset(), status="active", slots=SLOTS)
        h.sessions = {f"s{i}-{k}" for k in range(rng.randrange(SLOTS))}
        pools.put_host(h)
        pool_hosts.append(h)
    plain = Route.of("proj", {"tenant": TENANT, "mode": "preferred-only", "preferred_pool": "p"})
    labelled = Route.of("proj", {"tenant": TENANT, "mode": "preferred-only", "preferred_pool": "p"}, labels=["gpu"])
    clock = time.perf_counter_ns

    def timed(fn: Any, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0 = clock()
            fn()
            out.append((clock() - t0) / 1000)
        return out

    def decide_and_rank() -> None:  # what a dispatch pass does: place, reserve (re-rank), and later release
        p = place(plain, pools)
        assert p is not None
        host = p.host
        host.sessions.add("bench")  # type: ignore[attr-defined]
        host.version += 1  # type: ignore[misc]
        pools.rank(host)
        host.sessions.discard("bench")  # type: ignore[attr-defined]
        host.version += 1  # type: ignore[misc]
        pools.rank(host)

    for fn in (lambda: place(plain, pools), decide_and_rank, lambda: place(labelled, pools)):
        timed(fn, 2000)  # warm
    only = timed(lambda: place(plain, pools), decisions)
    label = timed(lambda: place(labelled, pools), decisions)  # before the re-ranking moves the heap: the same in
    ranked = timed(decide_and_rank, decisions)  # quick and full runs
    assert place(labelled, pools).host.labels >= {"gpu"}  # type: ignore[union-attr]
    return {"hosts": hosts, "decisions": decisions,
            "place_us": round(median(only), 2), "place_p99_us": round(percentile(only, 99), 2),
            "place_rank_us": round(median(ranked), 2), "place_rank_p99_us": round(percentile(ranked, 99), 2),
            "place_label_us": round(median(label), 2), "place_label_p99_us": round(percentile(label, 99), 2)}


# ============================================================================================ the run


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = SIZES["quick" if args.quick else "full"]
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "quick": args.quick, "cpus": os.cpu_count(),
                               "python": sys.version.split()[0], "hosts": HOSTS, "slots_per_host": SLOTS,
                               "inflight": INFLIGHT}
    results["load_before"] = [round(x, 2) for x in os.getloadavg()]
    note("routing decision over 1,000 hosts …")
    results["route"] = bench_route(sizes["route"])
    with tempfile.TemporaryDirectory(prefix="fleet-bench-dispatch-") as tmp:
        work = Path(tmp)
        trust = TrustDir.create(work / "trust")
        port = free_port()
        conf = trust.write_nats_conf(work, "127.0.0.1", port)
        nats = EmbeddedNats(store_dir=work / "nats", port=port, extra_args=["-c", str(conf)])
        nats.start()
        nats_pid = nats.running_pid()
        echo = server = hosts = None
        agents: list[subprocess.Popen] = []
        try:
            url = nats.url
            # ---------------------------------------------------------------- (a) raw request/reply
            note("raw nats-py request/reply …")
            requester, responder = Key.generate("user"), Key.generate("user")
            req_creds, resp_creds = work / "requester.creds", work / "responder.creds"
            write_secret(req_creds, trust.issue("bench-requester", Permissions(
                pub_allow=(ECHO_SUBJECT,), sub_allow=(f"{inbox_prefix(requester.public)}.>",)), requester))
            write_secret(resp_creds, trust.issue("bench-responder", Permissions(
                sub_allow=(ECHO_SUBJECT,), responses=True), responder))
            echo_log = work / "echo.log"
            echo = spawn_role("--role", "echo", "--url", url, "--creds", str(resp_creds), log=echo_log)
            wait_ready(echo, "the echo responder", echo_log)
            meter = CpuMeter({"client (bench)": [os.getpid()], "echo responder": [echo.pid],
                              "nats-server": [nats_pid or 0]})
            raw_seq_par = asyncio.run(_metered_raw(url, str(req_creds), sizes, meter, trust))
            results["raw"] = {"seq": summary(raw_seq_par["seq"]), "par": summary(raw_seq_par["par"]),
                              "cpu_us_per_op": cpu_per_op(raw_seq_par["cpu"], raw_seq_par["par"].ops),
                              "cpu_sys_us_per_op": cpu_per_op(raw_seq_par["cpu_sys"], raw_seq_par["par"].ops),
                              "per_request": raw_seq_par["per_request"]}
            echo.stdin.close()  # type: ignore[union-attr]
            stop(echo)
            echo = None
            results["raw"]["kv"] = asyncio.run(bench_kv(url, trust, sizes["raw_1"] // 3, sizes["raw_n"] // 4,
                                                        sizes["warm"]))

            # ---------------------------------------------------------------- (b) fleet
            note("fleet: apply, server, enrollment …")
            admin = str(trust.path("admin.creds"))
            secret = secrets.token_hex(32)
            cfg = work / "fleet.yaml"
            cfg.write_text(fleet_yaml(KEY_ENV))
            env = {"FLEET_NATS_URL": url, "FLEET_NATS_CREDS": admin, KEY_ENV: secret, "NO_COLOR": "1", "CI": "true"}
            server, results["server_starts"] = start_server(url, trust, work, cprofile=args.cprofile)
            # after the server: it creates the buckets, which an admin identity may only read and write
            fleet_cli(["apply", "--auto-approve", "--no-wait", "--summary", "-f", str(cfg)], env)
            enroll_creds = str(trust.path("enroll.creds"))
            (work / "hosts").mkdir()
            spec = asyncio.run(_enroll_all(url, enroll_creds, secret, work / "hosts"))
            spec_file = work / "hosts.json"
            spec_file.write_text(json.dumps(spec))
            hosts_log = work / "hosts.log"
            hosts = spawn_role("--role", "hosts", "--url", url, "--spec", str(spec_file), log=hosts_log)
            wait_ready(hosts, "the no-op hosts", hosts_log)
            asyncio.run(wait_active(url, admin, [h["hostname"] for h in spec]))
            submitter = work / "submitter.creds"
            write_secret(submitter, trust.issue_role("submitter", name="bench-submitter", tenant=TENANT))
            note(f"fleet: no-op sessions on {HOSTS} hosts x {SLOTS} slots …")
            meter = CpuMeter({"client (bench)": [os.getpid()], "fleet server": [server.pid],
                              "no-op hosts": [hosts.pid], "nats-server": [nats_pid or 0]})
            profile = None
            if args.py_spy:
                def profile() -> subprocess.Popen | None:
                    return py_spy(server.pid, args.py_spy, 60, args.py_spy_native)
            noop = asyncio.run(bench_sessions(url, str(submitter), NOOP_PROJECT, sizes["noop_1"], sizes["noop_n"],
                                              sizes["warm"], meter, trust, two_step=sizes["noop_1"] // 2,
                                              profile=profile, bulk=sizes["bulk"],
                                              cprofile=(server.pid, args.cprofile) if args.cprofile else None))
            if isinstance(noop.get("profile"), subprocess.Popen):
                noop["profile"].wait(60)
                note(f"py-spy profile of the fleet server written to {args.py_spy}")
            hosts.stdin.close()  # type: ignore[union-attr]
            counts = json.loads(hosts.stdout.readline() or "{}")  # type: ignore[union-attr]
            stop(hosts)
            hosts = None
            stamps = json.loads(spec_file.with_suffix(".stamps.json").read_text())
            results["noop"] = {"seq": summary(noop["seq"]), "seq_two_step": summary(noop["seq_two_step"]),
                               "par": summary(noop["par"]), "cpu_us_per_op": cpu_per_op(noop["cpu"], noop["par"].ops),
                               "cpu_sys_us_per_op": cpu_per_op(noop["cpu_sys"], noop["par"].ops),
                               "seq_breakdown_ms": breakdown(noop["marks"], stamps),
                               "host_counts": counts, "not_succeeded": noop["not_succeeded"],
                               "per_session": noop["per_session"], "bulk": noop.get("bulk")}

            # the same real agents twice: sessions sandboxed (fleet.agents.sandbox: a slot of their own uid, PID/mount/IPC
            # namespaces, bubblewrap), and unsandboxed (--no-sandbox, in a pool that says isolation: none); both groups
            # run side by side and are measured in turns (A B A B), so that a load that drifts (another job on this
            # machine) weighs on both alike
            groups = (("agents", AGENT_POOL, AGENT_PROJECT, []), ("agents_bare", BARE_POOL, BARE_PROJECT, ["--no-sandbox"]))
            members: dict[str, list[subprocess.Popen]] = {}
            for key, pool_id, _, extra in groups:
                note(f"fleet: `true` on {HOSTS} real agents x {SLOTS} slots ({'un' if extra else ''}sandboxed) …")
                names = [f"bench-{key.replace('_', '-')}-{i}" for i in range(HOSTS)]
                for name in names:
                    agents.append(subprocess.Popen(
                        [sys.executable, "-m", "fleet.cli.main", "agent", "run", "--nats", url, "--creds",
                         enroll_creds, "--state-dir", str(work / "agents" / name), "--hostname", name, "--pool",
                         pool_id, "--max-sessions", str(SLOTS), "--heartbeat-interval", str(HEARTBEAT_S),
                         "--join-timeout", "30", *extra],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                        stderr=(work / f"{name}.log").open("wb"), cwd=ROOT,
                        env={**os.environ, "PYTHONPATH": str(ROOT), "FLEET_ENROLL_KEY": secret}))
                members[key] = agents[-HOSTS:]
                asyncio.run(wait_active(url, admin, names))
            turns: dict[str, list[dict[str, Any]]] = {key: [] for key, *_ in groups}
            for turn in range(AGENT_TURNS):
                for key, _, project, _ in groups:
                    meter = CpuMeter({"client (bench)": [os.getpid()], "fleet server": [server.pid],
                                      "agents (+ true)": [a.pid for a in members[key]], "nats-server": [nats_pid or 0]})
                    turns[key].append(asyncio.run(bench_sessions(
                        url, str(submitter), project, sizes["agent_1"] // AGENT_TURNS, sizes["agent_n"] // AGENT_TURNS,
                        min(sizes["warm"], 128) if turn == 0 else 16, meter, trust)))
            for key, *_ in groups:
                seq, par = merged([t["seq"] for t in turns[key]]), merged([t["par"] for t in turns[key]])
                cpu = {n: sum(t["cpu"][n] for t in turns[key]) for n in turns[key][0]["cpu"]}
                cpu_sys = {n: sum(t["cpu_sys"][n] for t in turns[key]) for n in turns[key][0]["cpu_sys"]}
                results[key] = {"seq": summary(seq), "par": summary(par), "cpu_us_per_op": cpu_per_op(cpu, par.ops),
                                "cpu_sys_us_per_op": cpu_per_op(cpu_sys, par.ops),
                                "turns_per_s": [round(t["par"].per_s, 1) for t in turns[key]],
                                "not_succeeded": [b for t in turns[key] for b in t["not_succeeded"]][:5],
                                "per_session": turns[key][-1]["per_session"]}
            for a in [a for group in members.values() for a in group]:
                stop(a)
            sand, bare = results["agents"], results["agents_bare"]
            results["sandbox"] = {
                "rate_ratio": round(sand["par"]["per_s"] / bare["par"]["per_s"], 3) if bare["par"]["per_s"] else None,
                "start_overhead_ms_p50": round(sand["seq"]["p50_ms"] - bare["seq"]["p50_ms"], 3),
                "agent_cpu_us_per_session": {"sandboxed": sand["cpu_us_per_op"].get("agents (+ true)"),
                                             "unsandboxed": bare["cpu_us_per_op"].get("agents (+ true)")},
            }
            metrics = asyncio.run(server_metrics(url, admin))
            results["server_metrics"] = {k: v for k, v in metrics.items()
                                         if k in ("submitted", "finished_succeeded", "finished_failed", "lost",
                                                  "stale_events", "write_conflicts", "foreign_claims",
                                                  "submit_repeated", "reply_failed", "too_large", "internal")}
        finally:
            for a in agents:
                stop(a)
            stop(hosts)
            stop(server)
            stop(echo)
            nats.stop()

        # -------------------------------------------------------------------- (c) Celery
        missing = celery_missing()
        if missing:
            results["celery"] = {"skipped": missing}
        else:
            note(f"Celery + Redis: no-op task, prefork x {CELERY_CONCURRENCY} …")
            c = bench_celery(work, sizes, args.celery_pool)
            import celery as celery_mod

            results["celery"] = {"seq": summary(c["seq"]), "par": summary(c["par"]),
                                 "cpu_us_per_op": cpu_per_op(c["cpu"], c["par"].ops),
                                 "cpu_sys_us_per_op": cpu_per_op(c["cpu_sys"], c["par"].ops), "pool": c["pool"],
                                 "concurrency": c["concurrency"], "version": celery_mod.__version__,
                                 "redis": _redis_version()}
    results["load_after"] = [round(x, 2) for x in os.getloadavg()]
    results["targets"] = targets(results)
    return results


async def bench_kv(url: str, trust: TrustDir, n1: int, nn: int, warm: int) -> dict[str, Any]:
    """The JetStream write a session costs twice: a KV compare-and-set (fleet.bus.kv.Store.update, as the server
    identity), of a record the size of a finished no-op session; 1 in flight on one key, 128 in flight on a key
    each."""
    from fleet.bus.kv import open_store

    now = time.time()
    record = SessionRecord(id=new_session_id(), tenant=TENANT, project=NOOP_PROJECT, command=["true"], phase="succeeded",
                           host=str(uuid.uuid4()), pool=NOOP_POOL, fence=1, exit_code=0, submitted_at=now,
                           started_at=now, finished_at=now,
                           history=[PhaseEvent(phase=p, at=now) for p in ("queued", "assigned", "running", "succeeded")])
    value = record.encode()
    async with await connect(url, creds=str(trust.path("server.creds")), connect_timeout=5) as bus:
        store = await open_store(bus, "bench-raw-kv", history=1)
        revs = {f"k{k}": await store.create(f"k{k}", value) for k in range(INFLIGHT)}
        free = deque(revs)

        async def one(_: int) -> None:
            key = free.popleft()
            try:
                revs[key] = await store.update(key, value, last=revs[key])
            finally:
                free.append(key)

        await closed_loop(one, warm, INFLIGHT)
        seq = await closed_loop(one, n1, 1)
        par = await closed_loop(one, nn, INFLIGHT)
    return {"seq": summary(seq), "par": summary(par), "value_bytes": len(value)}


async def _metered_raw(url: str, creds: str, sizes: dict[str, int], meter: CpuMeter,
                       trust: TrustDir) -> dict[str, Any]:
    payload = submit_payload()
    async with await connect(url, creds=creds, connect_timeout=5, name="bench-requester") as bus:
        nc = bus.nc

        async def one(_: int) -> None:
            await nc.request(ECHO_SUBJECT, payload, timeout=10)

        await closed_loop(one, sizes["warm"] * 4, INFLIGHT)
        await closed_loop(one, 200, 1)
        seq = await closed_loop(one, sizes["raw_1"], 1)
        before = await bus_counters(url, trust)
        meter.start()
        par = await closed_loop(one, sizes["raw_n"], INFLIGHT)
        cpu = meter.stop()
        return {"seq": seq, "par": par, "cpu": cpu, "cpu_sys": meter.spent_system,
                "per_request": per_op(before, await bus_counters(url, trust), par.ops)}


def start_server(url: str, trust: TrustDir, work: Path, tries: int = 2, cprofile: str | None = None
                 ) -> tuple[subprocess.Popen, int]:
    """A real `fleet server` process (as `fleet up` runs it: server identity, trust dir; default heartbeat, grace and
    monitor settings); waits until it answers ping. One that exits at start is started once more, and the bench says
    so (stderr, and `server_starts` in --json): a flaky start is a finding, not something to hide."""
    for attempt in range(1, tries + 1):
        log = work / f"server-{attempt}.log"
        server = subprocess.Popen(
            [sys.executable, *([str(ROOT / "bench" / "benchkit" / "cprofile_server.py"), cprofile] if cprofile else
                               ["-m", "fleet.cli.main"]), "server", "--nats", url, "--creds", str(trust.path("server.creds")),
             "--trust-dir", str(trust.root)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log.open("wb"), cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "FLEET_DEBUG": "1"})
        if asyncio.run(_wait_server(url, str(trust.path("admin.creds")), server)):
            return server, attempt
        stop(server)
        text = log.read_text(errors="replace")[-3000:]
        if attempt == tries:
            raise SystemExit(f"fleet server did not start:\n{text}")
        note(f"fleet server exited at start (attempt {attempt}); starting it again. Its log:\n{text}")
    raise AssertionError("unreachable")


async def _wait_server(url: str, creds: str, server: subprocess.Popen) -> bool:
    deadline = time.monotonic() + 30
    while True:
        try:
            await server_metrics(url, creds)
            return True
        except Exception:
            if server.poll() is not None or time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)


async def _enroll_all(url: str, enroll_creds: str, secret: str, out: Path) -> list[dict[str, str]]:
    return [await enroll(url, enroll_creds, secret, f"bench-noop-{i}", NOOP_POOL, out) for i in range(HOSTS)]


def _redis_version() -> str:
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout
        return next((w.split("=", 1)[1] for w in out.split() if w.startswith("v=")), out.strip())
    except (OSError, subprocess.SubprocessError):
        return "?"


# ============================================================================================ targets and output


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's Musts and goals: each with its numbers and whether it is met."""
    out: list[dict[str, Any]] = []
    fleet_n, fleet_p50 = r["noop"]["par"]["per_s"], r["noop"]["seq"]["p50_ms"]
    raw_n, raw_p50 = r["raw"]["par"]["per_s"], r["raw"]["seq"]["p50_ms"]
    bulk = r["noop"].get("bulk") or {}
    cel = r.get("celery", {})
    if "par" in cel:
        cel_n = cel["par"]["per_s"]
        ratio = fleet_n / cel_n
        for kind, factor in (("Must", MUST_CELERY_FACTOR), ("goal", GOAL_CELERY_FACTOR)):
            out.append({"kind": kind, "what": f"fleet throughput at {INFLIGHT} in flight >= {factor:g}x Celery's",
                        "value": f"{fleet_n:,.0f} vs {cel_n:,.0f} tasks/s = {ratio:.1f}x", "met": ratio >= factor})
        out.append({"kind": "Must", "what": f"fleet p50 at 1 in flight below Celery's and <= {MUST_P50_RAW_FACTOR:g}x "
                                            "raw request/reply's",
                    "value": f"{fleet_p50:.2f} ms vs Celery {cel['seq']['p50_ms']:.2f} ms, raw {raw_p50:.2f} ms "
                             f"({fleet_p50 / raw_p50:.1f}x)",
                    "met": fleet_p50 < cel["seq"]["p50_ms"] and fleet_p50 <= MUST_P50_RAW_FACTOR * raw_p50})
        if bulk:
            b = bulk["run_per_s"] / cel_n
            out.append({"kind": "goal", "what": f"bulk submit (submit_many, {bulk['batch']} a request) enqueued and "
                                                f"run >= {GOAL_BULK_CELERY_FACTOR:g}x Celery's",
                        "value": f"{bulk['run_per_s']:,} vs {cel_n:,.0f} tasks/s = {b:.1f}x "
                                 f"(stored {bulk['stored_per_s']:,}/s)", "met": b >= GOAL_BULK_CELERY_FACTOR})
    else:
        out.append({"kind": "Must", "what": f"fleet throughput >= {MUST_CELERY_FACTOR:g}x Celery's; p50 below Celery's",
                    "value": f"not measured: Celery baseline skipped ({cel.get('skipped')})", "met": None})
        out.append({"kind": "Must", "what": f"fleet p50 at 1 in flight <= {MUST_P50_RAW_FACTOR:g}x raw",
                    "value": f"{fleet_p50:.2f} / {raw_p50:.2f} ms", "met": fleet_p50 <= MUST_P50_RAW_FACTOR * raw_p50})
    server_us = (r["noop"].get("cpu_us_per_op") or {}).get("fleet server")
    if server_us is not None:
        out.append({"kind": "Must", "what": f"`fleet server` CPU per no-op session at {INFLIGHT} in flight "
                                            f"<= {MUST_SERVER_US:g} µs",
                    "value": f"{server_us:,.0f} µs", "met": server_us <= MUST_SERVER_US})
    share = fleet_n / raw_n
    out.append({"kind": "goal", "what": f"fleet >= {GOAL_RAW_SHARE:.0%} of raw request/reply throughput at {INFLIGHT}",
                "value": f"{fleet_n:,.0f} / {raw_n:,.0f} = {share:.1%}", "met": share >= GOAL_RAW_SHARE})
    sb = r.get("sandbox")
    if sb:
        out.append({"kind": "Must", "what": f"sandboxed `true` sessions at {INFLIGHT} in flight >= 80% of unsandboxed",
                    "value": f"{r['agents']['par']['per_s']:,.0f} vs {r['agents_bare']['par']['per_s']:,.0f} sessions/s"
                             f" = {sb['rate_ratio']:.0%}; start overhead {sb['start_overhead_ms_p50']:+.2f} ms p50",
                    "met": sb["rate_ratio"] is not None and sb["rate_ratio"] >= 0.8})
    route = r["route"]
    out.append({"kind": "goal", "what": f"routing decision over {route['hosts']:,} hosts <= {GOAL_ROUTE_US:g} µs",
                "value": f"{route['place_us']:.1f} µs (median of {route['decisions']:,})",
                "met": route["place_us"] <= GOAL_ROUTE_US})
    return out


def render(r: dict[str, Any]) -> str:
    lines = []
    head = f"{'':<60} {'throughput':>16} {'p50':>10} {'p99':>10}"
    lines += [f"dispatch, {r['date']}, {r['cpus']} cores, Python {r['python']}"
              + (" (--quick)" if r["quick"] else "")
              + f"; load average before / after: {r['load_before'][0]:.2f} / {r['load_after'][0]:.2f}",
              head, "-" * len(head)]

    def row(label: str, s: dict[str, Any] | None, unit: str, show_rate: bool = True) -> None:
        if s is None:
            return
        rate = f"{s['per_s']:,.0f} {unit}" if show_rate else ""
        fail = f"  ({s['failures']} failed: {s.get('first_failure', '')[:80]})" if s["failures"] else ""
        lines.append(f"{label:<60} {rate:>16} {s['p50_ms']:>8.2f}ms {s['p99_ms']:>8.2f}ms{fail}")

    row("raw nats-py request/reply, 1 in flight", r["raw"]["seq"], "req/s")
    row(f"raw nats-py request/reply, {INFLIGHT} in flight", r["raw"]["par"], "req/s")
    row("fleet no-op session, 1 in flight", r["noop"]["seq"], "sess/s")
    row("fleet no-op session, 1 in flight, submit + wait(id)", r["noop"]["seq_two_step"], "sess/s")
    row(f"fleet no-op session, {INFLIGHT} in flight", r["noop"]["par"], "sess/s")
    bulk = r["noop"].get("bulk")
    if bulk:
        lines.append(f"{'fleet no-op, bulk submit_many x ' + str(bulk['batch']) + ', enqueued and run':<60} "
                     f"{format(bulk['run_per_s'], ',') + ' sess/s':>16}")
    row("fleet `true` on real agents, sandboxed, 1 in flight", r["agents"]["seq"], "sess/s")
    row(f"fleet `true` on real agents, sandboxed, {INFLIGHT} in flight", r["agents"]["par"], "sess/s")
    row("fleet `true` on real agents, unsandboxed, 1 in flight", r["agents_bare"]["seq"], "sess/s")
    row(f"fleet `true` on real agents, unsandboxed, {INFLIGHT} in flight", r["agents_bare"]["par"], "sess/s")
    cel = r.get("celery", {})
    if "par" in cel:
        row("Celery + Redis no-op task, 1 in flight", cel["seq"], "tasks/s")
        row(f"Celery + Redis no-op task, {INFLIGHT} in flight", cel["par"], "tasks/s")
    route = r["route"]
    for label, key in (("place()", "place"), ("place() + re-rank the chosen host", "place_rank"),
                       ("place(), label only 1 host in 10 has", "place_label")):
        us, p99 = route[f"{key}_us"], route[f"{key}_p99_us"]
        lines.append(f"{'routing over ' + format(route['hosts'], ',') + ' hosts: ' + label:<60} {'':>16} "
                     f"{us:>8.2f}µs {p99:>8.2f}µs")
    lines.append("")
    lines.append(f"fleet: {r['hosts']} no-op hosts x {r['slots_per_host']} slots (one process, one connection each; "
                 f"real enrollment, heartbeats every {HEARTBEAT_S:g} s); {r['hosts']} `fleet agent run` x "
                 f"{r['slots_per_host']} slots for `true`; client fleet.sessions.client.Client, submit(wait=…).")
    if "par" in cel:
        lines.append(f"Celery {cel['version']} + redis-server {cel['redis']}: one worker, -P {cel['pool']} "
                     f"-c {cel['concurrency']}, Redis broker and result backend; client: noop.delay().get(); "
                     f"{INFLIGHT} in flight: one thread keeps {INFLIGHT} tasks submitted, results taken in order.")
    else:
        lines.append(f"Celery baseline skipped: {cel.get('skipped')}")
    sb = r["sandbox"]
    lines.append(f"session sandbox (bubblewrap slots: a uid per slot, pid+mount+ipc namespaces): {INFLIGHT}-in-flight "
                 f"rate {sb['rate_ratio']:.0%} of unsandboxed (target >= 80%; turns A B A B: "
                 f"{r['agents'].get('turns_per_s')} vs {r['agents_bare'].get('turns_per_s')}/s); start overhead at 1 "
                 f"in flight {sb['start_overhead_ms_p50']:+.2f} ms (p50); agent CPU per session (with its slots and "
                 f"children) {sb['agent_cpu_us_per_session']['sandboxed']} vs "
                 f"{sb['agent_cpu_us_per_session']['unsandboxed']} µs")
    counts = r["noop"].get("host_counts") or {}
    lines.append(f"no-op hosts: {counts.get('assigned', '?')} assignments, {counts.get('acked', '?')} completions "
                 f"acknowledged, {counts.get('refused', '?')} refused, {counts.get('errors', '?')} errors; "
                 f"server: {json.dumps(r.get('server_metrics', {}))}")
    if r.get("server_starts", 1) > 1:
        lines.append(f"NOTE: the fleet server exited at start and was started {r['server_starts']} times (see stderr)")
    ps, pr = r["noop"].get("per_session") or {}, r["raw"].get("per_request") or {}
    pa = r["agents"].get("per_session") or {}
    lines.append(f"NATS messages per operation at {INFLIGHT} in flight (nats-server in / out): raw request "
                 f"{pr.get('nats_in_msgs')} / {pr.get('nats_out_msgs')}; fleet no-op session {ps.get('nats_in_msgs')} / "
                 f"{ps.get('nats_out_msgs')}, with {ps.get('session_writes')} writes to the sessions bucket and "
                 f"{ps.get('heartbeats')} heartbeats ingested; `true` on real agents "
                 f"{pa.get('nats_in_msgs')} / {pa.get('nats_out_msgs')}, {pa.get('session_writes')} writes, "
                 f"{pa.get('heartbeats')} heartbeats")
    bd = r["noop"].get("seq_breakdown_ms") or {}
    if bd:
        lines.append(f"fleet no-op at 1 in flight, medians: submit -> assignment at the host {bd['to_host']:.2f} ms "
                     f"(submit, placement, session stored, assignment sent); final WorkEvent -> its reply "
                     f"{bd['host_event_round_trip']:.2f} ms (completion stored by compare-and-set); -> submit reply at "
                     f"the client {bd['to_client']:.2f} ms")
    kv = r["raw"].get("kv") or {}
    if kv:
        lines.append(f"raw JetStream KV compare-and-set write (Store.update): 1 in flight p50 {kv['seq']['p50_ms']:.2f} ms, "
                     f"p99 {kv['seq']['p99_ms']:.2f} ms; {INFLIGHT} in flight (own key each) {kv['par']['per_s']:,.0f} writes/s")
    tenths = r["noop"]["par"].get("per_s_by_tenth") or []
    lines.append(f"fleet no-op at {INFLIGHT} in flight, sessions/s by tenth of the run: "
                 + " ".join(f"{x:,}" for x in tenths))
    lines.append("")
    lines.append(f"CPU per operation at {INFLIGHT} in flight, µs (in brackets: of which in the kernel), from /proc; "
                 f"{r['cpus']} cores allow at most {r['cpus']:,} x 1e6 / total operations/s:")
    for label, key in (("raw request/reply", "raw"), ("fleet no-op", "noop"), ("fleet `true`", "agents"),
                       ("Celery no-op", "celery")):
        cpu = (r.get(key) or {}).get("cpu_us_per_op")
        sys_ = (r.get(key) or {}).get("cpu_sys_us_per_op") or {}
        if cpu:
            total = sum(cpu.values())
            lines.append(f"  {label:<18} " + ", ".join(f"{k} {v:,.0f} ({sys_.get(k, 0):,.0f})" for k, v in cpu.items())
                         + f"; total {total:,.0f}")
    lines.append("")
    for t in r["targets"]:
        verdict = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
        lines.append(f"{t['kind']:<5} {t['what']}: {t['value']} -> {verdict}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a short run (make bench)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--celery-pool", default="prefork", choices=["prefork", "threads", "solo"],
                    help="the Celery worker's pool (default prefork, concurrency 2)")
    ap.add_argument("--py-spy", metavar="FILE", help="profile the fleet server with py-spy during the no-op run at "
                                                     f"{INFLIGHT} in flight (.svg flamegraph, .json speedscope, .txt collapsed stacks)")
    ap.add_argument("--py-spy-native", action="store_true",
                    help="with --py-spy: native frames too (the garbage collector, the socket writes); stops the "
                         "server at each sample, so it slows it down")
    ap.add_argument("--cprofile", metavar="FILE",
                    help="run the fleet server under cProfile with a CPU clock (bench/benchkit/cprofile_server.py) "
                         "and write the stats of the no-op run at 128 in flight to FILE (`python -m pstats FILE`); "
                         "cProfile roughly doubles the server's cost: read call counts and proportions")
    ap.add_argument("--role", choices=["echo", "hosts", "celery-worker"], help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--creds", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "echo":
        asyncio.run(role_echo(args.url, args.creds))
        return
    if args.role == "hosts":
        asyncio.run(role_hosts(args.url, args.spec))
        return
    if args.role == "celery-worker":
        role_celery_worker(args.url, args.celery_pool, CELERY_CONCURRENCY)
        return
    results = run(args)
    if args.json:
        print(json.dumps(results, default=str))
        return
    print(render(results))


if __name__ == "__main__":
    main()
