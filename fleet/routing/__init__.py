"""fleet.routing: the pure routing rules shared by the dispatcher, `fleet route test` and plan consequences.

Hard filters (tenant, pool membership, status, revocation, labels, model), pool capacity in slots, and the
preferred/fallback/pending decision. Plain data in, plain data out; imports only fleet.schema.
"""

from fleet.routing.rules import (
    Capacity,
    Decision,
    HostView,
    PoolView,
    RouteView,
    decide,
    ineligibility,
    pool_capacity,
)

__all__ = ["Capacity", "Decision", "HostView", "PoolView", "RouteView", "decide", "ineligibility", "pool_capacity"]
