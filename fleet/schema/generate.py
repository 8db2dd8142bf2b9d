"""Synthetic fleets of any size, as fleet.yaml text: for benchmarks (bench/plan.py) and large-plan tests.

`synthetic_fleet(pools=…, projects=…, keys=…)` writes a valid fleet.yaml with two tenants and the given
numbers of local pools, projects (preferred-with-fallback between neighbouring pools) and enrollment keys (each
key's secret generated at apply, or, with `key_env=PREFIX`, read from its own variable `PREFIX_<i:06d>`: two keys
may not share a secret). Pure; deterministic for the same arguments.
"""

from __future__ import annotations


def synthetic_fleet(*, pools: int, projects: int, keys: int, slots: int = 4, tenants: int = 2,
                    key_env: str | None = None) -> str:
    tenant_ids = [f"tenant-{t:03d}" for t in range(tenants)]
    out = ["version: 1", "org: {id: bench, name: Benchmark org}", "tenants:"]
    out += [f"  - {{id: {t}}}" for t in tenant_ids]
    out.append("pools:")
    for i in range(pools):
        out.append(f"  - id: pool-{i:06d}\n    tenant: {tenant_ids[i % tenants]}\n    backend: local\n    mode: persistent\n"
                   f"    hosts: {{min: 0, max: 1000}}\n    capacity: {{max_concurrent_sessions: {slots}}}\n"
                   f"    labels: [region=r{i % 3}]\n    models: [claude-3-5-sonnet]")
    out.append("projects:" if projects else "projects: []")
    for i in range(projects):
        a = (i * tenants) % max(pools, 1)
        b = (a + tenants) % max(pools, 1)
        tenant = tenant_ids[a % tenants]
        fallback = f"\n      fallback_pool: pool-{b:06d}" if pools > tenants and b != a else ""
        mode = "preferred-with-fallback" if fallback else "preferred-only"
        out.append(f"  - id: project-{i:06d}\n    tenant: {tenant}\n    routing:\n      mode: {mode}\n"
                   f"      preferred_pool: pool-{a:06d}{fallback}")
    out.append("keys:" if keys else "keys: []")
    for i in range(keys):
        a = i % max(pools, 1)
        secret = f"{{from_env: {key_env}_{i:06d}}}" if key_env else "{generate: true}"
        out.append(f"  - id: key-{i:06d}\n    tenant: {tenant_ids[a % tenants]}\n    pools: [pool-{a:06d}]\n"
                   f"    max_uses: 1000\n    secret: {secret}")
    return "\n".join(out) + "\n"
