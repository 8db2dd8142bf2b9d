"""fleet.bus: the only package that imports nats: connection, subjects, messages, KV, embedded nats-server.

See docs/protocol.md for the subjects, buckets and messages, and docs/architecture.md for the layers.
"""
