"""Revocation made physical: a revoked host's NATS identity is refused by the NATS server itself.

Every revoked identity is a key `revoked.<user public key>` in bucket fleet-v1-trust (`{"machine_id", "at"}`). A
revocation is for good: the key's presence is what counts (a malformed value revokes as well as a good one), and
every JWT of a revoked key is void, whenever it was issued (the account JWT maps the key to FOREVER, not to the
time of the revocation: a clock-independent rule, so neither a JWT issued later for the same key, e.g. a stolen
seed enrolled again, nor a replica whose clock runs ahead can outlive it; enrollment also refuses revoked keys).
`Revocations.push()` is level-based: it reads all of them, signs the FLEET account JWT anew with the operator key
(fleet.bus.trustdir.TrustDir.account_jwt),
sends it to nats-server on `$SYS.REQ.CLAIMS.UPDATE` over the server's SYS connection, and then checks the effect
instead of trusting the reply (an account JWT the server could not validate was once answered `200 jwt updated`,
../shared/notes/nats-trust.md): it looks the account up (`$SYS.REQ.ACCOUNT.<account>.CLAIMS.LOOKUP`), verifies the
operator's signature and that every revocation is there. nats-server closes the revoked connections at once and
refuses them from then on, across restarts (its full resolver keeps the JWT). `revoke()` records one more and
pushes; the server pushes at start, after every reconnect, and every PUSH_EVERY_S (a runnable of its manager,
which retries a failed push with backoff), so any replica repairs a server
that lost the JWT. Every pushed account JWT is issued at least a second after the account.jwt that nats.conf
preloads: nats-server keeps the stored JWT over the preloaded one at a restart only when it is strictly newer.
Used by fleet.service.api (`fleet hosts revoke`, `fleet hosts rm`) and the enrollment authority (`is_revoked`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from fleet.bus.connection import Bus
from fleet.bus.kv import Entry, Store
from fleet.bus.trust import TrustError, decode, verify
from fleet.bus.trustdir import TrustDir
from fleet.errors import TransientError

log = logging.getLogger(__name__)

PUSH_EVERY_S = 60.0
#: what the account JWT maps a revoked key to: "every JWT issued before this" = every JWT, for good
FOREVER = 2**62


def _well_formed(value: bytes) -> bool:
    try:
        data = json.loads(value)
        return isinstance(data, dict) and isinstance(data.get("machine_id"), str) and isinstance(data.get("at"), int)
    except (ValueError, RecursionError):
        return False


class Revocations:
    def __init__(self, trust: TrustDir, store: Store, sys_bus: Bus) -> None:
        self.trust = trust
        self.store = store
        self.sys_bus = sys_bus
        self._lock = asyncio.Lock()
        self.pushed: dict[str, int] = {}
        self._iat = 0
        with contextlib.suppress(OSError, TrustError, ValueError, TypeError):
            self._iat = int(decode((trust.root / "account.jwt").read_text())["iat"])

    async def revoke(self, nkey: str, machine_id: str) -> None:
        """Void every JWT of `nkey`, and make nats-server close and refuse its connections. Writes the revocation
        unless a well-formed one is there already (a malformed one is replaced), then pushes: calling it again
        pushes again, so a push that failed can be retried."""
        record = json.dumps({"machine_id": machine_id, "at": int(time.time())}).encode()

        def change(current: Entry | None) -> bytes | None:
            return None if current is not None and _well_formed(current.value) else record

        await self.store.modify(f"revoked.{nkey}", change)
        await self.push()

    async def is_revoked(self, nkey: str) -> bool:
        return await self.store.get(f"revoked.{nkey}") is not None

    async def wanted(self) -> dict[str, int]:
        out = {}
        for entry in await self.store.snapshot("revoked."):
            if not _well_formed(entry.value):
                log.warning("security: malformed revocation %s: the key counts as revoked", entry.key[:80])
            out[entry.key.removeprefix("revoked.")] = FOREVER
        return out

    async def push(self) -> None:
        async with self._lock:
            revocations = await self.wanted()
            # never older than the preloaded account.jwt nor than our last push (see the module doc)
            self._iat = max(int(time.time()), self._iat + (0 if self.pushed else 1))
            jwt = self.trust.account_jwt(revocations, iat=self._iat)
            reply = await self.sys_bus.request("$SYS.REQ.CLAIMS.UPDATE", jwt.encode(), timeout=5.0,
                                               what="nats-server (claims update)")
            try:
                answer = json.loads(reply)
            except ValueError:
                answer = {}
            if "error" in answer:
                raise TransientError(f"nats-server refused the account update: {answer['error']}")
            await self._verify(revocations)
            self.pushed = revocations
            log.info("account %s pushed with %d revocation(s)", self.trust.account.public[:8], len(revocations))

    async def _verify(self, revocations: dict[str, int]) -> None:
        """What nats-server now holds for the account carries every revocation and the operator's signature."""
        subject = f"$SYS.REQ.ACCOUNT.{self.trust.account.public}.CLAIMS.LOOKUP"
        held = (await self.sys_bus.request(subject, b"", timeout=5.0, what="nats-server (claims lookup)")).decode()
        try:
            claims = verify(held, frozenset({self.trust.operator.public}))
        except TrustError as exc:
            raise TransientError(f"nats-server holds an account JWT that does not verify: {exc.message}") from None
        have = (claims.get("nats") or {}).get("revocations") or {}
        missing = [k for k, at in revocations.items() if have.get(k, -1) < at]
        if missing:
            raise TransientError(f"nats-server did not take {len(missing)} revocation(s) (e.g. {missing[0][:12]}…)")

