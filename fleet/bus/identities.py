"""Who may say what on the bus: the NATS permissions of every fleet identity, enforced by nats-server itself.

Each identity is a NATS user (fleet.bus.trust) whose JWT carries these permissions; the NATS server refuses
anything else (a denied publish is dropped, a denied subscribe is refused, and nats-py reports both through
`error_cb`). Every identity but the server gets its own reply-inbox prefix, `_INBOX.<its public key>`, and may
subscribe only under it, so nobody can read another identity's replies.

- server: everything in the FLEET account (fleet's subjects, JetStream, KV). It never answers a request with it:
  `fleet server` makes two more identities for itself at start (signed in memory, never written), through which
  it serves requests, and which may publish only replies: `server_replies` (the API, registrations, the session
  API and the hosts' work subjects; it may publish under `_INBOX.` but not into the enrollment inbox) and
  `server_enroll` (enrollment; it may publish only under `_INBOX.enroll.`). So whatever reply subject a requester
  chooses, the NATS server itself refuses a reply aimed at a KV bucket, a host's subjects or anything else but an
  inbox (fleet.bus.replies checks the same before a handler runs).
- admin (`fleet apply`, `fleet hosts revoke`, …): the whole API; the applied config and apply lock buckets, read and
  write; the enrollment counters and the pepper of key digests, read. No heartbeat, bye, register or host subject: an operator cannot impersonate
  a host or read what the server tells one, and cannot read enrollment requests (they carry key secrets).
- viewer (a reviewer's CI job: `fleet plan`, `list`, `show`, `route test`, `keys list`, `sessions list`): the
  read-only API (ping, host pages, one host, sessions listed, shown, awaited and their logs) and the config and
  counter buckets read-only. `fleet apply` is refused (it cannot
  take the apply lock nor write a record), and so is every host command.
- submitter of tenant T (the dispatch issue): the session API of tenant T only (no ping: it tells fleet-wide counts).
- host <id>: publishes only its own heartbeat, goodbye, registration and work subjects; subscribes only to its own
  host subjects and its own inbox; may answer the server's requests (NATS `resp`). No `>`, no `$JS.API.>`, no `$KV.>`.
- enroll (a shared bearer identity that unenrolled agents use): publishes only `fleet.v1.enroll` and subscribes only
  to `_INBOX.enroll.>`; it cannot subscribe to `fleet.v1.enroll`, so only the server can answer an enrollment.

Pure: plain data. Used by the embedded server setup, the enrollment authority (host JWTs) and `fleet creds`.
"""

from __future__ import annotations

from fleet.bus import subjects
from fleet.bus.replies import ENROLL_INBOX
from fleet.bus.trust import Permissions, inbox_prefix

ROLES = ("admin", "viewer", "submitter")

_CONFIG, _LOCKS, _COUNTERS, _SECRETS = (subjects.BUCKET_CONFIG, subjects.BUCKET_LOCKS, subjects.BUCKET_ENROLL,
                                       subjects.BUCKET_SECRETS)


# NATS limits per connection (fleet.bus.trust.Permissions): what one identity may cost nats-server. Payloads are
# a few times the largest message of the role (a host's heartbeat <= 16 KiB, output chunk <= 4 KiB of text and
# final work event with a 4K-character tail, each <= ~24 KiB as JSON; requests <= 64 KiB, which the server refuses
# beyond; a submit up to its 64 KiB command and 64 KiB environment); a message beyond makes nats-server close the
# connection, so they are generous. The server and admins are not limited (host pages and applied records).
HOST_SUBS, HOST_PAYLOAD = 64, 128 * 1024
ENROLL_SUBS, ENROLL_PAYLOAD = 16, 128 * 1024
CLIENT_SUBS, CLIENT_PAYLOAD = 1024, 256 * 1024  # viewers and submitters


def _kv_read(bucket: str) -> tuple[str, ...]:
    """The JetStream API calls a KV client needs to read a bucket (get, and snapshots through ordered consumers).
    Consumers only through the unnamed create subject, which nats-server refuses for a durable one (fleet reads
    through ephemeral ordered consumers; the server clears away whatever is left: fleet.service.janitor)."""
    stream = f"KV_{bucket}"
    return (f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.INFO.{stream}.>", f"$JS.API.CONSUMER.DELETE.{stream}.>",
            f"$JS.API.STREAM.MSG.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>",
            f"$JS.FC.{stream}.>")


def _kv_write(bucket: str) -> tuple[str, ...]:
    return (f"$KV.{bucket}.>",)


def _own_inbox(user_public: str) -> tuple[str, ...]:
    return (f"{inbox_prefix(user_public)}.>",)


def server() -> Permissions:
    return Permissions()


def server_replies() -> Permissions:
    """The identity `fleet server` answers requests through: it receives the API, registrations and the hosts' work
    subjects, and may publish nothing but replies into identities' inboxes (never the enrollment inbox)."""
    return Permissions(
        pub_allow=("_INBOX.>",),
        pub_deny=(f"{ENROLL_INBOX}.>",),
        sub_allow=(f"{subjects.PREFIX}.api.>", subjects.REGISTER_WILDCARD, f"{subjects.WORK_PREFIX}*.event",
                   f"{subjects.WORK_PREFIX}*.events", f"{subjects.WORK_PREFIX}*.output"),
    )


def server_enroll() -> Permissions:
    """The identity `fleet server` answers enrollments through: it may publish only into the enrollment inbox."""
    return Permissions(pub_allow=(f"{ENROLL_INBOX}.>",), sub_allow=(subjects.ENROLL,))


def admin(user_public: str) -> Permissions:
    return Permissions(
        pub_allow=(f"{subjects.PREFIX}.api.>", "$JS.API.INFO", *_kv_read(_CONFIG), *_kv_write(_CONFIG),
                   *_kv_read(_LOCKS), *_kv_write(_LOCKS), *_kv_read(_COUNTERS), *_kv_read(_SECRETS)),
        sub_allow=_own_inbox(user_public),
    )


VIEWER_API = (subjects.API_PING, subjects.API_HOSTS_PAGE, f"{subjects.API_HOSTS_PAGE}.*", subjects.API_HOSTS_GET,
              *(f"{subjects.API_SESSIONS}.*.{verb}" for verb in ("list", "get", "wait", "logs")))


def viewer(user_public: str) -> Permissions:
    return Permissions(
        pub_allow=(*VIEWER_API, "$JS.API.INFO", *_kv_read(_CONFIG), *_kv_read(_COUNTERS)),
        sub_allow=_own_inbox(user_public), subs=CLIENT_SUBS, payload=CLIENT_PAYLOAD,
    )


def submitter(user_public: str, tenant: str) -> Permissions:
    """The session API of its tenant, and nothing else (not even ping, which says how many hosts the whole fleet
    has and what the server dropped: other tenants' business)."""
    return Permissions(
        pub_allow=(f"{subjects.API_SESSIONS}.{tenant}.>",),
        sub_allow=_own_inbox(user_public), subs=CLIENT_SUBS, payload=CLIENT_PAYLOAD,
    )


def host(user_public: str, machine_id: str) -> Permissions:
    return Permissions(
        pub_allow=(subjects.heartbeat(machine_id), subjects.bye(machine_id), subjects.register(machine_id),
                   f"{subjects.host_work(machine_id)}.>"),
        sub_allow=(f"{subjects.host_prefix(machine_id)}.>", *_own_inbox(user_public)),
        responses=True, subs=HOST_SUBS, payload=HOST_PAYLOAD,
    )


def enroll() -> Permissions:
    return Permissions(pub_allow=(subjects.ENROLL,), sub_allow=(f"{ENROLL_INBOX}.>",), subs=ENROLL_SUBS,
                       payload=ENROLL_PAYLOAD)


def for_role(role: str, user_public: str, tenant: str | None = None) -> Permissions:
    if role == "admin":
        return admin(user_public)
    if role == "viewer":
        return viewer(user_public)
    if role == "submitter":
        if not tenant:
            raise ValueError("a submitter identity needs a tenant")
        return submitter(user_public, tenant)
    raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
