"""fleet.routing: the routing vocabulary (pool and route views, route order, elastic modes) and the per-host
explanation of `fleet route test --explain`. The placement decision itself is fleet.scheduler's, which sits beside
this package's callers and reads it. Plain data in, plain data out; imports nothing else of fleet.
"""

from fleet.routing.rules import ELASTIC_MODES, HostView, PoolView, RouteView, ineligibility, route_pools

__all__ = ["ELASTIC_MODES", "HostView", "PoolView", "RouteView", "ineligibility", "route_pools"]
