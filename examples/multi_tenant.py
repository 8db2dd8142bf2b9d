#!/usr/bin/env python3
"""Example 33 of the product page: a multi-tenant fleet. Two tenants, four workers, mixed-tenant sessions, and a
worker of one tenant that tries to take the other tenant's work: refused at the dispatch boundary.

    python examples/multi_tenant.py          # (or `make example`) about 5 s; exit 0 only if every check held
    python examples/multi_tenant.py --keep   # keep the state dir (logs, creds) and print where it is

It needs nothing running: it drives the real CLI, as a user would, against a fleet of its own in a temporary
state dir on a free port (FLEET_STATE_DIR, --nats): `fleet up` (nats-server in operator mode + `fleet server`),
`fleet apply -f examples/multi_tenant.yaml` (tenants fin-prod and health-prod, a local pool, a project and an
enrollment key each; the key secrets are random, 256 bits, passed through the environment), four `fleet agent run`
workers (two per tenant), and at the end `fleet down`, also after an error or Ctrl-C. Sessions are submitted
through the Python client (`fleet.SyncClient`). Then it attacks, as a compromised worker of fin-prod holding its own
host.creds, and as a submitter identity of fin-prod:

 1. the worker claims a running health-prod session: it reports it `succeeded`, with the session's real ID and
    fencing token, on its own work subject (the dispatcher refuses it as stale and logs a `security:` line), and
    on the health worker's work subject (the NATS server refuses the publish);
 2. the worker subscribes to the health workers' assignment subjects and to health-prod's session API (the NATS
    server refuses the subscriptions; a health session dispatched meanwhile reaches only its own worker);
 3. the fin-prod submitter submits to health-prod's project (the dispatcher refuses it) and publishes straight on
    health-prod's session API (the NATS server refuses it).

Each check prints ✓ or ✗; the exit code is 0 only if all held, 1 otherwise (the state dir is then kept, with
the logs, and its path printed), 130 when interrupted.
Run by tests/integration/test_examples.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

try:
    import fleet
    from fleet.bus import subjects
    from fleet.bus.connection import Bus, connect
    from fleet.bus.messages import FINAL_PHASES, SessionView, WorkEvent, WorkReply, decode
    from fleet.errors import FleetError
    from fleet.sessions.client import SyncClient
except ImportError as exc:  # run by a Python without fleet installed
    sys.exit(f"cannot import fleet ({exc}): run it with the project's Python, e.g. `make example` or "
             "`.venv/bin/python examples/multi_tenant.py` (after `make venv`)")

HERE = Path(__file__).resolve().parent
FLEET_FILE = HERE / "multi_tenant.yaml"
FIN, HEALTH = "fin-prod", "health-prod"
PROJECT = {FIN: "fin-app", HEALTH: "health-app"}
POOL = {FIN: "pool-fin", HEALTH: "pool-health"}
KEY_ENV = {FIN: "EXAMPLE_KEY_FIN", HEALTH: "EXAMPLE_KEY_HEALTH"}  # read by multi_tenant.yaml's keys
WORKERS = {"fin-w1": FIN, "fin-w2": FIN, "health-w1": HEALTH, "health-w2": HEALTH}
ATTACKER = "fin-w1"


class Failed(Exception):
    """A step of the example could not be done (not a check that failed: those are counted)."""


WHERE_AM_I = """
import json, os, socket
s = socket.socket(socket.AF_UNIX)
s.connect(os.environ["FLEET_CREDENTIALS_SOCKET"])
s.sendall(b"{}\\n")
me = json.loads(s.makefile().readline())
print(f"session {me['session_id']} of {me['project']} ran on {me['machine_id']}")
"""


def job(before: str = "") -> list[str]:
    """A short real command. It names the machine it runs on as its own agent tells it (the session's credential
    socket, FLEET_CREDENTIALS_SOCKET), independently of the dispatcher's record: a session sees nothing of its
    agent's files, so it cannot tell from where it runs."""
    return ["sh", "-c", before + 'exec python3 -c "$1"', "job", WHERE_AM_I]


def said(view: SessionView, machine: str) -> str:
    return f"session {view.id} of {view.project} ran on {machine}\n"


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def say(text: str = "", indent: int = 2) -> None:
    print(" " * indent + text if text else "", flush=True)


class Checks:
    def __init__(self) -> None:
        self.results: list[tuple[bool, str]] = []

    def __call__(self, ok: object, what: str) -> bool:
        self.results.append((bool(ok), what))
        say(f"{'✓' if ok else '✗ FAILED:'} {what}")
        return bool(ok)

    @property
    def failed(self) -> list[str]:
        return [what for ok, what in self.results if not ok]


class EmbeddedFleet:
    """The fleet of this example, run with the real CLI (`python -m fleet.cli.main`, i.e. `fleet`) in `state_dir`."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.url = ""
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        # the caller's fleet settings (another fleet's URL or creds) must not leak into this one; which nats-server
        # binary to run may
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_") or k == "FLEET_NATS_SERVER"}
        self.env.update({"FLEET_STATE_DIR": str(state_dir), "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})
        self.secrets = {var: secrets.token_hex(32) for var in KEY_ENV.values()}  # 256 random bits each

    @property
    def admin_creds(self) -> str:
        return str(self.state_dir / "trust" / "admin.creds")

    def fleet(self, *args: str, env: dict[str, str] | None = None, show: bool = True,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `fleet ARGS` (failing the example if it fails)."""
        if show:
            say(f"$ fleet {' '.join(args)}")
        done = subprocess.run([sys.executable, "-m", "fleet.cli.main", *args], env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise Failed(f"`fleet {' '.join(args)}` exited {done.returncode}: "
                         + (done.stderr.strip() or done.stdout.strip())[-800:])
        return done

    def up(self) -> None:
        for attempt in range(3):  # a free port can be taken before nats-server binds it: then try another one
            self.url = f"nats://127.0.0.1:{free_port()}"
            self.env["FLEET_NATS_URL"] = self.url
            try:
                out = self.fleet("up", "--nats", self.url)
            except Failed as exc:
                if attempt < 2 and "in use" in str(exc):
                    continue
                raise
            for line in out.stdout.splitlines():
                say(line, 4)
            return

    def apply(self) -> None:
        self.fleet("validate", "-f", shown_path(FLEET_FILE), show=False)
        out = self.fleet("apply", "-f", shown_path(FLEET_FILE), "--auto-approve", "--summary", env=self.secrets)
        say(next((ln for ln in out.stdout.splitlines() if ln.startswith("Apply complete")), out.stdout.strip()), 4)

    def start_agent(self, name: str, tenant: str) -> None:
        state = Path("agents") / name  # under the state dir (the agent runs from there): `fleet down` stops it
        (self.state_dir / state).mkdir(parents=True, exist_ok=True)
        signals = self.state_dir / "signals"  # where the example tells a session to finish: the only thing of the
        signals.mkdir(exist_ok=True)  # example's own dir its sandboxed sessions see (--sandbox-expose, read-only)
        os.chmod(signals, 0o755)
        args = ["agent", "run", "--state-dir", str(state), "--hostname", name, "--pool", POOL[tenant],
                "--sandbox-expose", str(signals)]
        say(f"$ FLEET_ENROLL_KEY=${KEY_ENV[tenant]} fleet {' '.join(args)} &")
        with open(self.state_dir / state / "stdout.log", "ab") as log:
            # the key's secret through the environment, never the command line (`ps` shows that to everyone)
            self.agents[name] = subprocess.Popen(
                [sys.executable, "-m", "fleet.cli.main", *args], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, cwd=self.state_dir,
                env={**self.env, "FLEET_ENROLL_KEY": self.secrets[KEY_ENV[tenant]]})

    def hosts(self) -> list[dict[str, Any]]:
        return json.loads(self.fleet("list", "--json", show=False).stdout)

    def server_log(self) -> str:
        path = self.state_dir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def down(self) -> str:
        """`fleet down` (agents, fleet server, nats-server, by PID), then any agent of ours still alive."""
        out = ""
        if (self.state_dir / "nats-server.pid").exists() or self.agents:
            done = subprocess.run([sys.executable, "-m", "fleet.cli.main", "down"], env=self.env,
                                  capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
            out = (done.stdout + done.stderr).strip()
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        return out


def shown_path(path: Path) -> str:
    """`path` relative to the working directory when it is below it (shorter to read), else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(what: str, predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise Failed(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def log_line(fl: EmbeddedFleet, *needles: str, timeout: float = 5.0) -> str | None:
    """The first server.log line that holds every needle (its text from `security:` on), waiting a little."""
    def find() -> str | None:
        for line in fl.server_log().splitlines():
            if all(n in line for n in needles):
                return line[line.find("security:"):] if "security:" in line else line
        return None
    try:
        return wait_until("the server log line", find, timeout)
    except Failed:
        return None


def refusals(bus: Bus) -> list[str]:
    return [text.removeprefix("nats: ") for _, text in bus.denials]


# ------------------------------------------------------------------------------------------------ the steps


def start(fl: EmbeddedFleet) -> dict[str, dict[str, Any]]:
    section(f"the fleet: its own nats-server and fleet server, state dir {fl.state_dir}")
    fl.up()
    fl.apply()
    for name, tenant in WORKERS.items():
        fl.start_agent(name, tenant)

    def all_active() -> dict[str, dict[str, Any]] | None:
        hosts = {h["hostname"]: h for h in fl.hosts() if h["status"] == "active"}
        return hosts if set(WORKERS) <= set(hosts) else None

    hosts: dict[str, dict[str, Any]] = wait_until("four active workers", all_active, 30, 0.3)
    say("four workers active (the tenant of each comes from its enrollment record, set by its key):")
    for name in WORKERS:
        h = hosts[name]
        say(f"{name:<10} {h['id']}  tenant {h['tenant']:<12} pool {','.join(h['pools'])}", 4)
    return hosts


def mixed_sessions(client: SyncClient, hosts: dict[str, dict[str, Any]], count: int,
                   check: Checks) -> None:
    tenants = [FIN, HEALTH, HEALTH, FIN]  # interleaved: fin, health, health, fin, fin, health, …
    order = [tenants[i % 4] for i in range(count)]
    section(f"{count} mixed-tenant sessions, submitted through fleet.SyncClient")
    submitted = [client.submit(PROJECT[t], job()) for t in order]
    done: list[SessionView] = [client.wait(s.id, timeout=60) for s in submitted]
    tenant_of = {h["id"]: h["tenant"] for h in hosts.values()}
    name_of = {h["id"]: name for name, h in hosts.items()}
    say(f"{'SESSION':<20}  {'PROJECT':<10}  {'TENANT':<11}  {'STATUS':<9}  {'WORKER':<9}  {'ITS TENANT':<11}  "
        "RAN ON (SAYS THE COMMAND)")
    wrong = []
    for s in done:
        out = (s.output_tail or "").strip()
        machine = out.rsplit(" ran on ", 1)[-1] if " ran on " in out else "?"
        ran_on = name_of.get(machine, machine)
        host_tenant = tenant_of.get(s.host or "", "?")
        say(f"{s.id:<20}  {s.project:<10}  {s.tenant:<11}  {s.phase:<9}  {s.hostname or '-':<9}  {host_tenant:<11}  "
            f"{ran_on}")
        if not (s.phase == "succeeded" and s.tenant == host_tenant == WORKERS.get(ran_on)
                and s.hostname == ran_on and s.host == machine and s.output_tail == said(s, machine)):
            wrong.append(s.id)
    say(f'(each command printed "session <its ID> of <its project> ran on <the machine its agent names>", e.g. '
        f'"{(done[0].output_tail or "").strip()}")')
    per_tenant = {t: sum(1 for s in done if s.tenant == t) for t in (FIN, HEALTH)}
    check(not wrong and len(done) == count,
          f"all {count} sessions ({per_tenant[FIN]} of {FIN}, {per_tenant[HEALTH]} of {HEALTH}) succeeded on a "
          "worker of their own tenant" + (f"; not: {', '.join(wrong)}" if wrong else ""))


def running_victim(client: SyncClient, marker: Path) -> SessionView:
    """A health-prod session that runs until `marker` exists (at most 60 s)."""
    s = client.submit(PROJECT[HEALTH], job(f'while [ ! -e "{marker}" ]; do sleep 0.05; done; '), timeout=60)

    def running() -> SessionView | None:
        view: SessionView = client.get(s.id)
        return view if view.phase == "running" and view.fence is not None else None

    return wait_until(f"session {s.id} running", running, 30, 0.05)


def attack_claim(fl: EmbeddedFleet, client: SyncClient, hosts: dict[str, dict[str, Any]], check: Checks,
                 marker: Path) -> None:
    attacker = hosts[ATTACKER]["id"]
    victim = running_victim(client, marker)
    owner = victim.hostname or "?"
    section(f"attack 1: {ATTACKER} ({FIN}) claims {HEALTH} session {victim.id}")
    say(f"the session runs on {owner} under fencing token {victim.fence}. {ATTACKER}, with its own host.creds, "
        "reports it succeeded")
    say("(a WorkEvent with the session's real ID and fencing token: more than an attacker could know):")
    creds = str(fl.state_dir / "agents" / ATTACKER / "host.creds")
    own_subject = f"{subjects.host_work(attacker)}.event"
    their_subject = f"{subjects.host_work(victim.host or '')}.event"

    async def attack() -> tuple[WorkReply, list[str]]:
        bus = await connect(fl.url, creds=creds, name="example-attacker")
        try:
            ev = WorkEvent(session=victim.id, fence=victim.fence or 0, phase="succeeded", exit_code=0,
                           at=time.time(), output_tail=f"forged by {ATTACKER}\n")
            reply = decode(WorkReply, await bus.request(own_subject, ev.encode(), timeout=5))
            await bus.publish(their_subject, ev.encode())  # pretending to be the health worker
            await bus.flush()
            await asyncio.sleep(0.3)  # the NATS server's -ERR comes asynchronously
            return reply, refusals(bus)
        finally:
            await bus.close()

    reply, denied = asyncio.run(attack())
    say(f"on its own work subject {own_subject}:")
    say(f"dispatcher:  REFUSED ok={str(reply.ok).lower()} stale={str(reply.stale).lower()} \"{reply.message}\"", 4)
    logged = log_line(fl, "security:", attacker, victim.id)
    say(f"server.log:  {logged or '(nothing)'}", 4)
    say(f"on {owner}'s work subject {their_subject}:")
    publish_denied = [d for d in denied if "publish" in d.lower() and (victim.host or "?") in d]
    say(f"NATS server: REFUSED {publish_denied[0] if publish_denied else '(no refusal)'}", 4)
    after = client.get(victim.id)
    check(reply.ok is False and reply.stale is True, "the dispatcher refused the cross-tenant claim (stale)")
    check(logged is not None, "the server logged it as a security event")
    check(publish_denied, f"the NATS server refused the publish on {owner}'s subject")
    check(after.phase == "running" and after.host == victim.host and after.fence == victim.fence
          and not [e for e in after.history if e.phase in FINAL_PHASES],
          f"the session is untouched: still running on {owner} under token {victim.fence}, no completion recorded")
    marker.touch()  # now let it finish where it runs
    final = client.wait(victim.id, timeout=30)
    check(final.phase == "succeeded" and final.hostname == owner and final.output_tail == said(final, victim.host or "?"),
          f"released, it finished on {owner}: {(final.output_tail or '').strip()!r}")


def attack_subscribe(fl: EmbeddedFleet, client: SyncClient, hosts: dict[str, dict[str, Any]], check: Checks) -> None:
    section(f"attack 2: {ATTACKER} ({FIN}) listens to {HEALTH}'s subjects")
    creds = str(fl.state_dir / "agents" / ATTACKER / "host.creds")
    wanted = {f"{name}'s assignments": subjects.host_assign(hosts[name]["id"])
              for name, tenant in WORKERS.items() if tenant == HEALTH}
    wanted[f"{HEALTH}'s session API"] = f"{subjects.API_SESSIONS}.{HEALTH}.>"
    got: list[str] = []

    async def on_msg(msg: Any) -> None:
        got.append(msg.subject)

    async def attack() -> tuple[list[str], SessionView]:
        bus = await connect(fl.url, creds=creds, name="example-attacker")
        try:
            for subject in wanted.values():
                await bus.subscribe(subject, on_msg)
            await bus.flush()
            # a health session dispatched (and its API used) while the attacker listens
            ran = await asyncio.to_thread(client.submit, PROJECT[HEALTH], job(), wait=30)
            await asyncio.sleep(0.3)
            return refusals(bus), ran
        finally:
            await bus.close()

    denied, ran = asyncio.run(attack())
    said_no = {what: next((d for d in denied if "subscription" in d.lower() and subject.lower() in d.lower()), None)
               for what, subject in wanted.items()}
    say(f"{ATTACKER}, with its own host.creds, subscribes to:")
    for what, refusal in said_no.items():
        say(f"{what + ':':<27} NATS server: REFUSED {refusal or '(no refusal)'}", 4)
    say(f"meanwhile {HEALTH} session {ran.id} ran on {ran.hostname} ({ran.phase}); messages {ATTACKER} received: "
        f"{len(got)}")
    for what, refusal in said_no.items():
        check(refusal, f"the NATS server refused the subscription to {what}")
    check(ran.phase == "succeeded" and WORKERS.get(ran.hostname or "") == HEALTH and not got,
          f"{ATTACKER} saw nothing of it")


def attack_submit(fl: EmbeddedFleet, client: SyncClient, check: Checks) -> None:
    section(f"attack 3: a submitter identity of {FIN} submits to {HEALTH}'s project {PROJECT[HEALTH]}")
    creds = fl.state_dir / "fin-ci.creds"
    fl.fleet("creds", "create", "--role", "submitter", "--tenant", FIN, "--name", "fin-ci", "-o", str(creds))
    before = len(client.list(project=PROJECT[HEALTH]))
    refused: FleetError | None = None
    say("through fleet.SyncClient with these creds:")
    with fleet.SyncClient(fl.url, creds=str(creds)) as submitter:
        own = submitter.submit(PROJECT[FIN], job(), wait=30)
        say(f"its own {PROJECT[FIN]}:  {own.phase} on {own.hostname} (session {own.id})", 4)
        try:
            foreign = submitter.submit(PROJECT[HEALTH], job())
            say(f"{PROJECT[HEALTH]}:  ACCEPTED as session {foreign.id}", 4)
        except FleetError as exc:
            refused = exc
            say(f"{PROJECT[HEALTH]}:  dispatcher: REFUSED \"{exc.message}\" ({type(exc).__name__})", 4)
    logged = log_line(fl, "security: a submitter of tenant", FIN, PROJECT[HEALTH])
    say(f"server.log:  {logged or '(nothing)'}", 4)

    async def around() -> list[str]:  # not through the client: straight on health-prod's session API
        bus = await connect(fl.url, creds=str(creds), name="example-submitter")
        try:
            await bus.publish(subjects.api_sessions(HEALTH, "submit"), b"{}")
            await bus.flush()
            await asyncio.sleep(0.3)
            return refusals(bus)
        finally:
            await bus.close()

    subject = subjects.api_sessions(HEALTH, "submit")
    direct = next((d for d in asyncio.run(around()) if subject in d), None)
    say(f"straight on {subject}, without the client:")
    say(f"NATS server: REFUSED {direct or '(no refusal)'}", 4)
    check(own.phase == "succeeded" and WORKERS.get(own.hostname or "") == FIN,
          "the submitter may use its own tenant's project")
    check(refused is not None and type(refused).__name__ == "Refused", "the dispatcher refused the submission")
    check(logged is not None, "the server logged it as a security event")
    check(len(client.list(project=PROJECT[HEALTH])) == before, f"nothing was stored for {PROJECT[HEALTH]}")
    check(direct, f"the NATS server refused the publish on {HEALTH}'s session API")


def run(fl: EmbeddedFleet, check: Checks, count: int) -> None:
    hosts = start(fl)
    with fleet.SyncClient(fl.url, creds=fl.admin_creds) as client:  # the operator's identity, all tenants
        mixed_sessions(client, hosts, count, check)
        attack_claim(fl, client, hosts, check, fl.state_dir / "signals" / "release-victim")
        attack_subscribe(fl, client, hosts, check)
        attack_submit(fl, client, check)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    def count(text: str) -> int:
        if not text.isdigit() or not 2 <= int(text) <= 100:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 2 to 100")
        return int(text)

    parser.add_argument("--sessions", type=count, default=10, metavar="N",
                        help="mixed-tenant sessions to run (2-100, default 10)")
    parser.add_argument("--keep", action="store_true", help="keep the state dir (logs, creds) afterwards")
    args = parser.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # ✓ and ✗ on a terminal that cannot show them: '?'

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)  # `kill PID` cleans up like Ctrl-C
    print("Example 33: a multi-tenant fleet. Two tenants, four workers, mixed-tenant sessions; cross-tenant claims "
          "are refused at the dispatch boundary.")
    fl = EmbeddedFleet(Path(tempfile.mkdtemp(prefix="fleet-ex33-")))
    check = Checks()
    error = None
    try:
        run(fl, check, args.sessions)
    except KeyboardInterrupt:
        error = "interrupted"
    except (Failed, FleetError, OSError, subprocess.SubprocessError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave processes behind
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        section("stop everything this example started")
        say("$ fleet down")
        try:
            stopped = fl.down()
        except (OSError, subprocess.SubprocessError) as exc:
            stopped = f"fleet down failed: {exc}"
            error = error or stopped
        for line in stopped.splitlines() or ["nothing was running"]:
            say(line, 4)
    keep = args.keep or (error is not None and error != "interrupted") or bool(check.failed)  # to look into
    if keep:
        say(f"state dir kept: {fl.state_dir} (server.log, nats-server.log, agents/*/agent.log)", 0)
    else:
        shutil.rmtree(fl.state_dir, ignore_errors=True)
    print()
    if error is not None:
        print(f"example did not finish: {error}", file=sys.stderr)
        return 130 if error == "interrupted" else 1
    if check.failed:
        print(f"{len(check.failed)} of {len(check.results)} checks FAILED: " + "; ".join(check.failed),
              file=sys.stderr)
        return 1
    print(f"All {len(check.results)} checks held: every session ran on a worker of its own tenant, and every "
          "cross-tenant attempt was refused.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
