"""fleet.agents: the worker agent (enrollment, heartbeats, local control and credential sockets).

See fleet.agents.agent for the lifecycle and fleet.agents.state for the state-dir layout.
"""
