"""fleet.schema: the contract of fleet.yaml and everything needed to read it.

fleet.schema.json (the JSON Schema), loading (ruamel.yaml round-trip with positions), validation (jsonschema ->
diagnostics with file:line:col), models (pydantic), references (networkx graph checks). Imports nothing else of
fleet except fleet.errors. Called by the CLI and by the reconciler.
"""
