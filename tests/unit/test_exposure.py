"""`fleet server` warns when it reaches a NATS server beyond this machine without TLS (fleet.service.server)."""

from __future__ import annotations

import pytest

from fleet.bus.settings import TlsSettings
from fleet.service.server import exposure_warnings


@pytest.mark.parametrize("url, tls, warns", [
    ("nats://127.0.0.1:4222", None, False),
    ("nats://localhost:4222,nats://127.0.0.1:4223", None, False),
    ("nats://10.1.2.3:4222", None, True),
    ("nats.internal:4222", None, True),  # no scheme: nats://
    ("tls://nats.internal:4222", None, False),
    ("nats://nats.internal:4222", TlsSettings(ca="/etc/ca.pem"), False),
    ("nats://127.0.0.1:4222,nats://10.1.2.3:4222", None, True),  # one remote server is enough
])
def test_remote_nats_without_tls_is_flagged(url: str, tls: TlsSettings | None, warns: bool) -> None:
    warnings = exposure_warnings(url, tls)
    assert bool(warnings) == warns
    if warns:
        assert "without TLS" in warnings[0] and "127.0.0.1" not in warnings[0]
