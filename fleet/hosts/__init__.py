"""fleet.hosts: the host registry every `fleet server` replica agrees on, and what feeds it.

model (the one Host model and status rule; pure), config (the applied config, kept current by an informer),
registry (records from one continuous KV watch + liveness from heartbeats), liveness (offline monitor and the
writer of transitions), enrollment (rules, the enrollment authority, re-registration), declared (the controller
that tells hosts the status fleet.yaml declares), paging (paged host snapshots). A layer below the service, the
reconciler and the dispatcher, so that all of them read the same registry; above the bus and the routing rules.
"""
