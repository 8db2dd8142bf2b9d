"""Enrollment on the wire: the agent proves it holds its nkey, and the reply is sealed so only it can read it.

Every unenrolled agent shares one bearer identity (enroll.creds), which may publish only `fleet.v1.enroll` and read
only `_INBOX.enroll.>`; so anyone holding it sees every enrollment reply that crosses that inbox, and could ask the
server to answer on another agent's inbox. Three things make that worthless:

- **Proof of possession.** The request carries `proof`: the ed25519 signature, by the nkey the agent generated for
  itself, of `fleet.v1.enroll proof`, that nkey and the request's `box` key (`proof_message`). Nobody enrolls a
  public key whose seed it does not hold (e.g. another host's, or the enroll identity's own: revoking such a
  decoy would revoke them).
- **A bound inbox.** The agent asks with reply inbox `_INBOX.enroll.<its nkey>.…` (`enroll_inbox`); the server
  answers a request only there, and only once the proof verifies (fleet.service.api), so the server's reply can
  land only in the inbox of whoever holds that nkey's seed. A request that is malformed or unproven gets no
  answer at all (there is nowhere safe to send one).
- **A sealed reply.** The request carries `box`, a fresh X25519 public key; the server answers with `SealedReply`,
  the JoinReply sealed to it (libsodium's sealed box, PyNaCl), which only that agent can open. A spy on
  `_INBOX.enroll.>` sees ciphertext.

`request_enrollment` is the agent's side (fleet.agents.agent, and the tests' LiveFleet.enroll); `verify_proof`
and `seal` the server's (fleet.service.api).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.signing import VerifyKey

from fleet.bus import subjects
from fleet.bus.connection import Bus
from fleet.bus.messages import EnrollRequest, JoinReply, SealedReply, decode
from fleet.bus.replies import ENROLL_INBOX
from fleet.bus.trust import Key, public_key_bytes
from fleet.errors import ProtocolError, TransientError

PROOF_CONTEXT = b"fleet.v1.enroll proof\n"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def enroll_inbox(nkey: str) -> str:
    """The reply-inbox prefix an agent enrolling with `nkey` asks with (under the enroll identity's `_INBOX.enroll`)."""
    return f"{ENROLL_INBOX}.{nkey}"


def proof_message(nkey: str, box: str) -> bytes:
    return PROOF_CONTEXT + nkey.encode() + b"\n" + box.encode()


def sign_proof(user: Key, box: str) -> str:
    return _b64(user.sign(proof_message(user.public, box)))


def verify_proof(nkey: str, box: str, proof: str) -> bool:
    """Did the holder of `nkey`'s seed sign this enrollment (with this box key)?"""
    try:
        VerifyKey(public_key_bytes(nkey)).verify(proof_message(nkey, box), _unb64(proof))
    except (BadSignatureError, ValueError, binascii.Error):
        return False
    return True


def bound_to(req: EnrollRequest, reply: str) -> bool:
    """Is `reply` the inbox of the nkey `req` enrolls, and does `req` prove its sender holds that nkey?"""
    if not (req.nkey and req.box and req.proof):
        return False
    return reply.startswith(enroll_inbox(req.nkey) + ".") and verify_proof(req.nkey, req.box, req.proof)


def seal(data: bytes, box: str) -> bytes:
    """`data` sealed to X25519 public key `box` (base64url), as a SealedReply."""
    sealed = SealedBox(PublicKey(_unb64(box))).encrypt(data)
    return SealedReply(sealed=_b64(sealed)).encode()


@dataclass(frozen=True)
class ReplyKey:
    """The agent's one-time key for its sealed enrollment reply."""

    private: PrivateKey

    @classmethod
    def generate(cls) -> ReplyKey:
        return cls(PrivateKey.generate())

    @property
    def public(self) -> str:
        return _b64(bytes(self.private.public_key))

    def open(self, data: bytes) -> JoinReply:
        """The JoinReply in a SealedReply; ProtocolError if it is not one sealed to this key."""
        sealed = decode(SealedReply, data)
        try:
            plain = SealedBox(self.private).decrypt(_unb64(sealed.sealed))
        except (CryptoError, ValueError, binascii.Error):
            raise ProtocolError("the enrollment reply is not sealed to this agent's key") from None
        return decode(JoinReply, plain)


def enrollment_request(user: Key, box: ReplyKey, **fields: object) -> EnrollRequest:
    """An EnrollRequest for the identity `user` (its public key, and the proof that we hold its seed)."""
    return EnrollRequest(nkey=user.public, box=box.public, proof=sign_proof(user, box.public), **fields)  # type: ignore[arg-type]


async def request_enrollment(bus: Bus, req: EnrollRequest, box: ReplyKey, *, timeout: float = 10.0) -> JoinReply:
    """Send `req` and open the sealed reply. `bus` must ask with the inbox `enroll_inbox(req.nkey)` (connect with
    `inbox_prefix=`). RequestTimeout when nobody answers (the server does not answer a request it cannot bind to
    its sender), TransientError when the answer is not sealed to `box` (e.g. a server-side failure)."""
    data = await bus.request(subjects.ENROLL, req.encode(), timeout=timeout, what="fleet server")
    try:
        return box.open(data)
    except ProtocolError as exc:
        raise TransientError(f"unexpected enrollment reply: {exc.message}") from None
