"""`fleet keys list`: the applied enrollment keys with their use counts (never a secret, never a hash).

Keys are declared in fleet.yaml (`keys:`) and written only by `fleet apply`, under the apply lock, through the
plan and compare-and-set like every other resource; there is no command that writes a key behind the plan's back
(`fleet keys create` was removed for that reason and says where to go instead). Reads bucket fleet-v1-config
(`key.<id>` records) and the use counters in fleet-v1-enroll. Listed in fleet.cli.main.COMMANDS (loaded when called).
"""

from __future__ import annotations

import json
from typing import Any

import click

from fleet.bus import subjects
from fleet.bus.connection import connect
from fleet.bus.kv import open_store
from fleet.bus.records import decode_record
from fleet.cli.options import NatsSettings, format_option, nats_options
from fleet.cli.shared import run_async
from fleet.errors import UsageError


@click.group("keys")
def keys_group() -> None:
    """Enrollment keys: declared in fleet.yaml (`keys:`), applied by `fleet apply`; list the applied ones here."""


@keys_group.command("list")
@nats_options
@format_option("table", "json", default="table")
def list_cmd(nats: NatsSettings, fmt: str) -> None:
    """List the applied enrollment keys with their use counts (never the secrets), sorted by ID."""

    async def read() -> list[dict[str, Any]]:
        async with await connect(**nats.kwargs(), name="fleet-cli") as bus:
            config = await open_store(bus, subjects.BUCKET_CONFIG)
            counters = await open_store(bus, subjects.BUCKET_ENROLL)
            uses = {e.key.removeprefix("uses."): e.value for e in await counters.snapshot("uses.")}
            out = []
            for entry in await config.snapshot("key."):
                rec = decode_record(entry.value)
                spec = {k: v for k, v in rec.spec.items() if k not in ("secret_digest",)}
                try:
                    used = int(uses.get(rec.id, b"0"))
                except ValueError:
                    used = 0
                out.append({"id": rec.id, **spec, "uses": used})
            return sorted(out, key=lambda k: k["id"])

    keys = run_async(read)
    if fmt == "json":
        click.echo(json.dumps(keys, indent=2))
        return
    rows = [("ID", "TENANT", "POOLS", "USES", "EXPIRES")]
    for k in keys:
        limit = k.get("max_uses")
        rows.append((k["id"], k.get("tenant") or "-", ", ".join(k.get("pools") or []),
                     f"{k['uses']}/{limit if limit else '∞'}", k.get("expires") or "never"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        click.echo("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())


@keys_group.command("create", hidden=True, context_settings={"ignore_unknown_options": True,
                                                              "allow_extra_args": True})
def create_cmd() -> None:
    """Removed: declare keys in fleet.yaml."""
    raise UsageError("`fleet keys create` was removed: keys are declared in fleet.yaml and written by `fleet apply`",
                     hint="add the key under `keys:` (secret: {from_env: VAR} or generated) and run `fleet plan` "
                          "then `fleet apply`; see fleet.yaml.example")
