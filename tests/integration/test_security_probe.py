"""A second look at "a bus no one can abuse": attacks that test_security.py does not try, against a real nats-server
in operator mode and a real `fleet server`.

Each weakness found was a test that failed while the attack succeeded, marked `xfail(strict=True)` with the finding
in its reason, so the suite stayed green and turned red the day the weakness was fixed; every one is fixed now and
its marker removed (docs/security.md, the threat model, names the mitigation of each). All of them are attacks that
must stay refused.

The root of most findings was: `fleet server` answered every request on the reply subject the requester chose
(`Bus.serve` -> `msg.respond`), and its identity may publish everywhere in the FLEET account. Any identity that may
send the server one request (the shared enroll identity, a viewer, a submitter, any host on its own register
subject) could therefore make the server publish a message of its choice of type on any subject: into any KV bucket
(`$KV.<bucket>.<key>`: the host registry, the revocations, the pepper, the counters, the apply lock, the applied
config), onto another host's subjects, another tenant's output, another identity's inbox, or a host's `bye`.
(The JetStream API itself ignores such replies: purging or deleting a stream this way does not work.) Now the server
answers only on the requester's own inbox, through identities that may publish nothing else (fleet.bus.replies).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fleet.bus import subjects
from fleet.bus.connection import Bus, RequestTimeout, connect
from fleet.bus.enrolling import ReplyKey, enroll_inbox, enrollment_request, request_enrollment, sign_proof
from fleet.bus.kv import open_store
from fleet.bus.messages import EnrollRequest, HostCommand, JoinReply, RegisterRequest, decode
from fleet.bus.trust import Key, creds_text, read_creds, write_secret
from fleet.bus.trust import decode as jwt_claims
from fleet.errors import AuthRefused, FleetError, PermissionDenied
from fleet.hosts.client import call
from tests.conftest import fleet_yaml, wait_for, wait_for_async

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# ------------------------------------------------------------------------------------------------ helpers


async def _enroll(fleet: Any, secret: str, hostname: str, *, user: Key | None = None,
                  nkey: str | None = None) -> tuple[JoinReply, str | None]:
    """Enroll as an agent does (fleet.bus.enrolling: a proof of the nkey, its inbox, a sealed reply), optionally
    claiming a chosen nkey (`nkey`: a public key whose seed we do not have: the proof is made with `user`, the only
    seed we hold). A request the server does not answer (it answers only proven requests) comes back as reason
    `unanswered`."""
    user = user or Key.generate("user")
    box = ReplyKey.generate()
    claimed = nkey or user.public
    req = EnrollRequest.model_construct(key=secret, hostname=hostname, version="0.1.0", nkey=claimed, box=box.public,
                                        proof=sign_proof(user, box.public))  # unvalidated: an attacker's request
    async with await fleet.bus("enroll", inbox_prefix=enroll_inbox(claimed)) as bus:
        try:
            reply = await request_enrollment(bus, req, box, timeout=3)
        except RequestTimeout:
            return JoinReply(ok=False, reason="unanswered", message="the server did not answer"), None
    if not reply.ok or not reply.jwt or nkey is not None:
        return reply, None
    path = fleet.root / "hosts" / f"{hostname}-{secrets.token_hex(3)}.creds"
    write_secret(path, creds_text(reply.jwt, user.seed))
    return reply, str(path)


async def _host(fleet: Any, secret: str, hostname: str) -> tuple[str, str]:
    reply, creds = await _enroll(fleet, secret, hostname)
    assert reply.ok and creds, reply
    return reply.machine_id or "", creds


async def _connects(fleet: Any, creds: str) -> bool:
    """Does NATS accept this identity right now?"""
    try:
        bus = await connect(fleet.url, creds=creds, connect_timeout=2)
    except AuthRefused:
        return False
    await bus.close()
    return True


async def _closed(bus: Any) -> bool:
    """Whether `bus` is still connected, once nats-server has closed it (or 10 s passed: then True, and the caller's
    assertion fails)."""
    with contextlib.suppress(AssertionError):
        await wait_for_async(lambda: asyncio.sleep(0, bus.is_connected), lambda up: not up, 10)
    return bus.is_connected


async def _admin(fleet: Any, mid: str, action: str) -> Any:
    async with await fleet.bus("admin") as admin:
        return await call(admin, subjects.API_HOSTS_COMMAND, HostCommand(id=mid, action=action), attempts=1)


async def _bounce(fleet: Any, creds: str, reply_to: str, *, subject: str = subjects.API_PING,
                  payload: bytes = b'{"v": 1}', times: int = 1) -> None:
    """Send the server a request it answers, with `reply_to` as the reply subject; check NATS let the request through
    (the attack needs nothing the identity may not do)."""
    bus = await connect(fleet.url, creds=creds)
    try:
        started = time.monotonic()
        for _ in range(times):
            await bus.nc.publish(subject, payload, reply=reply_to)
        await bus.flush()
        await asyncio.sleep(0.05)
        assert bus.denied(subject, started) is None, f"NATS refused the request itself: {bus.denied(subject, started)}"
    finally:
        await bus.close()
    await asyncio.sleep(0.5)  # the server handles it and answers


def _requests(fleet: Any, host: tuple[str, str]) -> dict[str, tuple[str, str, bytes]]:
    """Per identity: its creds, and a request the server answers that this identity may send."""
    mid, host_creds = host
    return {
        "enroll": (fleet.creds("enroll"), subjects.ENROLL, b"{}"),  # malformed: answered, costs no failure budget
        "viewer": (fleet.creds("viewer"), subjects.API_PING, b'{"v": 1}'),
        # a submitter may no longer ping: its session API (served by the dispatching replica)
        "submitter": (fleet.issue("sub-a", "submitter", "fin-prod"), subjects.api_sessions("fin-prod", "list"),
                      b'{"v": 1}'),
        "host": (host_creds, subjects.register(mid),
                 RegisterRequest(hostname="attacker", version="0.1.0").encode()),
    }


async def _stored(fleet: Any, bucket: str, key: str) -> bytes | None:
    async with await fleet.bus("server") as server:
        entry = await (await open_store(server, bucket, create=False)).get(key)
        return entry.value if entry is not None else None


def _two_tenants(fleet: Any) -> tuple[str, str]:
    return fleet.key("fin"), fleet.key("health", tenant="health-prod", pools=("pool-health-local",))


# ------------------------------------------------------------------------------------------------ reply subjects


def test_the_server_answers_only_on_the_requesters_own_inbox(live_fleet) -> None:
    fin, health = _two_tenants(live_fleet)

    async def scenario() -> dict[str, list[str]]:
        host = await _host(live_fleet, fin, "attacker")
        victim, _ = await _host(live_fleet, health, "victim")
        targets = [f"{subjects.host_prefix(victim)}.control", f"{subjects.host_work(victim)}.output",
                   "_INBOX.UADMINADMINADMIN.x", "_INBOX.enroll.victim.x", f"$KV.{subjects.BUCKET_HOSTS}.{victim}",
                   f"$KV.{subjects.BUCKET_TRUST}.revoked.x", f"$KV.{subjects.BUCKET_SECRETS}.x"]
        seen: dict[str, list[str]] = {}
        async with await live_fleet.bus("server") as sniffer:  # what actually gets published there, as NATS sees it
            got: list[str] = []

            async def on_msg(msg: Any) -> None:
                got.append(msg.subject)

            for target in targets:
                await sniffer.subscribe(target, on_msg)
            await sniffer.flush()
            for who, (creds, subject, payload) in _requests(live_fleet, host).items():
                got.clear()
                for target in targets:
                    await _bounce(live_fleet, creds, target, subject=subject, payload=payload)
                await sniffer.flush()
                seen[who] = sorted(set(got))
        return seen

    seen = asyncio.run(scenario())
    assert seen == {who: [] for who in seen}, seen


def test_a_host_cannot_make_itself_unrevocable(live_fleet) -> None:
    fin, _ = _two_tenants(live_fleet)

    async def scenario() -> tuple[str, bool]:
        mid, creds = await _host(live_fleet, fin, "attacker")
        await _bounce(live_fleet, creds, f"$KV.{subjects.BUCKET_HOSTS}.{mid}", subject=subjects.register(mid),
                      payload=RegisterRequest(hostname="attacker", version="0.1.0").encode())
        try:
            await _admin(live_fleet, mid, "revoke")
            outcome = "revoked"
        except FleetError as exc:
            outcome = f"{exc.code}: {exc.message}"
        return outcome, await _connects(live_fleet, creds)

    outcome, connects = asyncio.run(scenario())
    assert outcome == "revoked" and connects is False, outcome


def test_a_host_cannot_void_its_own_revocation_in_advance(live_fleet) -> None:
    fin, _ = _two_tenants(live_fleet)

    async def scenario() -> tuple[Any, bool]:
        mid, creds = await _host(live_fleet, fin, "attacker")
        nkey = read_creds(creds).public
        await _bounce(live_fleet, creds, f"$KV.{subjects.BUCKET_TRUST}.revoked.{nkey}", subject=subjects.register(mid),
                      payload=RegisterRequest(hostname="attacker", version="0.1.0").encode())
        data = await _admin(live_fleet, mid, "revoke")
        # the revocation reaches nats-server asynchronously: until it refuses the host (forever, had the attack worked)
        return data, await wait_for_async(lambda: _connects(live_fleet, creds), lambda ok: not ok, 10, 0.1, "the refusal")

    data, connects = asyncio.run(scenario())
    assert "revoked" in json.dumps(data)  # the operator is told it worked
    assert connects is False


def test_the_enroll_identity_cannot_un_revoke_a_host(live_fleet) -> None:
    fin, _ = _two_tenants(live_fleet)

    async def scenario() -> bool:
        mid, creds = await _host(live_fleet, fin, "revoked")
        other, other_creds = await _host(live_fleet, fin, "bystander")
        await _admin(live_fleet, mid, "revoke")
        assert not await _connects(live_fleet, creds)
        nkey = read_creds(creds).public
        await _bounce(live_fleet, live_fleet.creds("enroll"), f"$KV.{subjects.BUCKET_TRUST}.revoked.{nkey}",
                      subject=subjects.ENROLL, payload=b"{}")
        await _admin(live_fleet, other, "revoke")  # any later push (this one, or the one every minute)
        # until nats-server has that push (it refuses the bystander): the push that would un-revoke the first host
        await wait_for_async(lambda: _connects(live_fleet, other_creds), lambda ok: not ok, 10, 0.1, "the later push")
        return await _connects(live_fleet, creds)

    assert asyncio.run(scenario()) is False


def test_the_enroll_identity_cannot_disable_an_enrollment_key(live_fleet) -> None:
    fin, _ = _two_tenants(live_fleet)

    async def scenario() -> JoinReply:
        await _bounce(live_fleet, live_fleet.creds("enroll"), f"$KV.{subjects.BUCKET_CONFIG}.key.fin",
                      subject=subjects.ENROLL, payload=b"{}")
        reply, _ = await _enroll(live_fleet, fin, "legit")
        return reply

    reply = asyncio.run(scenario())
    assert reply.ok, reply


def test_a_viewer_cannot_destroy_the_pepper(live_fleet) -> None:
    _two_tenants(live_fleet)
    before = asyncio.run(_stored(live_fleet, subjects.BUCKET_SECRETS, "pepper"))
    asyncio.run(_bounce(live_fleet, live_fleet.creds("viewer"), f"$KV.{subjects.BUCKET_SECRETS}.pepper"))
    live_fleet.keys["later"] = {"id": "later", "tenant": "fin-prod", "pools": ["pool-local-main"],
                                "secret": {"from_env": "FLEET_TEST_KEY_LATER"}}
    live_fleet.secrets["FLEET_TEST_KEY_LATER"] = secrets.token_urlsafe(24)
    live_fleet.fleet_file.write_text(fleet_yaml(list(live_fleet.keys.values()), {}))
    result = subprocess.run([sys.executable, "-m", "fleet.cli.main", "apply", "--auto-approve", "--no-wait", "-f",
                             str(live_fleet.fleet_file), "--nats", live_fleet.url], capture_output=True, text=True,
                            env={**os.environ, **live_fleet.secrets}, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert asyncio.run(_stored(live_fleet, subjects.BUCKET_SECRETS, "pepper")) == before


def test_a_submitter_cannot_break_a_pools_member_list(live_fleet) -> None:
    fin, _ = _two_tenants(live_fleet)
    live_fleet.apply(hosts_max=10)

    async def scenario() -> tuple[JoinReply, str, bool]:
        mid, creds = await _host(live_fleet, fin, "member")
        await _bounce(live_fleet, live_fleet.issue("sub-a", "submitter", "fin-prod"),
                      f"$KV.{subjects.BUCKET_ENROLL}.members.pool-local-main",
                      subject=subjects.api_sessions("fin-prod", "list"))
        later, _ = await _enroll(live_fleet, fin, "later")
        try:
            await _admin(live_fleet, mid, "revoke")
            outcome = "revoked"
        except FleetError as exc:
            outcome = f"{exc.code}: {exc.message}"
        return later, outcome, await _connects(live_fleet, creds)

    later, outcome, connects = asyncio.run(scenario())
    assert later.ok, later
    assert outcome == "revoked" and connects is False, outcome


def test_nobody_can_jam_the_apply_lock(live_fleet) -> None:
    live_fleet.key("fin")
    asyncio.run(_bounce(live_fleet, live_fleet.creds("enroll"), f"$KV.{subjects.BUCKET_LOCKS}.apply",
                        subject=subjects.ENROLL, payload=b"{}"))
    result = subprocess.run([sys.executable, "-m", "fleet.cli.main", "apply", "--auto-approve", "--no-wait", "-f",
                             str(live_fleet.fleet_file), "--nats", live_fleet.url], capture_output=True, text=True,
                            env={**os.environ, **live_fleet.secrets}, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_nobody_can_forge_a_bye_through_the_server(live_fleet) -> None:
    fin, _ = _two_tenants(live_fleet)
    live_fleet.agent("victim", key=fin)
    live_fleet.wait_status("victim", "active", 30)
    mid = live_fleet.machine_id("victim")
    asyncio.run(_bounce(live_fleet, live_fleet.creds("viewer"), subjects.bye(mid)))
    assert f"host {mid} (victim) said goodbye" not in live_fleet.server.output()


def test_the_jetstream_api_ignores_replies_sent_by_the_server(live_fleet) -> None:
    """Held: a reply aimed at the JetStream API (purge, delete) is not executed (it comes without a reply subject
    and client info), so no identity purges or deletes a stream through the server."""
    fin, _ = _two_tenants(live_fleet)

    async def scenario() -> dict[str, int]:
        await _host(live_fleet, fin, "h")
        for target in (f"$JS.API.STREAM.PURGE.KV_{subjects.BUCKET_CONFIG}", f"$JS.API.STREAM.PURGE.KV_{subjects.BUCKET_TRUST}",
                       f"$JS.API.STREAM.DELETE.KV_{subjects.BUCKET_HOSTS}", f"$JS.API.STREAM.DELETE.KV_{subjects.BUCKET_ENROLL}"):
            await _bounce(live_fleet, live_fleet.creds("enroll"), target, subject=subjects.ENROLL, payload=b"{}")
        async with await live_fleet.bus("server") as server:
            return {i.config.name: i.state.messages for i in await server.js.streams_info()}

    counts = asyncio.run(scenario())
    assert counts[f"KV_{subjects.BUCKET_CONFIG}"] > 0 and counts[f"KV_{subjects.BUCKET_HOSTS}"] == 1
    assert counts[f"KV_{subjects.BUCKET_ENROLL}"] >= 1


def test_no_consumer_delivers_onto_a_hosts_control_subject(live_fleet) -> None:
    fin, _ = _two_tenants(live_fleet)
    agent = live_fleet.agent("victim", key=fin)
    live_fleet.wait_status("victim", "active", 30)
    mid = live_fleet.machine_id("victim")

    async def scenario() -> None:
        async with await live_fleet.bus("admin") as admin:
            config = await open_store(admin, subjects.BUCKET_CONFIG, create=False)
            await config.put("zz.order", b'{"v": 1, "action": "revoke", "by": "nobody"}')
            # onto the control, assignment and cancel subjects, every ack policy, with idle heartbeats / flow control
            for target, ack, extra in ((subjects.host_control(mid), "none", {}),
                                       (subjects.host_control(mid), "explicit", {"idle_heartbeat": 500_000_000,
                                                                                  "flow_control": True}),
                                       (subjects.host_assign(mid), "none", {}), (subjects.host_cancel(mid), "all", {})):
                body = {"stream_name": f"KV_{subjects.BUCKET_CONFIG}",
                        "config": {"deliver_subject": target, "ack_policy": ack, "deliver_policy": "last_per_subject",
                                   "filter_subject": f"$KV.{subjects.BUCKET_CONFIG}.zz.order", **extra}}
                await admin.request(f"$JS.API.CONSUMER.CREATE.KV_{subjects.BUCKET_CONFIG}", json.dumps(body).encode())

    asyncio.run(scenario())
    wait_for(lambda: "security: ignored" in agent.output(), 10, what="the agent ignoring the delivered order")
    assert agent.popen.poll() is None, agent.output()[-500:]  # delivered by NATS, refused by the agent
    assert live_fleet.by_name()["victim"]["status"] == "active"


def test_a_viewer_cannot_leave_durable_consumers_behind(live_fleet) -> None:
    live_fleet.key("fin")

    async def scenario() -> int:
        async def create(viewer: Bus, name: str) -> None:
            body = {"stream_name": f"KV_{subjects.BUCKET_CONFIG}",
                    "config": {"durable_name": name, "ack_policy": "none", "deliver_policy": "all"}}
            with contextlib.suppress(FleetError):  # refused: the request times out (3 s), so all 20 at once
                await viewer.request(f"$JS.API.CONSUMER.CREATE.KV_{subjects.BUCKET_CONFIG}.{name}",
                                     json.dumps(body).encode())

        async with await live_fleet.bus("viewer") as viewer:
            await asyncio.gather(*(create(viewer, f"evil{i}") for i in range(20)))
        async with await live_fleet.bus("server") as server:
            async def consumers() -> int:
                return (await server.js.stream_info(f"KV_{subjects.BUCKET_CONFIG}")).state.consumer_count

            # fewer than 20 left: none was made, or they were ephemeral and went after their inactivity threshold
            # (5 s); 20 durables would stay forever, and the wait would fail
            return await wait_for_async(consumers, lambda n: n < 20, 15, what="fewer than 20 consumers")

    assert asyncio.run(scenario()) < 20


# ------------------------------------------------------------------------------------------------ enrollment


def test_the_enroll_identity_cannot_read_other_agents_enrollment_replies(live_fleet) -> None:
    _, health = _two_tenants(live_fleet)

    async def scenario() -> tuple[str, list[bytes]]:
        got: list[bytes] = []
        async with await live_fleet.bus("enroll") as spy:
            async def on_msg(msg: Any) -> None:
                got.append(msg.data)

            await spy.subscribe("_INBOX.enroll.>", on_msg)
            await spy.flush()
            victim, _ = await _host(live_fleet, health, "victim-of-tenant-b")
            await asyncio.sleep(0.5)  # kept: the spy's copy may or may not come (nothing to wait for when it does not)
        return victim, got

    victim, got = asyncio.run(scenario())
    # NATS still delivers the reply to the spy (every enrolling agent shares the identity and its inbox), but it is
    # sealed to the victim's one-time key: nothing of it is readable
    readable = [data for data in got if any(text in data for text in (
        victim.encode(), b"health-prod", b"tenant", b"machine_id", b"eyJ0eXAiOiJKV1Qi"))]
    assert readable == [], readable
    for data in got:
        with pytest.raises(FleetError):
            decode(JoinReply, data)


def test_enrolling_with_the_enroll_identitys_own_key_cannot_revoke_it(live_fleet) -> None:
    fin, _ = _two_tenants(live_fleet)

    async def scenario() -> tuple[list[str | None], bool]:
        enroll = read_creds(live_fleet.creds("enroll"))
        reasons = []
        # claiming its public key, and proving it with its seed (which every holder of enroll.creds has)
        for attempt in ({"nkey": enroll.public}, {"user": Key.from_seed(enroll.seed)}):
            decoy, _ = await _enroll(live_fleet, fin, "decoy", **attempt)  # type: ignore[arg-type]
            reasons.append(decoy.reason)
            if decoy.ok:
                await _admin(live_fleet, decoy.machine_id or "", "rm")  # an offline host: routine clean-up
                await asyncio.sleep(0.5)
        return reasons, await _connects(live_fleet, live_fleet.creds("enroll"))

    reasons, connects = asyncio.run(scenario())
    assert reasons == ["unanswered", "identity_in_use"], reasons
    assert connects is True


def test_a_captured_nkey_cannot_be_enrolled_again_to_revoke_its_owner(live_fleet) -> None:
    fin, health = _two_tenants(live_fleet)

    async def scenario() -> tuple[JoinReply, bool]:
        captured: list[str] = []
        async with await live_fleet.bus("enroll") as spy:
            async def on_msg(msg: Any) -> None:
                captured.append(msg.subject)

            await spy.subscribe("_INBOX.enroll.>", on_msg)
            await spy.flush()
            _, victim_creds = await _host(live_fleet, health, "victim")
            await wait_for_async(lambda: asyncio.sleep(0, captured), bool, 10, what="the victim's reply captured")
        # the reply is sealed, but its subject is the inbox of the victim's nkey: the attacker learns the key
        victim_nkey = captured[0].split(".")[2]
        assert victim_nkey == read_creds(victim_creds).public
        decoy, _ = await _enroll(live_fleet, fin, "decoy", nkey=victim_nkey)
        if decoy.ok:
            await _admin(live_fleet, decoy.machine_id or "", "revoke")
            await asyncio.sleep(0.5)
        return decoy, await _connects(live_fleet, victim_creds)

    decoy, connects = asyncio.run(scenario())
    assert decoy.reason == "unanswered", decoy  # no proof that it holds the victim's seed: not even answered
    assert connects is True


def test_a_revoked_nkey_enrolled_again_is_revoked_again(live_fleet) -> None:
    fin, _ = _two_tenants(live_fleet)

    async def scenario() -> bool:
        user = Key.generate("user")
        first, creds1 = await _enroll(live_fleet, fin, "stolen", user=user)
        assert first.ok and creds1
        await _admin(live_fleet, first.machine_id or "", "revoke")
        assert not await _connects(live_fleet, creds1)
        await asyncio.sleep(1.2)  # JWT times are in seconds
        second, creds2 = await _enroll(live_fleet, fin, "stolen-again", user=user)
        if not second.ok or creds2 is None:
            return False  # refused: as it should be
        await _admin(live_fleet, second.machine_id or "", "revoke")
        await asyncio.sleep(0.5)
        return await _connects(live_fleet, creds2)

    assert asyncio.run(scenario()) is False


def test_enrollment_refuses_keys_that_are_not_user_keys_and_malformed_requests(live_fleet) -> None:
    """Held: an account, operator or seed in place of a user nkey, an oversized or malformed request, a request
    without a proof: refused (not even answered: there is no inbox that is surely the sender's) before a key use is
    spent; a claimed tenant is ignored."""
    fin, _ = _two_tenants(live_fleet)

    async def scenario() -> None:
        bad = [Key.generate("account").public, Key.generate("operator").public, Key.generate("user").seed,
               Key.generate("user").public.lower(), "U" + "A" * 54, ""]
        payloads = [json.dumps({"v": 1, "key": fin, "hostname": "x", "version": "0", "nkey": nkey}).encode()
                    for nkey in bad]
        payloads += [b"x" * (70 * 1024), b"[]", b'{"v": 1, "key": "' + b"k" * 2000 + b'"}', b"\xff\xfe", b'{"v": 2}',
                     json.dumps({"v": 1, "key": fin, "hostname": "x\x1b[2J", "version": "0",
                                 "nkey": Key.generate("user").public}).encode(),
                     json.dumps({"v": 1, "key": fin, "hostname": "x", "version": "0",  # no proof
                                 "nkey": Key.generate("user").public}).encode()]
        async with await live_fleet.bus("enroll") as bus:
            async def one(payload: bytes) -> str:
                try:
                    return repr(await bus.request(subjects.ENROLL, payload, timeout=2))
                except RequestTimeout:
                    return "unanswered"

            outcomes = await asyncio.gather(*(one(p) for p in payloads))
        assert outcomes == ["unanswered"] * len(payloads), outcomes
        assert await _stored(live_fleet, subjects.BUCKET_ENROLL, "uses.fin") is None  # no use spent
        reply, _ = await _enroll(live_fleet, fin, "ok")
        assert reply.ok and reply.tenant == "fin-prod"
        reply, _ = await live_fleet.enroll(fin, "claims", tenant="health-prod")
        assert reply.ok and reply.tenant == "fin-prod", reply

    asyncio.run(scenario())


def test_enrollment_refuses_an_nkey_with_a_bad_checksum(live_fleet) -> None:
    fin, _ = _two_tenants(live_fleet)

    async def scenario() -> JoinReply:
        reply, _ = await _enroll(live_fleet, fin, "bad-checksum", nkey="U" + "A" * 55)
        return reply

    assert asyncio.run(scenario()).ok is False


@pytest.mark.serial
def test_a_flood_of_wrong_keys_does_not_lock_out_a_legitimate_enrollment(live_fleet) -> None:
    fin, _ = _two_tenants(live_fleet)

    async def scenario() -> list[str]:
        stop = asyncio.Event()

        async def flood() -> None:
            # a well-formed, proven request (the attacker's own nkey, its own inbox): each one is answered, and each
            # wrong key is looked up
            user, box = Key.generate("user"), ReplyKey.generate()
            req = EnrollRequest(key=secrets.token_urlsafe(24), hostname="guess", version="0", nkey=user.public,
                                box=box.public, proof=sign_proof(user, box.public)).encode()
            async with await live_fleet.bus("enroll") as bus:
                while not stop.is_set():  # a steady ~2,000 wrong keys a second
                    for _ in range(4):
                        await bus.nc.publish(subjects.ENROLL, req, reply=f"{enroll_inbox(user.public)}.flood.x")
                    await asyncio.sleep(0.002)

        task = asyncio.create_task(flood())
        await asyncio.sleep(1.0)
        outcomes: list[str] = []
        try:
            for i in range(10):  # ten legitimate agents (or one retrying, as an agent does until --join-timeout)
                reply, _ = await _enroll(live_fleet, fin, f"legit-{i}")
                outcomes.append("ok" if reply.ok else reply.reason or "?")
                await asyncio.sleep(0.3)
        finally:
            stop.set()
            await task
        return outcomes

    outcomes = asyncio.run(scenario())
    # each legitimate request gets through only if it is the first to arrive after a token refills (1 in ~200)
    assert outcomes.count("ok") >= len(outcomes) // 2, outcomes


def _flood(fleet: Any, creds: str, subject: str, payloads: list[bytes], stop: asyncio.Event, *,
           reply: str | None = None) -> Any:
    async def run() -> int:
        sent = 0
        async with await connect(fleet.url, creds=creds) as bus:
            while not stop.is_set():
                for payload in payloads:
                    await bus.nc.publish(subject, payload, reply=reply or "")
                    sent += 1
                await asyncio.sleep(0)
                if sent % 2000 < len(payloads):
                    await bus.flush()
        return sent

    return asyncio.create_task(run())


@pytest.mark.serial
def test_a_hosts_heartbeat_flood_does_not_take_other_hosts_offline(live_fleet) -> None:
    """A host floods its own heartbeat subject with large valid heartbeats (128 sessions) and status flips; another
    tenant's host, heartbeating every 0.2 s with the fixture's 1 s grace, must never go offline."""
    fin, health = _two_tenants(live_fleet)
    live_fleet.agent("bystander", key=health)
    live_fleet.wait_status("bystander", "active", 30)
    victim = live_fleet.machine_id("bystander")

    async def scenario() -> int:
        mid, creds = await _host(live_fleet, fin, "flooder")
        sessions = [{"id": f"s{i:03d}" + "x" * 58, "phase": "running"} for i in range(128)]
        payloads = [json.dumps({"v": 1, "seq": i, "sent_at": time.time(), "started_at": 1.0, "status": status,
                                "running": 128, "sessions": sessions, "version": "9" * 64}).encode()
                    for i, status in enumerate(("active", "paused", "draining", "active"))]
        stop = asyncio.Event()
        task = _flood(live_fleet, creds, subjects.heartbeat(mid), payloads, stop)
        await asyncio.sleep(6)
        stop.set()
        return await task

    sent = asyncio.run(scenario())
    assert sent > 10_000, sent
    assert f"host {victim} (bystander) offline" not in live_fleet.server.output()


@pytest.mark.serial
def test_a_hosts_register_flood_does_not_keep_other_hosts_from_registering(live_fleet) -> None:
    """A host floods its own register subject (each request a new hostname: a store write each); another host's
    registration must still get through within its 5 s request timeout."""
    fin, health = _two_tenants(live_fleet)

    async def scenario() -> list[float]:
        mid, creds = await _host(live_fleet, fin, "flooder")
        other, other_creds = await _host(live_fleet, health, "other")
        payloads = [RegisterRequest(hostname=f"h{i}", version="0.1.0").encode() for i in range(50)]
        stop = asyncio.Event()
        # the flooder's own inbox: the server answers a registration only there (fleet.bus.replies)
        task = _flood(live_fleet, creds, subjects.register(mid), payloads, stop,
                      reply=f"_INBOX.{read_creds(creds).public}.x")
        await asyncio.sleep(1.0)
        took = []
        try:
            async with await connect(live_fleet.url, creds=other_creds) as bus:
                for _ in range(3):
                    started = time.monotonic()
                    reply = decode(JoinReply, await bus.request(
                        subjects.register(other), RegisterRequest(hostname="other", version="0.1.0").encode(),
                        timeout=5.0))
                    assert reply.ok, reply
                    took.append(time.monotonic() - started)
        finally:
            stop.set()
            await task
        return took

    took = asyncio.run(scenario())
    assert max(took) < 5.0, took


def test_a_submitter_learns_nothing_about_other_tenants_from_ping(live_fleet) -> None:
    fin, health = _two_tenants(live_fleet)

    async def scenario() -> Any:
        for i in range(3):
            await _host(live_fleet, health, f"b{i}")
        async with await connect(live_fleet.url, creds=live_fleet.issue("sub-a", "submitter", "fin-prod")) as bus:
            try:
                return await call(bus, subjects.API_PING, attempts=1)
            except PermissionDenied:
                return {"refused": True}  # a submitter may not ping at all (NATS refuses it)

    data = asyncio.run(scenario())
    assert data.get("hosts", 0) == 0 and not data.get("metrics"), data


# ------------------------------------------------------------------------------------------------ revocation


def test_a_revoked_identity_stays_out_through_every_restart_and_a_new_one_works(live_fleet) -> None:
    """Held: a revoked host's every connection closes; nats-server itself refuses it after a restart (same store),
    with `fleet server` down so that nothing re-pushes; and after a fleet server restart; the same machine enrolled
    again with a new nkey works while the old one stays refused. (No pause after the trust dir is made: every pushed
    account JWT is newer than the one nats.conf preloads; test_a_revocation_pushed_in_the_second_of_the_preloaded_
    account_jwt_survives_a_restart pins that down.)"""
    fin, _ = _two_tenants(live_fleet)

    async def revoke() -> str:
        mid, creds = await _host(live_fleet, fin, "revokee")
        conns = [await connect(live_fleet.url, creds=creds, persistent=True) for _ in range(3)]
        await _admin(live_fleet, mid, "revoke")
        await wait_for_async(lambda: asyncio.sleep(0, [c.is_connected for c in conns]), lambda up: not any(up), 10,
                    what="every connection of the revoked host closed")
        for c in conns:
            await c.close()
        assert not await _connects(live_fleet, creds)
        return creds

    creds = asyncio.run(revoke())
    assert live_fleet.server is not None
    live_fleet.server.stop()
    live_fleet.nats.stop()
    live_fleet.nats.start()
    assert not asyncio.run(_connects(live_fleet, creds))
    live_fleet.start_server()
    assert not asyncio.run(_connects(live_fleet, creds))

    async def again() -> None:
        _, fresh = await _host(live_fleet, fin, "revokee")
        assert await _connects(live_fleet, fresh) and not await _connects(live_fleet, creds)

    asyncio.run(again())


def test_a_revocation_pushed_in_the_second_of_the_preloaded_account_jwt_survives_a_restart(tmp_path: Path) -> None:
    """nats-server keeps, at a restart, the account JWT its resolver stored only if it is strictly newer than the one
    nats.conf preloads. Here the preloaded one is issued in the future (the worst case of "the same second"): a
    revocation pushed now must still be taken, and still hold after nats-server restarts with nothing re-pushing."""
    from fleet.bus.embedded import EmbeddedNats, free_port
    from fleet.bus.trustdir import TrustDir
    from fleet.hosts.revocation import Revocations

    trust = TrustDir.create(tmp_path / "trust")
    write_secret(trust.path("account.jwt"), trust.account_jwt({}, iat=int(time.time()) + 3))
    port = free_port()
    conf = trust.write_nats_conf(tmp_path, "127.0.0.1", port)
    nats = EmbeddedNats(store_dir=tmp_path / "nats", port=port, extra_args=["-c", str(conf)])
    nats.start()
    try:
        victim = tmp_path / "victim.creds"
        write_secret(victim, trust.issue_role("viewer", name="victim"))

        async def connects() -> bool:
            try:
                bus = await connect(nats.url, creds=str(victim), connect_timeout=2)
            except AuthRefused:
                return False
            await bus.close()
            return True

        async def revoke() -> None:
            assert await connects()
            async with await connect(nats.url, creds=str(trust.path("server.creds"))) as bus, \
                    await connect(nats.url, creds=str(trust.path("sys.creds"))) as sys_bus:
                revocations = Revocations(trust, await open_store(bus, subjects.BUCKET_TRUST), sys_bus)
                await revocations.revoke(read_creds(victim).public, "victim")
            assert not await connects()

        asyncio.run(revoke())
        nats.stop()
        nats.start()
        assert not asyncio.run(connects())
    finally:
        nats.stop()


# ------------------------------------------------------------------------------------------------ files


def _fleet(state: Path, url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    return subprocess.run([sys.executable, "-m", "fleet.cli.main", *args], capture_output=True, text=True,
                          timeout=90, env={**base, "FLEET_STATE_DIR": str(state), "FLEET_NATS_URL": url, **(env or {})},
                          cwd=state.parent)


def test_fleet_up_keeps_secrets_private_and_revocations_across_down_and_up(tmp_path: Path) -> None:
    """Held: the trust dir is 0700 with 0600 files, nats.conf and the JetStream store are private, a second
    `fleet up` changes nothing, and a revocation survives `fleet down` + `fleet up` (which rewrites nats.conf with
    the account JWT as first issued: the full resolver keeps the newer one)."""
    from fleet.bus.embedded import free_port

    state = tmp_path / ".fleet"
    url = f"nats://127.0.0.1:{free_port()}"
    try:
        assert _fleet(state, url, "up").returncode == 0
        secret = secrets.token_hex(16)
        (tmp_path / "fleet.yaml").write_text(fleet_yaml([{"id": "k", "tenant": "fin-prod", "pools": ["pool-local-main"],
                                                          "secret": {"from_env": "FLEET_KEY_K"}}], {}))
        applied = _fleet(state, url, "apply", "--auto-approve", "-f", str(tmp_path / "fleet.yaml"),
                         env={"FLEET_KEY_K": secret})
        assert applied.returncode == 0, applied.stderr

        async def enroll() -> tuple[str, str]:
            user, box = Key.generate("user"), ReplyKey.generate()
            async with await connect(url, creds=str(state / "trust" / "enroll.creds"),
                                     inbox_prefix=enroll_inbox(user.public)) as bus:
                req = enrollment_request(user, box, key=secret, hostname="h", version="0")
                reply = await request_enrollment(bus, req, box)
            assert reply.ok and reply.jwt
            path = tmp_path / "h.creds"
            write_secret(path, creds_text(reply.jwt, user.seed))
            return reply.machine_id or "", str(path)

        async def connects(creds: str) -> bool:
            try:
                bus = await connect(url, creds=creds, connect_timeout=2)
            except AuthRefused:
                return False
            await bus.close()
            return True

        mid, creds = asyncio.run(enroll())
        assert _fleet(state, url, "hosts", "revoke", mid).returncode == 0
        assert not asyncio.run(connects(creds))
        conf_before = (state / "nats.conf").read_bytes()
        assert _fleet(state, url, "up").returncode == 0  # a second `fleet up`
        assert (state / "nats.conf").read_bytes() == conf_before
        assert _fleet(state, url, "down").returncode == 0
        assert _fleet(state, url, "up").returncode == 0
        assert not asyncio.run(connects(creds))
        assert asyncio.run(connects(str(state / "trust" / "admin.creds")))

        assert stat.S_IMODE((state / "trust").stat().st_mode) == 0o700
        for path in (state / "trust").iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE((state / "nats.conf").stat().st_mode) == 0o600
        for path in (state / "nats").rglob("*"):  # the pepper and the registry are in the JetStream store
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
        for path in state.rglob("*"):
            if path.is_file() and path.suffix not in (".blk", ".idx"):
                assert secret.encode() not in path.read_bytes(), path
    finally:
        _fleet(state, url, "down")


def test_fleet_up_leaves_no_log_readable_by_others(tmp_path: Path) -> None:
    from fleet.bus.embedded import free_port

    state = tmp_path / ".fleet"
    url = f"nats://127.0.0.1:{free_port()}"
    try:
        assert _fleet(state, url, "up").returncode == 0
        readable = [p.name for p in (state / "server.log", state / "nats-server.log")
                    if stat.S_IMODE(p.stat().st_mode) & 0o004 and stat.S_IMODE(state.stat().st_mode) & 0o001]
    finally:
        _fleet(state, url, "down")
    assert readable == []


def test_an_agents_state_dir_keeps_its_seed_private_and_never_stores_the_key(live_fleet) -> None:
    """Held: the agent's state dir is 0700, host.creds 0600 and holds a user seed whose JWT allows only its own
    subjects; the enrollment key is in no file of the state dir."""
    fin, _ = _two_tenants(live_fleet)
    agent = live_fleet.agent("private", key=fin)
    live_fleet.wait_status("private", "active", 30)
    root = live_fleet.agent_dir("private")
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "host.creds").stat().st_mode) == 0o600
    creds = read_creds(root / "host.creds")
    allowed = creds.claims["nats"]["pub"]["allow"] + creds.claims["nats"]["sub"]["allow"]
    mid = live_fleet.machine_id("private")
    assert all(mid in subject or subject.startswith(f"_INBOX.{creds.public}") for subject in allowed), allowed
    for path in root.iterdir():
        if path.is_file():
            assert fin.encode() not in path.read_bytes(), path
    assert fin not in agent.output()


def test_identities_carry_nats_limits(live_fleet) -> None:
    fin, _ = _two_tenants(live_fleet)
    _, creds = asyncio.run(_host(live_fleet, fin, "limited"))
    nats = read_creds(creds).claims["nats"]
    account = jwt_claims((live_fleet.trust.root / "account.jwt").read_text())["nats"]["limits"]
    assert nats["subs"] != -1 and account["conn"] != -1, (nats, account)

    async def enforced() -> tuple[int, list[bool]]:
        """nats-server enforces them: a host's subscriptions beyond its limit get nothing (nats-server 2.15 closes
        the connection), and a payload beyond its limit closes its connection."""
        mid = read_creds(creds).claims["nats"]["sub"]["allow"][0].split(".")[3]
        got: list[str] = []
        connected = []
        async with await connect(live_fleet.url, creds=creds) as bus:
            async def on_msg(msg: Any) -> None:
                got.append(msg.subject)

            with contextlib.suppress(Exception):
                for i in range(nats["subs"] + 8):
                    await bus.subscribe(f"{subjects.host_prefix(mid)}.x{i}", on_msg)
                await bus.flush()
            async with await live_fleet.bus("server") as server:
                for i in range(nats["subs"] + 8):
                    await server.publish(f"{subjects.host_prefix(mid)}.x{i}", b"x")
                await server.flush()
            connected.append(await _closed(bus))
        async with await connect(live_fleet.url, creds=creds) as bus:
            with contextlib.suppress(Exception):
                await bus.nc.publish(subjects.heartbeat(mid), b"x" * (nats["payload"] + 1))
                await bus.flush(timeout=2)
            connected.append(await _closed(bus))
        return len(got), connected

    received, connected = asyncio.run(enforced())
    assert received <= nats["subs"] and connected == [False, False], (received, connected)
