"""fleet.reconciler: desired (fleet.yaml) vs live state -> Plan, and applying it.

Pure core (no I/O, no asyncio): live, desired, diff, ordering, plan, basis, consequences, drift, rendering/.
Edge: gather (reads the applied store), apply (compare-and-set writes). Called by `fleet plan` / `fleet apply`.
"""
