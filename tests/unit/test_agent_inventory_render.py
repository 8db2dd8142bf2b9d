"""Rendering of `fleet list` / `fleet show` (fleet.cli.inventory_cmds): the seed's example output, exactly."""

from __future__ import annotations

import pytest

from fleet.cli.inventory_cmds import ago, render_show, render_table

SEED = """\
ID                                    HOSTNAME          STATUS    POOLS                        SESSIONS   LAST SEEN
b2c4a1e0-12ab-4cde-89ef-aabbccddeeff  build-01.corp     active    pool-local-main              2/4        2s ago
7f3e9c12-34cd-4567-89ab-112233445566  dev-mbp-mark      active    pool-local-main, pool-gpu    0/2        5s ago
aa11bb22-cc33-dd44-ee55-ff6677889900  ci-runner-001     paused    pool-ci                      0/8        12s ago"""


def test_table_matches_the_seed() -> None:
    rows = [
        ("b2c4a1e0-12ab-4cde-89ef-aabbccddeeff", "build-01.corp", "active", "pool-local-main", "2/4", "2s ago"),
        ("7f3e9c12-34cd-4567-89ab-112233445566", "dev-mbp-mark", "active", "pool-local-main, pool-gpu", "0/2",
         "5s ago"),
        ("aa11bb22-cc33-dd44-ee55-ff6677889900", "ci-runner-001", "paused", "pool-ci", "0/8", "12s ago"),
    ]
    assert render_table(rows) == SEED


@pytest.mark.parametrize("seconds, text", [(None, "never"), (0.4, "0s ago"), (2.9, "2s ago"), (61, "1m ago"),
                                           (7200, "2h ago"), (200000, "2d ago")])
def test_ago(seconds, text) -> None:
    assert ago(seconds) == text


def test_show_has_the_seed_fields() -> None:
    text = render_show({
        "id": "b2c4", "hostname": "build-01.corp", "status": "active", "tenant": "fin-prod",
        "platform_version": "0.1.0", "uptime_s": 3725, "started_at": "2026-01-01T00:00:00Z",
        "last_seen_s_ago": 2, "capacity": {"max_concurrent_sessions": 4, "pool_max_disk_gb": 50},
        "sessions": {"running": 1, "max": 4}, "active_sessions": [{"id": "s-1", "phase": "running"}],
        "pools": ["pool-local-main"], "pool_modes": {"pool-local-main": "persistent"},
        "credential_socket": "/run/fleet/cred.sock", "labels": [], "models": [],
    })
    for expected in ("Platform version:  fleet 0.1.0", "1h 2m 5s (last restart 2026-01-01T00:00:00Z)",
                     "max_concurrent_sessions=4  pool_max_disk_gb=50", "s-1", "running", "pool-local-main",
                     "persistent", "Credential socket: /run/fleet/cred.sock"):
        assert expected in text
