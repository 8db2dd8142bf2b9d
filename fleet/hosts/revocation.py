"""Revocation made physical: a revoked host's NATS identity is refused by the NATS server itself.

Every revoked identity is a key `revoked.<user public key>` in bucket fleet-v1-trust (`{"machine_id", "at"}`).
`Revocations.push()` is level-based: it reads all of them, signs the FLEET account JWT anew with the operator key
(fleet.bus.trustdir.TrustDir.account_jwt: `revocations` maps each key to the time before which its JWTs are void),
sends it to nats-server on `$SYS.REQ.CLAIMS.UPDATE` over the server's SYS connection, and then checks the effect
instead of trusting the reply (an account JWT the server could not validate was once answered `200 jwt updated`,
../shared/notes/nats-trust.md): it looks the account up (`$SYS.REQ.ACCOUNT.<account>.CLAIMS.LOOKUP`), verifies the
operator's signature and that every revocation is there. nats-server closes the revoked connections at once and
refuses them from then on, across restarts (its full resolver keeps the JWT). `revoke()` records one more and
pushes; `run()` pushes at start, after every reconnect, and every PUSH_EVERY_S, so any replica repairs a server
that lost the JWT. Used by fleet.service.api (`fleet hosts revoke`, `fleet hosts rm --force`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from fleet.bus.connection import Bus
from fleet.bus.kv import Store
from fleet.bus.trust import TrustError, verify
from fleet.bus.trustdir import TrustDir
from fleet.errors import Conflict, FleetError, TransientError

log = logging.getLogger(__name__)

PUSH_EVERY_S = 60.0


class Revocations:
    def __init__(self, trust: TrustDir, store: Store, sys_bus: Bus) -> None:
        self.trust = trust
        self.store = store
        self.sys_bus = sys_bus
        self._lock = asyncio.Lock()
        self.pushed: dict[str, int] = {}

    async def revoke(self, nkey: str, machine_id: str) -> None:
        """Void every JWT of `nkey` issued until now, and make nats-server close and refuse its connections."""
        record = json.dumps({"machine_id": machine_id, "at": int(time.time())}).encode()
        with contextlib.suppress(Conflict):  # revoked already (by another replica, or a retry): push anyway
            await self.store.create(f"revoked.{nkey}", record)
        await self.push()

    async def wanted(self) -> dict[str, int]:
        out = {}
        for entry in await self.store.snapshot("revoked."):
            try:
                out[entry.key.removeprefix("revoked.")] = int(json.loads(entry.value)["at"])
            except (ValueError, KeyError, TypeError):
                log.warning("skipping malformed revocation %s", entry.key)
        return out

    async def push(self) -> None:
        async with self._lock:
            revocations = await self.wanted()
            jwt = self.trust.account_jwt(revocations)
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

    async def run(self) -> None:
        while True:
            try:
                await self.push()
                await asyncio.sleep(PUSH_EVERY_S)
            except FleetError as exc:
                log.warning("pushing revocations to nats-server failed (%s); retrying", exc.message)
                await asyncio.sleep(2.0)
