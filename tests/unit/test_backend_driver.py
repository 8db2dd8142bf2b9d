"""The backend seam (fleet.plugins.base, fleet.plugins.driver, fleet.plugins.registry) against a third-party plugin:
tests/plugins/fleet_memory_backend.py, installed through a `fleet.backends` entry point in a dist-info on PYTHONPATH
for `fleet backends list`, and driven directly for the driver's contract: ownership (an unowned look-alike survives),
idempotent create, destroy of what is gone, and each error by its type (retried, quota, wrapped, timed out)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.plugins.base import (
    MANAGED_BY,
    POOL,
    Instance,
    InstanceSpec,
    PermanentError,
    QuotaExhausted,
    TemporaryError,
)
from fleet.plugins.driver import BackendDriver
from fleet.retry import Backoff
from tests.plugins.fleet_memory_backend import MemoryBackend, MemorySettings

PLUGIN = Path(__file__).parent.parent / "plugins" / "fleet_memory_backend.py"


def spec(name: str, pool: str = "pool-a", org: str = "acme") -> InstanceSpec:
    return InstanceSpec(org=org, pool=pool, instance=name, config_hash="h1", settings=MemorySettings(),
                        enrollment="one-use-secret")


def driver(backend: MemoryBackend) -> BackendDriver:
    return BackendDriver(backend, wait=Backoff(0.001, 0.01))


def test_create_is_idempotent_and_observe_sees_only_what_it_owns() -> None:
    async def run() -> None:
        be = MemoryBackend()
        d = driver(be)
        be.objects["someone-else"] = Instance("someone-else", {MANAGED_BY: "fleet", POOL: "pool-a"})  # a look-alike
        be.objects["other-org"] = Instance("other-org", spec("x", org="other").labels())
        first = await d.create(spec("i-1"))
        again = await d.create(spec("i-1"))  # a second pass, or a retry after a lost answer
        assert again == first and be.calls.count("create") == 1
        seen = await d.observe("pool-a", "acme")
        assert [i.name for i in seen.owned] == ["i-1"]
        assert {i.id for i in seen.lookalikes} == {"someone-else", "other-org"}  # reported ...
        with pytest.raises(PermanentError, match="not owned"):
            await d.destroy(be.objects["someone-else"], "acme", "pool-a")  # ... never deleted
        with pytest.raises(PermanentError, match="not owned"):
            await d.destroy(be.objects["other-org"], "acme", "pool-a")
        await d.destroy(first, "acme", "pool-a")
        await d.destroy(first, "acme", "pool-a")  # already gone: done
        assert set(be.objects) == {"someone-else", "other-org"}
        assert be.handed[first.id] == "one-use-secret" and "one-use-secret" not in repr(spec("i-1"))
        await d.close()
        assert (be.set_up, be.torn_down) == (1, 1)

    asyncio.run(run())


def test_errors_mean_what_their_type_says() -> None:
    async def run() -> None:
        be = MemoryBackend(MemorySettings(capacity=1))
        d = driver(be)
        be.faults = ["temporary", "temporary"]  # observe fails twice, then works
        made = await d.create(spec("i-1"))
        assert be.calls[:3] == ["observe", "observe", "observe"] and made.name == "i-1"
        with pytest.raises(QuotaExhausted) as quota:
            await d.create(spec("i-2"))  # the account is full: not retried
        assert quota.value.quota == 1 and be.calls.count("create") == 2
        be.faults = ["sdk"]
        with pytest.raises(PermanentError, match="memory: observe pool pool-a failed: KeyError"):
            await d.observe("pool-a", "acme")
        be.faults = ["temporary"] * 10
        with pytest.raises(TemporaryError):
            await d.observe("pool-a", "acme")  # gives up after its attempts
        assert len(be.faults) == 10 - 4
        be.faults = ["hang"] * 4
        with pytest.raises(TemporaryError, match="took longer than 0.5s"):
            await d.observe("pool-a", "acme")

    asyncio.run(run())


def _install(site: Path, name: str, entry_points: str) -> None:
    """A dist-info as pip would write it: what importlib.metadata finds entry points in."""
    info = site / f"{name.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(entry_points)


def test_fleet_backends_list_shows_an_installed_plugin_and_why_a_broken_one_does_not_load(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(PLUGIN, site / "fleet_memory_backend.py")
    _install(site, "fleet-memory-backend", "[fleet.backends]\nmemory = fleet_memory_backend:MemoryBackend\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    run = lambda *a: subprocess.run([sys.executable, "-m", "fleet.cli.main", "backends", "list", *a],  # noqa: E731
                                    env=env, capture_output=True, text=True, timeout=60)
    ok = run("--json")
    assert ok.returncode == 0, ok.stderr
    rows = {r["name"]: r for r in json.loads(ok.stdout)}
    assert {"local", "docker", "kubernetes", "e2b", "memory"} <= set(rows)
    assert rows["memory"] == {"name": "memory", "status": "ok", "package": "fleet-memory-backend", "version": "1.2.3",
                              "target": "fleet_memory_backend:MemoryBackend",
                              "description": "instances in memory (a test plugin)", "error": None}
    _install(site, "fleet-broken", "[fleet.backends]\nbroken = fleet_memory_backend:NotABackend\n"
                                   "missing = no_such_module:Backend\n")
    bad = run()
    assert bad.returncode == 1  # a deployment check catches it ...
    lines = {line.split()[0]: line for line in bad.stdout.splitlines()[1:]}
    assert "failed" in lines["broken"] and "is not a fleet Backend subclass" in lines["broken"]
    assert "ModuleNotFoundError" in lines["missing"]
    assert lines["memory"].split()[1] == "ok" and "Traceback" not in bad.stderr  # ... and nothing crashed
    schema = subprocess.run([sys.executable, "-m", "fleet.cli.main", "schema"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert schema.returncode == 0 and "failed to load" in schema.stderr  # other commands only warn
