"""fleet.service: the `fleet server` control-plane process and the CLI's client of its API.

fleet.service.server: enrollment authority, host registry, liveness monitor, host command API.
fleet.service.enrollment: the pure enrollment rules. fleet.service.client: the API client.
"""
