"""The words of the contract, defined once: every enum (status set, pool mode, routing mode, isolation), every name
pattern and every name length limit of fleet.schema.json, as Python constants. Pure, and imports nothing (not even
pydantic), so that every layer can use it: the schema's models, the bus's wire messages, the host model, the
scheduler, the routing rules and the CLI's option types (`fleet list` loads this module and nothing else of
fleet.schema).

Where the schema states a set or a pattern, the value here is the schema's, and tests/unit/test_vocabulary.py fails
when the two disagree: change fleet.schema.json, then this module. Each enum is one `Literal` type (for pydantic
fields and type checkers) and the tuple of its values (`get_args`), never two lists. Sets the schema does not state
(a host's status as the server derives it: offline and revoked) are defined here beside the part it does state.
"""

from __future__ import annotations

from typing import Literal, get_args

# ------------------------------------------------------------------------------------------- enums

#: a pool's mode ($defs.pool.properties.mode)
PoolMode = Literal["persistent", "on_demand", "hybrid"]
POOL_MODES: tuple[str, ...] = get_args(PoolMode)
#: pool modes whose backend creates hosts when sessions wait (the rest of POOL_MODES only runs hosts.min)
ELASTIC_MODES: tuple[str, ...] = ("on_demand", "hybrid")

#: a project's routing mode ($defs.routing.properties.mode)
RoutingMode = Literal["preferred-with-fallback", "preferred-only", "adaptive"]
ROUTING_MODES: tuple[str, ...] = get_args(RoutingMode)

#: how a pool's hosts run sessions ($defs.pool.properties.isolation)
IsolationMode = Literal["sandbox", "none"]
ISOLATION_MODES: tuple[str, ...] = get_args(IsolationMode)

#: the status an operator declares (fleet.yaml `hosts:`, $defs.host.properties.status) and an agent reports
AdminStatus = Literal["active", "paused", "draining"]
ADMIN_STATUSES: tuple[str, ...] = get_args(AdminStatus)
#: a host's status as every reader sees it (fleet.hosts.model.status_of): an admin status while it is live, else
#: offline (no recent heartbeat) or revoked (its record says so)
HostStatus = Literal["active", "paused", "draining", "offline", "revoked"]
HOST_STATUSES: tuple[str, ...] = get_args(HostStatus)
#: the statuses of a live host (heartbeating, not revoked): exactly the admin statuses
LIVE_STATUSES: tuple[str, ...] = ADMIN_STATUSES
#: the statuses of a host that is gone (its sessions are re-queued)
GONE_STATUSES: tuple[str, ...] = tuple(s for s in HOST_STATUSES if s not in LIVE_STATUSES)
ACTIVE: str = "active"  # the one status in which a host takes new sessions

# ------------------------------------------------------------------------------------------- names

# The schema's patterns end in `(?!\n)` (`$` alone also matches before a trailing newline, in Python's re, which
# jsonschema uses); the patterns here are stated without it, and SCHEMA_PATTERN_END is what the schema adds. A
# caller that matches one with `re.match` refuses a trailing newline itself (fleet.cli.options.Name refuses every
# control character) or appends SCHEMA_PATTERN_END.
SCHEMA_PATTERN_END = "(?!\\n)"

#: an ID of fleet.yaml (org, tenant, project, pool, key): a DNS label ($defs.id)
ID_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
ID_MAX = 63
#: a capability label: `name` or `name=value` ($defs.label)
LABEL_PATTERN = r"^[a-z0-9]([a-z0-9._/-]{0,62})(=[A-Za-z0-9._:/-]{1,128})?$"
LABEL_NAME_MAX = 63
LABEL_VALUE_MAX = 128
LABEL_MAX = LABEL_NAME_MAX + 1 + LABEL_VALUE_MAX  # 192: the longest label LABEL_PATTERN accepts
#: a model a host serves ($defs.model)
MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
MODEL_MAX = 128
#: a host's machine ID as the server assigns it ($defs.host.id: a UUIDv4, lower case)
MACHINE_ID_V4_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
#: what records, subjects and the wire accept as a machine ID: any lower-case UUID (they always have; every ID the
#: server assigns is also a MACHINE_ID_V4_PATTERN)
MACHINE_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

__all__ = [
    "ACTIVE", "ADMIN_STATUSES", "ELASTIC_MODES", "GONE_STATUSES", "HOST_STATUSES", "ID_MAX", "ID_PATTERN",
    "ISOLATION_MODES", "LABEL_MAX", "MACHINE_ID_PATTERN", "MACHINE_ID_V4_PATTERN", "LABEL_NAME_MAX", "LABEL_PATTERN", "LABEL_VALUE_MAX", "LIVE_STATUSES",
    "MODEL_MAX", "MODEL_PATTERN", "POOL_MODES", "ROUTING_MODES", "SCHEMA_PATTERN_END", "AdminStatus", "HostStatus",
    "IsolationMode", "PoolMode", "RoutingMode",
]
