"""fleet.dispatch: the dispatcher that runs in `fleet server` (the replica that holds the dispatch lease).

placement (pure: the hosts by pool, the routing decision, why a session waits), queue (pure: the pending queue),
dispatcher (sessions, assignments with fencing tokens, leases, re-queueing), leader (the dispatch lease), api (the
session API and the hosts' work subjects). Above fleet.hosts (it reads the registry), beside the reconciler.
"""
