"""Where a service may answer: the reply subjects `Bus.serve` accepts, per endpoint.

Core NATS lets a requester put any subject in a request's reply field, and the responder publishes its answer
there with its own permissions. `fleet server`'s main identity may publish everywhere in the FLEET account, so a
service that answered every reply subject would let any identity that may send it one request choose where the
server's message lands: a KV bucket (`$KV.<bucket>.<key>`), a host's control or goodbye subject, another tenant's
work subjects. Every fleet client asks with a reply inbox of its own (`_INBOX.<its public key>.…`, the enroll
identity `_INBOX.enroll.…`: fleet.bus.identities), so a service answers only there:

- `any_inbox`: under `_INBOX.`, never into the enrollment inbox (a NATS without fleet's auth, where clients use
  nats-py's default `_INBOX.<nuid>` prefix);
- `identity_inbox`: under `_INBOX.<a well-formed user public key>.` (the API in operator mode);
- `ENROLL_INBOX`: `_INBOX.enroll.` (enrollment in operator mode);
- `inbox_of(public)`: `_INBOX.<that key>.` (a host's registration: the key of its own record).

A reply subject a rule refuses is not answered and the handler does not run (fleet.bus.connection.Bus.serve).
The NATS server enforces the same in operator mode: `fleet server` serves through identities that may publish
only under `_INBOX.` (fleet.bus.identities.server_replies, server_enroll). Pure; used by fleet.bus.connection
and fleet.service.server.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

INBOX = "_INBOX."
ENROLL_INBOX = "_INBOX.enroll"
ENROLL_REPLIES = f"{ENROLL_INBOX}."

#: a reply rule: may a request on `subject` be answered on `reply`?
ReplyRule = Callable[[str, str], bool]


def any_inbox(subject: str, reply: str) -> bool:
    """Under `_INBOX.`, and not into the enrollment inbox."""
    return reply.startswith(INBOX) and not reply.startswith(ENROLL_REPLIES)


def enroll_inbox(subject: str, reply: str) -> bool:
    return reply.startswith(ENROLL_REPLIES)


@lru_cache(maxsize=4096)
def is_user_key(token: str) -> bool:
    """A user public key (`U…`, 56 characters, its checksum right): what an identity's inbox prefix is made of.
    Cached: clients reuse their prefix for every request."""
    if len(token) != 56 or not token.startswith("U"):
        return False
    from fleet.bus.trust import public_key_bytes  # nkeys only where operator mode is in use

    try:
        public_key_bytes(token)
    except ValueError:
        return False
    return True


def identity_inbox(subject: str, reply: str) -> bool:
    """Under `_INBOX.<a user public key>.`: the inbox of some fleet identity (operator mode)."""
    if not reply.startswith(INBOX):
        return False
    token, dot, _ = reply[len(INBOX):].partition(".")
    return bool(dot) and is_user_key(token)


def inbox_of(public: str) -> str:
    """The reply prefix of the identity with public key `public` (its JWT lets it subscribe only under it)."""
    return f"{INBOX}{public}."
