"""fleet.bus.replies (where a service answers) and fleet.bus.enrolling (proof of the nkey, sealed reply): pure."""

from __future__ import annotations

import nkeys
import pytest

from fleet.bus.enrolling import (
    ReplyKey,
    bound_to,
    enroll_inbox,
    enrollment_request,
    seal,
    sign_proof,
    verify_proof,
)
from fleet.bus.messages import EnrollRequest, JoinReply, decode
from fleet.bus.replies import any_inbox, identity_inbox, inbox_of
from fleet.bus.replies import enroll_inbox as enroll_rule
from fleet.bus.trust import PREFIXES, Key
from fleet.errors import ProtocolError

# a fixed key: the parametrized test IDs below name it, and pytest-xdist's workers must collect the same IDs
USER = Key.from_seed(nkeys.encode_seed(bytes(range(32)), PREFIXES["user"]).decode())


@pytest.mark.parametrize("reply, anyone, identity, enrolling", [
    (f"_INBOX.{USER.public}.abc.1", True, True, False),
    ("_INBOX.ZJ1a2b3c4d5e6f7g8h9i0j.x", True, False, False),  # nats-py's default prefix (a NATS without auth)
    ("_INBOX.UADMINADMINADMIN.x", True, False, False),  # not a public key
    (f"_INBOX.{USER.public}", True, False, False),  # the bare prefix: not below an identity's inbox
    (f"_INBOX.enroll.{USER.public}.x", False, False, True),
    ("$KV.fleet-v1-hosts.x", False, False, False),
    ("fleet.v1.bye.x", False, False, False),
    ("fleet.v1.host.x.control", False, False, False),
    ("_INBOX", False, False, False),
])
def test_reply_rules(reply: str, anyone: bool, identity: bool, enrolling: bool) -> None:
    assert any_inbox("s", reply) is (anyone or identity)
    assert identity_inbox("s", reply) is identity
    assert enroll_rule("s", reply) is enrolling


def test_inbox_of_a_host_is_only_its_own() -> None:
    other = Key.generate("user")
    assert f"_INBOX.{USER.public}.x.1".startswith(inbox_of(USER.public))
    assert not f"_INBOX.{other.public}.x.1".startswith(inbox_of(USER.public))


def _request(user: Key, box: ReplyKey) -> EnrollRequest:
    return enrollment_request(user, box, key="secret", hostname="h", version="1")


def test_a_proof_binds_the_nkey_and_the_box_key() -> None:
    box = ReplyKey.generate()
    req = _request(USER, box)
    assert verify_proof(USER.public, box.public, req.proof or "")
    assert not verify_proof(USER.public, ReplyKey.generate().public, req.proof or "")  # another box
    other = Key.generate("user")
    assert not verify_proof(other.public, box.public, req.proof or "")  # another key's name on it
    assert not verify_proof(other.public, box.public, sign_proof(USER, box.public))


def test_a_request_is_bound_only_to_the_inbox_of_its_proven_nkey() -> None:
    box = ReplyKey.generate()
    req = _request(USER, box)
    assert bound_to(req, f"{enroll_inbox(USER.public)}.nuid.1")
    assert not bound_to(req, f"{enroll_inbox(Key.generate('user').public)}.nuid.1")  # another agent's inbox
    assert not bound_to(req, "_INBOX.enroll.victim.x")
    assert not bound_to(req.model_copy(update={"proof": None}), f"{enroll_inbox(USER.public)}.nuid.1")
    claimed = Key.generate("user")  # someone else's key, "proven" with ours
    forged = EnrollRequest.model_construct(**{**req.model_dump(), "nkey": claimed.public})
    assert not bound_to(forged, f"{enroll_inbox(claimed.public)}.nuid.1")


def test_the_reply_opens_only_with_its_box_key() -> None:
    box = ReplyKey.generate()
    sealed = seal(JoinReply(ok=True, machine_id="m", jwt="a.b.c").encode(), box.public)
    assert b"a.b.c" not in sealed and b"machine_id" not in sealed
    assert box.open(sealed).jwt == "a.b.c"
    with pytest.raises(ProtocolError):
        ReplyKey.generate().open(sealed)
    with pytest.raises(ProtocolError):
        box.open(JoinReply(ok=True).encode())  # not sealed


def test_nkeys_are_checksummed() -> None:
    good = {"v": 1, "key": "k", "hostname": "h", "version": "1"}
    assert decode(EnrollRequest, EnrollRequest(**good, nkey=USER.public).encode()).nkey == USER.public
    with pytest.raises(ProtocolError):
        decode(EnrollRequest, EnrollRequest.model_construct(**good, nkey="U" + "A" * 55).encode())
