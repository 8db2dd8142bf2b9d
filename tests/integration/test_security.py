"""A bus no one can abuse: every attack of the zero-trust issue, tried against a real nats-server in operator mode
and a real `fleet server`, now refused by the NATS server itself (or, where the bus lets a message through by
design, by the control plane).

The attacker's tools are real identities: a host of tenant A (enrolled as an agent is), the shared enrollment
identity, a read-only viewer, an admin, and no identity at all. A refusal is observed where nats-py reports it:
a denied subscribe or publish goes to `error_cb` (never raised), a denied connection raises. Every test also shows
that the same operation works for the identity allowed to do it, so a test cannot pass because nothing works.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.bus import subjects
from fleet.bus.connection import Bus, connect
from fleet.bus.enrolling import ReplyKey, enroll_inbox, enrollment_request, request_enrollment
from fleet.bus.kv import open_store
from fleet.bus.messages import Bye, ControlCommand, HostCommand
from fleet.bus.records import encode_record
from fleet.bus.trust import Key
from fleet.errors import AuthRefused, FleetError, PermissionDenied
from tests.conftest import FAST_HEARTBEAT, run_cli, wait_for, wait_for_async

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

BUCKETS = (subjects.BUCKET_CONFIG, subjects.BUCKET_HOSTS, subjects.BUCKET_ENROLL, subjects.BUCKET_LOCKS,
           subjects.BUCKET_SECRETS, subjects.BUCKET_TRUST)


class Probe:
    """A connection under some identity that records what the NATS server refused it."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.received: list[str] = []

    @classmethod
    async def open(cls, fleet: Any, creds: str) -> Probe:
        return cls(await connect(fleet.url, creds=creds))

    def refusals(self) -> list[str]:
        return [text.lower() for _, text in self.bus.denials]

    async def refused(self, kind: str, subject: str) -> bool:
        """Did the server refuse a `kind` (publish / subscription) on `subject`? (it answers within a round trip)"""
        await self.bus.flush()
        wanted = f'permissions violation for {kind} to "{subject.lower()}"'
        for _ in range(50):
            if any(wanted in text for text in self.refusals()):
                return True
            await asyncio.sleep(0.02)
        return False

    async def subscribe(self, subject: str) -> None:
        async def on_msg(msg: Any) -> None:
            self.received.append(msg.subject)

        await self.bus.subscribe(subject, on_msg)

    async def close(self) -> None:
        await self.bus.close()


async def _enrolled_host(fleet: Any, secret: str, name: str) -> tuple[str, str]:
    reply, creds = await fleet.enroll(secret, name)
    assert reply.ok and creds, reply
    return reply.machine_id or "", creds


def _two_tenants(fleet: Any) -> tuple[str, str]:
    return fleet.key("fin"), fleet.key("health", tenant="health-prod", pools=("pool-health-local",))


# ------------------------------------------------------------------------------------------------ connections


def test_anonymous_and_unknown_identities_are_refused(live_fleet, tmp_path) -> None:
    async def scenario() -> None:
        with pytest.raises(AuthRefused, match="refused the credentials"):
            await connect(live_fleet.url, connect_timeout=2)
        # an identity signed by a key this fleet does not trust (another fleet's trust dir)
        from fleet.bus.trustdir import TrustDir

        other = TrustDir.create(tmp_path / "other-trust")
        with pytest.raises(AuthRefused):
            await connect(live_fleet.url, creds=str(other.path("admin.creds")), connect_timeout=3)
        ok = await connect(live_fleet.url, creds=live_fleet.creds("admin"))
        await ok.close()

    asyncio.run(scenario())


# ------------------------------------------------------------------------------------------------ a host's reach


def test_a_host_may_use_its_own_subjects_and_nothing_else(live_fleet) -> None:
    fin, health = _two_tenants(live_fleet)

    async def scenario() -> None:
        a_id, a_creds = await _enrolled_host(live_fleet, fin, "host-a")
        b_id, _ = await _enrolled_host(live_fleet, health, "host-b")
        c_id, _ = await _enrolled_host(live_fleet, fin, "host-c")  # same tenant, another host
        a = await Probe.open(live_fleet, a_creds)
        # what it may do
        await a.subscribe(f"{subjects.host_prefix(a_id)}.>")
        assert not await a.refused("subscription", f"{subjects.host_prefix(a_id)}.>")
        await a.bus.publish(subjects.heartbeat(a_id), b"{}")
        assert not await a.refused("publish", subjects.heartbeat(a_id))
        # what it may not
        for subject in (">", "fleet.>", "fleet.v1.hb.*", f"{subjects.host_prefix(b_id)}.>",
                        f"{subjects.host_prefix(c_id)}.control", "$JS.API.>", "$KV.>", f"$KV.{subjects.BUCKET_CONFIG}.>",
                        "_INBOX.>", subjects.ENROLL, f"{subjects.API_SESSIONS}.health-prod.>", "$SYS.>"):
            await a.subscribe(subject)
            assert await a.refused("subscription", subject), subject
        for subject, payload in ((subjects.heartbeat(b_id), b"{}"), (subjects.heartbeat(c_id), b"{}"),
                                 (subjects.bye(c_id), Bye().encode()), (subjects.register(c_id), b"{}"),
                                 (subjects.host_control(c_id), ControlCommand(action="pause").encode()),
                                 (subjects.API_HOSTS_COMMAND, HostCommand(id=c_id, action="revoke").encode()),
                                 (subjects.API_HOSTS_PAGE, b'{"v": 1}'), (subjects.ENROLL, b"{}"),
                                 ("_INBOX.someone-else.reply", b"{}"),  # a reply it was not asked for
                                 ("$JS.API.STREAM.PURGE.KV_fleet-v1-config", b""),
                                 (f"$KV.{subjects.BUCKET_CONFIG}.key.evil", b"{}")):
            await a.bus.publish(subject, payload)
            assert await a.refused("publish", subject), subject
        with pytest.raises(PermissionDenied):  # and the KV API, through the client, is refused too
            await open_store(a.bus, subjects.BUCKET_HOSTS, create=False)
        await a.close()

    asyncio.run(scenario())


def _subject_strategy(own: str, others: list[str]) -> st.SearchStrategy[str]:
    token = st.one_of(
        st.sampled_from(["*", ">", "fleet", "v1", "hb", "bye", "host", "work", "out", "api", "register", "control",
                         "sessions", "health-prod", "fin-prod", "_INBOX", "$JS", "API", "$KV", "$SYS", "KV_fleet-v1-config",
                         "fleet-v1-hosts", "", " ", own, *others]),
        st.text(min_size=1, max_size=6),  # unicode, control characters, dots, anything
    )
    return st.lists(token, min_size=1, max_size=6).map(".".join)


class LoopThread:
    """An event loop on a thread of its own, so that hypothesis (synchronous) can drive one long-lived connection."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        future: Future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        async def shutdown() -> None:  # end every task (10k subscriptions each have one) before the loop stops
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(shutdown(), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_ten_thousand_subscriptions_of_a_tenant_a_host_get_nothing_of_tenant_b(live_fleet) -> None:
    fin, health = _two_tenants(live_fleet)
    loop = LoopThread()
    try:
        a_id, a_creds = loop.run(_enrolled_host(live_fleet, fin, "attacker"))
        b_ids = [loop.run(_enrolled_host(live_fleet, health, f"victim-{i}"))[0] for i in range(2)]
        a: Probe = loop.run(Probe.open(live_fleet, a_creds))
        attempts: list[str] = []

        async def try_all(batch: list[str]) -> None:
            for subject in batch:
                attempts.append(subject)
                with contextlib.suppress(Exception):  # nats-py refuses some malformed subjects itself: a refusal too
                    await a.subscribe(subject)

        @settings(max_examples=200, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
        @given(st.lists(_subject_strategy(a_id, [*b_ids, *[f"{subjects.host_prefix(b)}" for b in b_ids]]),
                        min_size=50, max_size=50))
        def attack(batch: list[str]) -> None:
            loop.run(try_all(batch))

        attack()
        assert len(attempts) >= 10_000, len(attempts)
        loop.run(a.subscribe(f"{subjects.host_prefix(a_id)}.>"))  # its own subjects, to show a delivery can be seen

        async def traffic() -> tuple[list[str], list[str]]:
            """Tenant B's traffic on every subject it has, as the server sends it; and one message to A itself."""
            server = await live_fleet.bus("server")
            for b in b_ids:
                for subject in (subjects.host_control(b), f"{subjects.host_prefix(b)}.assign", subjects.heartbeat(b),
                                subjects.bye(b), subjects.register(b), f"{subjects.host_work(b)}.s1.done"):
                    await server.publish(subject, b"tenant-b")
            for subject in (f"{subjects.API_SESSIONS}.health-prod.list", f"{subjects.API_SESSIONS}.health-prod.submit",
                            "_INBOX.health.x", "fleet.v1.api.hosts.page"):
                await server.publish(subject, b"tenant-b")
            kv = await open_store(server, subjects.BUCKET_HOSTS)
            await kv.put(f"{b_ids[0]}-shadow", b"tenant-b")
            await server.publish(f"{subjects.host_prefix(a_id)}.control", b"for-a")  # A's own: must arrive
            await server.flush()
            # until A's own message, published last, arrives: the ones before it would have arrived by then
            await wait_for_async(lambda: asyncio.sleep(0, list(a.received)),
                                 lambda got: f"{subjects.host_prefix(a_id)}.control" in got, 10, what="A's own message")
            await server.close()
            await a.bus.flush()
            return list(a.received), a.refusals()

        received, refusals = loop.run(traffic())
        assert [s for s in received if s != f"{subjects.host_prefix(a_id)}.control"] == [], received
        assert received.count(f"{subjects.host_prefix(a_id)}.control") >= 1, "the probe could see a delivery"
        assert len(refusals) == 64  # the server refused (the bus keeps the last 64 refusals: so at least that many)
        loop.run(a.close())
    finally:
        loop.close()


# ------------------------------------------------------------------------------------------------ enrollment


def test_only_the_server_can_answer_an_enrollment(live_fleet) -> None:
    fin, _ = _two_tenants(live_fleet)

    async def scenario() -> None:
        _, host_creds = await _enrolled_host(live_fleet, fin, "would-be-server")
        for creds in (live_fleet.creds("enroll"), live_fleet.creds("admin"), live_fleet.creds("viewer"), host_creds):
            probe = await Probe.open(live_fleet, creds)
            await probe.subscribe(subjects.ENROLL)
            await probe.subscribe(f"{subjects.ENROLL}.>")
            assert await probe.refused("subscription", subjects.ENROLL), creds
            await probe.close()
        # an agent's request reaches the server only: the reply carries an identity the fleet's key signed
        reply, creds = await live_fleet.enroll(fin, "genuine")
        from fleet.bus.trust import verify

        assert reply.ok and verify(reply.jwt or "", live_fleet.trust.issuers)["sub"]
        # the enroll identity cannot read other agents' inboxes beyond its own prefix, nor anything else
        probe = await Probe.open(live_fleet, live_fleet.creds("enroll"))
        for subject in (">", "_INBOX.>", subjects.HEARTBEAT_WILDCARD, "$JS.API.>"):
            await probe.subscribe(subject)
            assert await probe.refused("subscription", subject), subject
        await probe.close()

    asyncio.run(scenario())


def test_a_hundred_thousand_random_keys_enroll_nothing_and_no_secret_is_stored(live_fleet) -> None:
    fin, health = _two_tenants(live_fleet)
    tries = 100_000

    async def scenario() -> dict[str, int]:
        outcomes: dict[str, int] = {}
        # a guesser that does everything right (its own nkey and the proof, its own inbox), but the key
        user, box = Key.generate("user"), ReplyKey.generate()
        async with await live_fleet.bus("enroll", inbox_prefix=enroll_inbox(user.public)) as bus:
            sem = asyncio.Semaphore(256)

            proven = enrollment_request(user, box, key="x", hostname="guess", version="0")

            async def one() -> None:
                req = proven.model_copy(update={"key": secrets.token_urlsafe(24)})
                async with sem:
                    try:
                        reply = await request_enrollment(bus, req, box, timeout=20)
                        key = "accepted" if reply.ok else (reply.reason or "?")
                    except FleetError as exc:
                        key = type(exc).__name__
                outcomes[key] = outcomes.get(key, 0) + 1

            await asyncio.gather(*(one() for _ in range(tries)))
        return outcomes

    outcomes = asyncio.run(scenario())
    assert sum(outcomes.values()) == tries
    assert outcomes.get("accepted", 0) == 0, outcomes
    assert set(outcomes) <= {"unknown_key", "rate_limited", "malformed"}, outcomes  # the rest never got looked up
    assert outcomes.get("rate_limited", 0) > tries * 0.9  # guessing costs the guesser time, not the server work
    time.sleep(0.3)  # the budget refills: a real host still enrolls
    reply, _ = asyncio.run(live_fleet.enroll(fin, "after-the-storm"))
    assert reply.ok, reply
    unknown = [line for line in live_fleet.server.output().splitlines() if "unknown key (fingerprint" in line]
    assert 0 < len(unknown) < 2_000  # logged as security events, bounded by the budget
    assert fin not in live_fleet.server.output() and health not in live_fleet.server.output()

    async def dump() -> bytes:
        """Every message of every stream (every KV bucket) as the server identity sees it."""
        async with await live_fleet.bus("server") as bus:
            out = b""
            for info in await bus.js.streams_info():
                name, last = info.config.name, info.state.last_seq
                for seq in range(info.state.first_seq, last + 1):
                    try:
                        msg = await bus.js.get_msg(name, seq)
                    except Exception:  # deleted
                        continue
                    out += (msg.data or b"") + b"\n"
            return out

    everything = asyncio.run(dump())
    assert b"hmac-sha256:" in everything  # the digests are there: the dump is the real one
    for secret in (fin, health, *live_fleet.secrets.values()):
        assert secret.encode() not in everything


# ------------------------------------------------------------------------------------------------ roles


def test_a_viewer_can_plan_but_not_apply_nor_command(live_fleet) -> None:
    live_fleet.key("ci")
    viewer = {"FLEET_NATS_CREDS": live_fleet.creds("viewer")}
    plan = run_cli("plan", "-f", str(live_fleet.fleet_file), "--nats", live_fleet.url, env={**viewer,
                                                                                           **live_fleet.secrets})
    assert plan.exit_code == 0, plan.output
    assert "No changes" in plan.output
    listed = run_cli("list", "--json", "--nats", live_fleet.url, env=viewer)
    assert listed.exit_code == 0
    apply = run_cli("apply", "--auto-approve", "--no-wait", "-f", str(live_fleet.fleet_file), "--nats",
                    live_fleet.url, env={**viewer, **live_fleet.secrets})
    assert apply.exit_code == 1 and "NATS refused" in apply.output, apply.output
    revoke = run_cli("hosts", "revoke", "00000000", "--nats", live_fleet.url, env=viewer)
    assert revoke.exit_code == 1 and "NATS refused" in revoke.output, revoke.output

    async def writes() -> None:
        probe = await Probe.open(live_fleet, live_fleet.creds("viewer"))
        for subject in (f"$KV.{subjects.BUCKET_CONFIG}.key.evil", f"$KV.{subjects.BUCKET_ENROLL}.uses.ci",
                        f"$KV.{subjects.BUCKET_HOSTS}.x", f"$JS.API.STREAM.PURGE.KV_{subjects.BUCKET_CONFIG}"):
            await probe.bus.publish(subject, b"{}")
            assert await probe.refused("publish", subject), subject
        for bucket in (subjects.BUCKET_HOSTS, subjects.BUCKET_SECRETS, subjects.BUCKET_TRUST):
            with pytest.raises(PermissionDenied):
                await open_store(probe.bus, bucket, create=False)
        await probe.close()

    asyncio.run(writes())


def test_an_admin_may_apply_but_not_touch_hosts_counters_or_enrollments(live_fleet) -> None:
    """The attacks that needed no host at all (plain `nats.connect(url)` once): an admin identity is the most an
    operator gets, and it still cannot reset a key's use counter, un-revoke a host, purge the store, impersonate a
    host, command an agent directly, or read enrollment requests."""
    fin, _ = _two_tenants(live_fleet)

    async def scenario() -> None:
        victim, _ = await _enrolled_host(live_fleet, fin, "victim")
        admin = await Probe.open(live_fleet, live_fleet.creds("admin"))
        for subject in (f"$KV.{subjects.BUCKET_ENROLL}.uses.fin", f"$KV.{subjects.BUCKET_HOSTS}.{victim}",
                        f"$KV.{subjects.BUCKET_TRUST}.revoked.x", f"$KV.{subjects.BUCKET_SECRETS}.pepper",
                        f"$JS.API.STREAM.PURGE.KV_{subjects.BUCKET_CONFIG}",
                        f"$JS.API.STREAM.DELETE.KV_{subjects.BUCKET_HOSTS}", subjects.heartbeat(victim),
                        subjects.bye(victim), subjects.host_control(victim), subjects.register(victim)):
            await admin.bus.publish(subject, b"{}")
            assert await admin.refused("publish", subject), subject
        for subject in (subjects.ENROLL, ">", subjects.HEARTBEAT_WILDCARD, f"{subjects.host_prefix(victim)}.>"):
            await admin.subscribe(subject)
            assert await admin.refused("subscription", subject), subject
        # what an admin is for still works
        config = await open_store(admin.bus, subjects.BUCKET_CONFIG, create=False)
        assert await config.get("org.test") is not None
        await admin.close()

    asyncio.run(scenario())


# ------------------------------------------------------------------------------------------------ revocation


def test_revocation_closes_the_connection_within_two_seconds_and_for_good(live_fleet) -> None:
    fin, _ = _two_tenants(live_fleet)

    async def scenario() -> float:
        mid, creds = await _enrolled_host(live_fleet, fin, "to-revoke")
        closed = asyncio.Event()

        async def on_closed() -> None:
            closed.set()

        bus = await connect(live_fleet.url, creds=creds, on_closed=on_closed, persistent=True)
        await bus.publish(subjects.heartbeat(mid), b"{}")
        await bus.flush()
        async with await live_fleet.bus("admin") as admin:
            started = time.monotonic()
            from fleet.hosts.client import call

            await call(admin, subjects.API_HOSTS_COMMAND, HostCommand(id=mid, action="revoke"), attempts=1)
            await asyncio.wait_for(closed.wait(), 10)
            took = time.monotonic() - started
        assert "revoked" in str(bus.nc.last_error).lower(), bus.nc.last_error
        await bus.close()
        with pytest.raises(AuthRefused):  # the stored credential no longer connects
            await connect(live_fleet.url, creds=creds, connect_timeout=2)
        return took

    took = asyncio.run(scenario())
    assert took <= 2.0, took


def test_a_revoked_agent_process_stops_and_cannot_come_back(live_fleet) -> None:
    fin, _ = _two_tenants(live_fleet)
    agent = live_fleet.agent("revoked-agent", key=fin)
    live_fleet.wait_status("revoked-agent", "active", 30)
    mid = live_fleet.machine_id("revoked-agent")
    assert run_cli("hosts", "revoke", mid, "--nats", live_fleet.url).exit_code == 0
    assert agent.popen.wait(10) == 3
    again = live_fleet.agent("revoked-agent")
    assert again.popen.wait(30) == 3 and "NATS refuses this host's identity" in again.output()


# ------------------------------------------------------------------------------------------------ forgeries


def test_forged_bye_and_control_from_another_host_change_nothing(live_fleet) -> None:
    fin, _ = _two_tenants(live_fleet)
    victim = live_fleet.agent("victim", key=fin)
    live_fleet.wait_status("victim", "active", 30)
    mid = live_fleet.machine_id("victim")

    async def forge() -> list[str]:
        _, creds = await _enrolled_host(live_fleet, fin, "forger")
        forger = await Probe.open(live_fleet, creds)
        await forger.bus.publish(subjects.bye(mid), Bye().encode())
        await forger.bus.publish(subjects.host_control(mid), ControlCommand(action="revoke").encode())
        await forger.bus.publish(subjects.heartbeat(mid), json.dumps({"v": 1, "seq": 1, "sent_at": 1, "started_at": 1,
                                                                    "status": "paused", "version": "x"}).encode())
        await forger.bus.flush()
        # nats-py hands each refusal to error_cb as it reads it: wait for all three (Probe.refused polls)
        for subject in (subjects.bye(mid), subjects.host_control(mid), subjects.heartbeat(mid)):
            assert await forger.refused("publish", subject), (subject, forger.refusals())
        refusals = forger.refusals()
        await forger.close()
        return refusals

    refusals = asyncio.run(forge())
    assert len([r for r in refusals if "publish" in r]) == 3, refusals
    time.sleep(5 * FAST_HEARTBEAT)
    host = live_fleet.by_name()["victim"]
    assert host["status"] == "active"  # not offline (bye), not paused (heartbeat), not revoked (control)
    assert victim.popen.poll() is None


def test_keys_written_behind_the_plan_need_the_server_identity(live_fleet) -> None:
    """`key.evil` into the applied config: a host, the enrollment identity and a viewer cannot write it."""
    fin = live_fleet.key("fin")

    async def scenario() -> None:
        _, host_creds = await _enrolled_host(live_fleet, fin, "writer")
        record = encode_record("key", "evil", {"tenant": "health-prod", "pools": ["pool-health-local"],
                                               "secret_digest": "hmac-sha256:00"})
        for creds in (host_creds, live_fleet.creds("enroll"), live_fleet.creds("viewer")):
            probe = await Probe.open(live_fleet, creds)
            await probe.bus.publish(f"$KV.{subjects.BUCKET_CONFIG}.key.evil", record)
            assert await probe.refused("publish", f"$KV.{subjects.BUCKET_CONFIG}.key.evil"), creds
            await probe.close()
        async with await live_fleet.bus("admin") as admin:
            assert await (await open_store(admin, subjects.BUCKET_CONFIG, create=False)).get("key.evil") is None

    asyncio.run(scenario())


def test_a_weak_or_shared_key_secret_is_refused_at_plan(live_fleet) -> None:
    live_fleet.keys["weak"] = {"id": "weak", "tenant": "fin-prod", "pools": ["pool-local-main"],
                               "secret": {"from_env": "FLEET_TEST_KEY_WEAK"}}
    live_fleet.keys["twin"] = {"id": "twin", "tenant": "fin-prod", "pools": ["pool-local-main"],
                               "secret": {"from_env": "FLEET_TEST_KEY_TWIN"}}
    from tests.conftest import fleet_yaml

    live_fleet.fleet_file.write_text(fleet_yaml(list(live_fleet.keys.values()), {}))
    env = {"FLEET_TEST_KEY_WEAK": "local-dev-demo-secret", "FLEET_TEST_KEY_TWIN": "local-dev-demo-secret"}
    for command in ("plan", "apply"):
        args = [command, "-f", str(live_fleet.fleet_file), "--nats", live_fleet.url]
        result = run_cli(*args, *(["--auto-approve"] if command == "apply" else []), env=env)
        assert result.exit_code == 1, result.output
        assert "key weak: the secret in FLEET_TEST_KEY_WEAK carries about" in result.output
        assert "keys weak and twin have the same secret" in result.output
        assert "local-dev-demo-secret" not in result.output  # the reason, never the secret


def test_enrollment_connections_see_only_their_inbox(live_fleet) -> None:
    """A nats-py client of the enroll identity must use its inbox prefix; wait_for below also proves the fixture's
    enrollment used it (or nothing would come back)."""
    fin, _ = _two_tenants(live_fleet)

    async def scenario() -> None:
        bus = await live_fleet.bus("enroll")
        assert bus.inbox == "_INBOX.enroll"
        await bus.close()

    asyncio.run(scenario())
    wait_for(lambda: asyncio.run(live_fleet.enroll(fin, "inboxed"))[0].ok, 10, what="an enrollment")
