"""The root of every runtime exception fleet raises on purpose.

Configuration problems are *diagnostics* (see fleet.schema.diagnostics), collected and reported all at once;
runtime failures are exceptions under FleetError. The CLI (fleet.cli.main) catches FleetError and prints
`error: <message>` plus the hint, never a traceback. Every layer imports this module; it imports nothing.
"""

from __future__ import annotations


class FleetError(Exception):
    """A failure the user can act on. `hint` says what to do; `exit_code` is what the CLI exits with."""

    exit_code = 1
    retryable = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(FleetError):
    """The command was called wrongly (exit 2, like click's own usage errors)."""

    exit_code = 2


class ConfigError(FleetError):
    """The configuration could not be loaded; carries the diagnostics that say why."""

    def __init__(self, message: str, diagnostics: list | None = None, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.diagnostics = diagnostics or []


class TransientError(FleetError):
    """A failure that may go away if retried (a timeout, a lost connection)."""

    retryable = True


class ConnectionFailed(TransientError):
    """The NATS server could not be reached."""


class NotFound(FleetError):
    """A named object (host, project, pool, key, lock) does not exist."""


class Conflict(FleetError):
    """A compare-and-set lost a race, or the state moved under us; re-read and retry."""

    retryable = True


class Refused(FleetError):
    """The control plane refused a request (enrollment, claim, command) and said why."""
