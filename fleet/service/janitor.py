"""Clearing away JetStream consumers that readers of a bucket created and left behind.

Admins and viewers read KV buckets (the applied config, the counters, the apply lock, the pepper) through consumers
they create; NATS permissions cannot say which kind, so a read-only identity could leave consumers behind without
limit (a durable one survives its creator, an ephemeral one with a long inactivity threshold nearly so): memory and
storage on nats-server. Their identities may create only unnamed (ephemeral) consumers (fleet.bus.identities),
and `ConsumerJanitor` deletes, on the buckets others may read, every consumer nobody listens to on two sweeps in a
row (CONSUMER_SWEEP_S apart): durable and pull consumers (fleet makes none) and push consumers without a subscriber
on their deliver subject. fleet's own readers (ordered push consumers) are bound while they read. Run by the
`fleet server` replica that holds the dispatch lease (a leader-only runnable of fleet.service.manager); a cap on consumers per stream would
instead let the same identity block fleet's own readers.
"""

from __future__ import annotations

import logging

from fleet.bus import subjects
from fleet.bus.connection import Bus
from fleet.bus.kv import delete_consumer, unbound_consumers
from fleet.service.manager import every

log = logging.getLogger(__name__)

CONSUMER_SWEEP_S = 30.0
#: the buckets identities other than the server may create consumers on (fleet.bus.identities)
READ_BY_OTHERS = (subjects.BUCKET_CONFIG, subjects.BUCKET_ENROLL, subjects.BUCKET_LOCKS, subjects.BUCKET_SECRETS)


class ConsumerJanitor:
    def __init__(self, bus: Bus, buckets: tuple[str, ...] = READ_BY_OTHERS) -> None:
        self.bus = bus
        self.buckets = buckets
        self.suspects: dict[str, set[str]] = {}
        self.removed = 0

    async def sweep_once(self) -> int:
        """Delete the consumers found unbound now and at the previous sweep; returns how many."""
        removed = 0
        for bucket in self.buckets:
            unbound = set(await unbound_consumers(self.bus, bucket))
            for name in sorted(unbound & self.suspects.get(bucket, set())):
                if await delete_consumer(self.bus, bucket, name):
                    removed += 1
                    log.warning("security: removed consumer %s of bucket %s: nobody listened to it", name[:64], bucket)
            self.suspects[bucket] = unbound
        self.removed += removed
        return removed

    async def run(self, interval: float = CONSUMER_SWEEP_S) -> None:
        """The leader's sweeps, every `interval` seconds, from a clean slate (what was suspected while another
        replica led is forgotten). A failed sweep raises: the server's manager restarts this with backoff."""
        self.suspects.clear()
        await every(interval, self.sweep_once)()
