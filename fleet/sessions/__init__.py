"""fleet.sessions: the client of the session API (`fleet.Client`), a layer below the dispatcher that serves it.

The CLI (`fleet submit`, `fleet sessions …`), programs, and the reconciler (the queued sessions a plan would leave
unroutable) use it; fleet.dispatch serves the API it talks to.
"""
