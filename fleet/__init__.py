"""fleet: a declarative control plane for fleets of AI-agent worker hosts.

The package root only carries the version; every part lives in a subpackage (see docs/architecture.md).
"""

__version__ = "0.1.0"
