"""fleet.routing: the routing vocabulary (the one route model, the host shape routing reads, route order, the model
rule, elastic modes) and the per-host explanation of `fleet route test --explain`. The placement decision itself is
fleet.scheduler's, which sits beside this package's callers and reads it. Plain data in, plain data out; imports
only fleet.schema (the one pool model and the vocabulary).
"""

from fleet.routing.rules import (
    ELASTIC_MODES,
    HostView,
    Pool,
    Route,
    ineligibility,
    route_pools,
    serves,
)

__all__ = ["ELASTIC_MODES", "HostView", "Pool", "Route", "ineligibility", "route_pools", "serves"]
