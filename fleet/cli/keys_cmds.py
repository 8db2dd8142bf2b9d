"""`fleet keys create|list`: ad-hoc enrollment keys in the applied config, and the list of applied keys.

`fleet apply` manages the keys declared in fleet.yaml (and deletes applied keys that fleet.yaml does not declare,
so a key made here lasts until the next apply).

Writes `key.<id>` records (fleet.bus.records) into KV bucket fleet-v1-config; only the SHA-256 of the secret is
stored, the secret itself is printed once. `list` shows the keys with their use counters (fleet-v1-enroll).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from datetime import timedelta
from typing import Any

import click

from fleet.bus import subjects
from fleet.bus.connection import connect
from fleet.bus.kv import open_store
from fleet.bus.records import (
    RecordError,
    decode_record,
    encode_record,
    format_time,
    now_utc,
    parse_time,
    record_key,
    secret_hash,
)
from fleet.cli.options import NatsSettings, json_option, nats_options
from fleet.errors import UsageError

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_expires(text: str) -> str:
    """RFC 3339 (`2030-01-01T00:00:00Z`) or a duration from now (`90s`, `30m`, `24h`, `7d`)."""
    match = _DURATION.match(text.strip())
    if match:
        return format_time(now_utc() + timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)]))
    try:
        return format_time(parse_time(text))
    except RecordError as exc:
        raise UsageError(f"--expires: {exc.message} (or a duration like 24h)") from exc


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


@click.group("keys")
def keys_group() -> None:
    """Enrollment keys: list the applied ones, or create an ad-hoc one.

    Keys declared in fleet.yaml are managed by `fleet apply`, which also deletes applied keys that fleet.yaml does
    not declare: a key created here lasts until the next apply.
    """


@keys_group.command("create")
@click.argument("key_id")
@click.option("--tenant", required=True, help="Tenant of every host that enrolls with this key.")
@click.option("--pool", "pools", multiple=True, required=True, help="Pool the key grants (repeatable).")
@click.option("--labels", multiple=True, help="Labels pre-set on its hosts (comma-separated).")
@click.option("--models", multiple=True, help="Models its hosts may serve (comma-separated; default: any).")
@click.option("--max-uses", type=click.IntRange(min=1), default=None, help="How many hosts may enroll.")
@click.option("--expires", default=None, help="RFC 3339 time or a duration from now (24h, 7d).")
@click.option("--secret", envvar="FLEET_KEY_SECRET", default=None,
              help="The secret (default: a new random one, printed once).")
@nats_options
@json_option
def create_cmd(key_id: str, tenant: str, pools: tuple[str, ...], labels: tuple[str, ...], models: tuple[str, ...],
               max_uses: int | None, expires: str | None, secret: str | None, nats: NatsSettings,
               as_json: bool) -> None:
    """Create (or replace) enrollment key KEY_ID; prints the secret once."""
    try:
        record_key("key", key_id)
    except RecordError as exc:
        raise UsageError(exc.message) from exc
    generated = secret is None
    secret = secret or f"fk_{secrets.token_urlsafe(24)}"
    spec: dict[str, Any] = {
        "tenant": tenant,
        "pools": _split(pools),
        "models": _split(models) or None,
        "labels": _split(labels),
        "max_uses": max_uses,
        "expires": parse_expires(expires) if expires else None,
        "secret_sha256": secret_hash(secret),
    }

    async def write() -> None:
        async with await connect(nats.url, creds=nats.creds, connect_timeout=nats.connect_timeout) as bus:
            store = await open_store(bus, subjects.BUCKET_CONFIG)
            await store.put(record_key("key", key_id), encode_record("key", key_id, spec))

    asyncio.run(write())
    if as_json:
        click.echo(json.dumps({"id": key_id, "secret": secret, **{k: v for k, v in spec.items()
                                                                  if k != "secret_sha256"}}, indent=2))
        return
    click.echo(f"created enrollment key {key_id} (tenant {tenant}, pools {', '.join(spec['pools'])})")
    click.echo(f"secret{' (shown once)' if generated else ''}: {secret}")
    click.echo(f"enroll a host: fleet agent run --enroll-key {secret} --pool {spec['pools'][0]}")


@keys_group.command("list")
@nats_options
@json_option
def list_cmd(nats: NatsSettings, as_json: bool) -> None:
    """List the applied enrollment keys with their use counts (never the secrets)."""

    async def read() -> list[dict[str, Any]]:
        async with await connect(nats.url, creds=nats.creds, connect_timeout=nats.connect_timeout) as bus:
            config = await open_store(bus, subjects.BUCKET_CONFIG)
            uses = await open_store(bus, subjects.BUCKET_ENROLL)
            out = []
            for entry in await config.entries("key."):
                rec = decode_record(entry.value)
                counter = await uses.get(f"uses.{rec.id}")
                spec = {k: v for k, v in rec.spec.items() if k != "secret_sha256"}
                out.append({"id": rec.id, **spec, "uses": int(counter.value) if counter else 0})
            return out

    keys = asyncio.run(read())
    if as_json:
        click.echo(json.dumps(keys, indent=2))
        return
    rows = [("ID", "TENANT", "POOLS", "USES", "EXPIRES")]
    for k in keys:
        limit = k.get("max_uses")
        rows.append((k["id"], k["tenant"], ", ".join(k.get("pools") or []),
                     f"{k['uses']}/{limit if limit else '∞'}", k.get("expires") or "never"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        click.echo("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())


def register(group: click.Group) -> None:
    group.add_command(keys_group)
