"""The root of every runtime exception fleet raises on purpose, the wire codes that carry them over NATS, and the
exit codes the CLI ends with.

Configuration problems are *diagnostics* (see fleet.schema.diagnostics), collected and reported all at once;
runtime failures are exceptions under FleetError. Each class has a wire `code` (what an API reply carries in its
`error` field), a `retryable` flag (the client retries those with backoff) and an `exit_code`. `WIRE_ERRORS` is
the one table from code to class: the server encodes an exception with `to_wire()`, the client turns a reply
back into the same class with `from_wire()`, so retry meaning survives the trip. The CLI (fleet.cli.main) prints
`error: <message>` plus the hint, never a traceback, and exits with the error's code (docs/cli.md, "Exit codes").
Every layer imports this module; it imports nothing of fleet.
"""

from __future__ import annotations

from typing import Any

# ------------------------------------------------------------------------------------------------ exit codes
EXIT_OK = 0
EXIT_ERROR = 1  # failed: refused, not found, invalid fleet.yaml, internal error; retrying as is will not help
EXIT_CHANGES = 2  # not an error: `fleet plan --detailed-exitcode` found changes
EXIT_REVOKED = 3  # `fleet agent run`: this host was revoked
EXIT_STALE_PLAN = 4  # the saved plan's basis moved: run `fleet plan` again and review
EXIT_LOCKED = 5  # someone else holds the apply lock: wait (--lock-timeout) or force-unlock a dead holder
EXIT_NOT_CONVERGED = 6  # applied, but hosts did not converge in time: wait longer or look at the hosts
EXIT_USAGE = 64  # the command line is wrong (bad option, bad value, missing argument)
EXIT_UNAVAILABLE = 69  # NATS or the fleet server could not be reached, or kept failing: retry later
EXIT_INTERRUPTED = 130  # Ctrl-C, SIGTERM, SIGHUP

#: documented in docs/cli.md; a test keeps that table and this one the same
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_ERROR: "failed: refused, not found, invalid fleet.yaml or an internal error (retrying as is will not help)",
    EXIT_CHANGES: "`fleet plan --detailed-exitcode` only: the plan has changes",
    EXIT_REVOKED: "`fleet agent run` only: this host was revoked",
    EXIT_STALE_PLAN: "the saved plan is stale (the fleet changed since it was made): plan again and review",
    EXIT_LOCKED: "another apply holds the lock: wait with --lock-timeout, or force-unlock a dead holder",
    EXIT_NOT_CONVERGED: "applied, but live hosts did not converge within --wait-timeout",
    EXIT_USAGE: "usage error: a bad option, value or argument on the command line",
    EXIT_UNAVAILABLE: "unavailable: NATS or the fleet server could not be reached (retry later)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C, SIGTERM or SIGHUP); an apply releases its lock first",
}


class FleetError(Exception):
    """A failure the user can act on. `hint` says what to do."""

    code = "error"
    exit_code = EXIT_ERROR
    retryable = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def to_wire(self) -> dict[str, Any]:
        """The `error`, `message`, `hint` and `retryable` fields of an API reply that carries this error."""
        return {"error": self.code, "message": self.message, "hint": self.hint, "retryable": self.retryable}


class UsageError(FleetError):
    """The command was called wrongly."""

    code = "usage"
    exit_code = EXIT_USAGE


class ConfigError(FleetError):
    """The configuration could not be loaded; carries the diagnostics that say why."""

    code = "invalid_config"

    def __init__(self, message: str, diagnostics: list | None = None, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.diagnostics = diagnostics or []


class InvalidRequest(FleetError):
    """A request that is well-formed but names nothing sensible (a malformed or ambiguous machine ID, …)."""

    code = "invalid"


class ProtocolError(FleetError):
    """A message could not be decoded (not JSON, wrong shape, too large, too deep)."""

    code = "malformed"


class UnsupportedVersion(ProtocolError):
    """A message of a protocol version this fleet does not speak."""

    code = "unsupported_version"


class TooLarge(ProtocolError):
    """A message larger than its subject allows."""

    code = "too_large"


class TransientError(FleetError):
    """A failure that may go away if retried (a timeout, a lost connection)."""

    code = "unavailable"
    exit_code = EXIT_UNAVAILABLE
    retryable = True


class ConnectionFailed(TransientError):
    """The NATS server could not be reached."""

    code = "connection_failed"


class ServerUnavailable(TransientError):
    """NATS answers but no `fleet server` does (or it did not answer in time)."""

    code = "server_unavailable"


class SnapshotExpired(TransientError):
    """The server no longer holds the host snapshot being read (expired, or that replica restarted)."""

    code = "expired"


class AgentUnreachable(TransientError):
    """A host's agent did not answer a command in time."""

    code = "agent_unreachable"


class NotFound(FleetError):
    """A named object (host, project, pool, key, lock) does not exist."""

    code = "not_found"


class Conflict(FleetError):
    """A compare-and-set lost a race, or the state moved under us; re-read and retry."""

    code = "conflict"
    retryable = True


class Refused(FleetError):
    """The control plane refused a request (enrollment, claim, command) and said why."""

    code = "refused"


class QueueFull(Refused):
    """Too many sessions of this tenant wait already: submit later (or raise capacity)."""

    code = "queue_full"


class AuthRefused(Refused):
    """The NATS server refused the credentials (unknown, revoked, or none given where they are required)."""

    code = "auth_refused"


class PermissionDenied(Refused):
    """The NATS server refused a publish or subscribe: this identity may not use that subject."""

    code = "permission_denied"


class HostOffline(Refused):
    """The command needs a live agent and the host is offline."""

    code = "offline"


class HostRevoked(Refused):
    """The host is revoked: it can do nothing more and nothing can be done to it but `fleet hosts rm`."""

    code = "revoked"


class InternalError(FleetError):
    """A bug: the server failed in a way it did not expect (its log has the traceback)."""

    code = "internal"


class StalePlan(FleetError):
    """A saved plan whose basis moved: the fleet changed since it was made."""

    code = "stale_plan"
    exit_code = EXIT_STALE_PLAN


class LockHeld(FleetError):
    """Another process holds the apply lock."""

    code = "lock_held"
    exit_code = EXIT_LOCKED
    retryable = True

    def __init__(self, message: str, *, hint: str | None = None, info: Any = None) -> None:
        super().__init__(message, hint=hint)
        self.info = info


class LockLost(FleetError):
    """The apply lock expired or was taken over while we held it: stop writing."""

    code = "lock_lost"
    exit_code = EXIT_LOCKED


class NotConverged(FleetError):
    """Applied, but the live hosts did not converge within the timeout."""

    code = "not_converged"
    exit_code = EXIT_NOT_CONVERGED
    retryable = True


class Interrupted(FleetError):
    """A signal (SIGTERM, SIGHUP, SIGINT) ended the command."""

    code = "interrupted"
    exit_code = EXIT_INTERRUPTED


def _table() -> dict[str, type[FleetError]]:
    table: dict[str, type[FleetError]] = {}
    todo: list[type[FleetError]] = [FleetError]
    while todo:
        cls = todo.pop()
        if cls.code in table and table[cls.code] is not cls:
            raise RuntimeError(f"wire code {cls.code!r} used by {table[cls.code].__name__} and {cls.__name__}")
        table[cls.code] = cls
        todo.extend(cls.__subclasses__())
    return table


#: every wire code and the class it stands for (built from the classes above, so the two cannot disagree)
WIRE_ERRORS: dict[str, type[FleetError]] = _table()


def from_wire(code: str | None, message: str | None, hint: str | None = None,
              retryable: bool | None = None) -> FleetError:
    """The FleetError an API reply carries. A code this fleet does not know (from a newer server) becomes a plain
    FleetError that keeps the code, the message and the retry meaning the server gave it: never a crash, and a
    transient failure of a newer server is still retried."""
    cls = WIRE_ERRORS.get(code or "")
    if cls is not None:
        return cls(message or code or "request failed", hint=hint)
    if retryable:
        err: FleetError = TransientError(message or code or "request failed", hint=hint)
    else:
        err = FleetError(message or code or "request failed", hint=hint)
    if code:
        err.code = code
    return err
