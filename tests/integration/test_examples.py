"""The runnable examples, run as a user runs them: `python examples/multi_tenant.py` as a subprocess, with nothing
running beforehand (it starts and stops its own fleet), checked by its exit code and what it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

ROOT = Path(__file__).resolve().parents[2]


def test_multi_tenant_example_runs_every_session_in_its_tenant_and_shows_the_three_refusals() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_") or k == "FLEET_NATS_SERVER"}
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "multi_tenant.py")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    out = run.stdout
    assert run.returncode == 0, out[-3000:] + run.stderr[-2000:]
    assert "✗" not in out and "Traceback" not in out + run.stderr

    # ten sessions, each on a worker of its own tenant (by the dispatcher's record, the worker's enrollment record
    # and the command's own output)
    rows = re.findall(r"^  (\w{20})  (fin-app|health-app) +(\S+) +(\S+) +(\S+) +(\S+) +(\S+)$", out, re.M)
    assert len(rows) == 10, out
    for _sid, project, tenant, phase, worker, worker_tenant, ran_on in rows:
        assert phase == "succeeded" and tenant == worker_tenant == {"fin-app": "fin-prod",
                                                                   "health-app": "health-prod"}[project]
        assert worker == ran_on and worker.startswith(tenant.split("-")[0] + "-w")
    assert "✓ all 10 sessions (5 of fin-prod, 5 of health-prod) succeeded on a worker of their own tenant" in out

    # 1. the claim, refused by the dispatcher (and logged), the publish on the other worker's subject by NATS
    assert re.search(r'dispatcher: +REFUSED ok=false stale=true "this session is not yours', out), out
    assert re.search(r"server\.log: +security: host \S+ reported succeeded on session \w{20}, which is assigned to "
                     r"host \S+ \(and never was to it\): refused", out), out
    assert re.search(r'NATS server: REFUSED permissions violation for publish to "fleet\.v1\.work\.', out), out
    assert "✓ the session is untouched: still running on health-w" in out
    # 2. the subscriptions
    assert len(re.findall(r'NATS server: REFUSED permissions violation for subscription to "fleet\.v1\.host\.'
                          r'[0-9a-f-]{36}\.assign"', out)) == 2, out
    assert 'REFUSED permissions violation for subscription to "fleet.v1.api.sessions.health-prod.>"' in out
    assert "messages fin-w1 received: 0" in out
    # 3. the submitter
    assert 'dispatcher: REFUSED "project health-app does not belong to tenant fin-prod" (Refused)' in out
    assert ("security: a submitter of tenant fin-prod asked for project health-app of tenant health-prod: refused"
            in out)
    assert 'REFUSED permissions violation for publish to "fleet.v1.api.sessions.health-prod.submit"' in out

    # and it stopped what it started, and said so
    assert re.search(r"All (\d+) checks held", out), out
    for what in ("agent fin-w1", "agent health-w2", "fleet server", "nats-server"):
        assert f"stopped {what} (pid" in out
    state_dir = re.search(r"state dir (/\S+)", out)
    assert state_dir is not None and not Path(state_dir.group(1)).exists()  # removed after a clean run
