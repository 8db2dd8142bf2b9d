"""fleet: a declarative control plane for fleets of AI-agent worker hosts.

The package root carries the version and, loaded on first use, the session client (`fleet.Client`,
`fleet.SyncClient`); every part lives in a subpackage (see docs/architecture.md).
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Client", "SyncClient", "__version__"]


def __getattr__(name: str) -> Any:
    """`fleet.Client` and `fleet.SyncClient` (fleet.sessions.client), imported on first use so that `import fleet`
    (and `fleet --help`) stays light."""
    if name in ("Client", "SyncClient"):
        from fleet.sessions import client

        return getattr(client, name)
    raise AttributeError(f"module 'fleet' has no attribute {name!r}")
