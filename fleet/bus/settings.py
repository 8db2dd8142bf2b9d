"""Connection settings that the CLI builds before it knows whether it will connect: TLS files.

Plain data with no NATS import, so that `fleet --help` stays light; fleet.bus.connection turns it into an SSL
context when it connects. Built by fleet.cli.options (`--tls-ca`, `--tls-cert`, `--tls-key`), by `fleet up` for
the server it starts, and by tests.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from fleet.errors import UsageError


@dataclass(frozen=True)
class TlsSettings:
    """TLS to the NATS server: a CA to verify it, and a client certificate and key if it asks for one."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def __bool__(self) -> bool:
        return bool(self.ca or self.cert or self.key)

    def context(self) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(cafile=self.ca)
            if self.cert:
                ctx.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise UsageError(f"cannot use the TLS files ({exc})",
                             hint="--tls-ca is the CA of the NATS server; --tls-cert and --tls-key a client pair") from None
        return ctx
