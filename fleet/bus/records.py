"""The applied-config record codec of KV bucket fleet-v1-config (key `<kind>.<id>`).

A record is `{"v": 1, "kind": "key", "id": "local-dev", "spec": {...}}`. Written by `fleet apply`; read by the
enrollment authority (fleet.hosts) and by the reconciler. A pool record's spec is read back into the one pool model,
fleet.schema.models.Pool (`Pool.from_spec`); a route's into fleet.routing.Route. Of an enrollment key's secret only its keyed digest
(`key_digest`) is ever stored.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fleet.bus.messages import UnsupportedVersion
from fleet.errors import FleetError

RECORD_VERSION = 1
_ID = re.compile(r"^[A-Za-z0-9_-]+$")


class RecordError(FleetError):
    """A config record is malformed."""


class ConfigRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")
    v: int = RECORD_VERSION
    kind: str
    id: str
    spec: dict[str, Any]


class KeySpec(BaseModel):
    """The spec of an enrollment key record."""

    model_config = ConfigDict(extra="ignore")
    tenant: str
    pools: list[str] = Field(default_factory=list)
    models: list[str] | None = None
    labels: list[str] = Field(default_factory=list)
    max_uses: int | None = None
    expires: str | None = None  # RFC 3339
    secret_digest: str

    def expires_at(self) -> datetime | None:
        return parse_time(self.expires) if self.expires else None


def record_key(kind: str, ident: str) -> str:
    """The KV key of a record: `<kind>.<id>`."""
    if not _ID.match(kind) or not _ID.match(ident):
        raise RecordError(f"invalid record address {kind}.{ident} (letters, digits, '-' and '_' only)")
    return f"{kind}.{ident}"


def encode_record(kind: str, ident: str, spec: dict[str, Any]) -> bytes:
    record_key(kind, ident)
    return json.dumps({"v": RECORD_VERSION, "kind": kind, "id": ident, "spec": spec}, sort_keys=True).encode()


def decode_record(data: bytes) -> ConfigRecord:
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise RecordError(f"config record is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise RecordError("config record is not a JSON object")
    if obj.get("v") != RECORD_VERSION:
        raise UnsupportedVersion(f"unsupported config record version {obj.get('v')!r} (expected {RECORD_VERSION})")
    return ConfigRecord.model_validate(obj)


def key_digest(pepper: bytes, secret: str) -> str:
    """What is stored of an enrollment key's secret: an HMAC-SHA256 keyed with the fleet's pepper (bucket
    fleet-v1-secrets, readable only by the server and admins), so that a dump of the config bucket alone does not
    allow guessing secrets offline."""
    return "hmac-sha256:" + hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()


def now_utc() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """An RFC 3339 timestamp (a trailing Z allowed); naive times are taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise RecordError(f"invalid RFC 3339 time {text!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
