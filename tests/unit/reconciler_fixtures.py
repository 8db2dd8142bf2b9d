"""Hand-built desired and live states for the pure reconciler tests (diff, ordering, consequences, renderers)."""

from __future__ import annotations

from pathlib import Path

from fleet.reconciler.desired import desired_resources
from fleet.reconciler.live import AppliedResource, LiveState, ObservedHost, QueuedSession
from fleet.reconciler.plan import Basis
from fleet.schema.api import load_fleet, load_fleet_text

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "fleet.yaml.example"
HASH = "0" * 64


def example_config():
    result = load_fleet(EXAMPLE)
    assert result.ok, [d.format() for d in result.diagnostics]
    return result.config


def hashes(cfg) -> dict:
    return {k.id: HASH for k in cfg.keys}


def applied_from_example(revision_start: int = 1) -> dict[str, AppliedResource]:
    cfg = example_config()
    out = {}
    for i, (address, res) in enumerate(sorted(desired_resources(cfg, hashes(cfg)).items())):
        out[address] = AppliedResource(kind=res.kind, id=res.id, spec=res.spec, revision=revision_start + i)
    return out


def edited_config(*edits: tuple[str, str]):
    text = EXAMPLE.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    result = load_fleet_text(text, "fleet.yaml")
    assert result.ok, [d.format() for d in result.diagnostics]
    return result.config


HOSTS = (
    ObservedHost(machine_id="b2c4a1e0-12ab-4cde-89ef-aabbccddeeff", hostname="build-01.corp", tenant="fin-prod",
                 key_id="local-dev", pools=("pool-local-main",), labels=("region=eu-west", "tier=dev"),
                 models=("claude-3-5-sonnet", "claude-3-5-haiku"), running=2, max_sessions=4),
    ObservedHost(machine_id="7f3e9c12-34cd-4567-89ab-112233445566", hostname="dev-mbp-mark", tenant="fin-prod",
                 key_id="local-dev", pools=("pool-local-main",), labels=("region=eu-west", "tier=dev"),
                 models=("claude-3-5-sonnet",), running=0, max_sessions=4),
    ObservedHost(machine_id="aa11bb22-cc33-dd44-ee55-ff6677889900", hostname="gpu-01", tenant="health-prod",
                 key_id="health-gpu", pools=("pool-docker-gpu",), labels=("gpu", "gpu=a100", "region=us-east"),
                 models=("claude-3-5-sonnet",), running=1, max_sessions=2),
    ObservedHost(machine_id="cc00dd11-2222-4333-8444-555566667777", hostname="stray-01", tenant="fin-prod",
                 key_id="local-dev", pools=("pool-unknown",), labels=(), running=0, max_sessions=2),
)

QUEUED = (
    QueuedSession(session_id="s-1", project="ledger-batch", tenant="fin-prod", required_labels=("region=eu-west",)),
)


def live(hosts=HOSTS, queued=QUEUED) -> LiveState:
    return LiveState(applied=applied_from_example(), revision=100, hosts=hosts, queued=queued)


BASIS = Basis(config_file="fleet.yaml", config_hash="sha256:" + "ab" * 32, applied_revision=100,
              applied_resources={}, tool_version="0.1.0", created_at="2026-11-25T00:00:00+00:00")
