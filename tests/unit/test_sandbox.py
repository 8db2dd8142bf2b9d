"""The session sandbox's own rules (fleet.agents.sandbox): uid ranges, the machine-wide uid allocation, the view
and the argv it builds. The sandbox run for real (bubblewrap, attacks) is tests/integration/test_sandbox.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.agents.sandbox import Probe, Sandbox, UidPool, parse_uid_range
from fleet.bus.messages import Isolation
from fleet.errors import FleetError


@pytest.mark.parametrize("text, expected", [("300000-300999", (300000, 300999)), ("5000", (5000, 5000))])
def test_uid_ranges(text: str, expected: tuple[int, int]) -> None:
    assert parse_uid_range(text) == expected


@pytest.mark.parametrize("text", ["0-10", "999-2000", "2000-1000", "a-b", "", "1000-4294967296"])
def test_bad_uid_ranges_are_refused(text: str) -> None:
    with pytest.raises(FleetError):
        parse_uid_range(text)


def test_two_agents_on_one_machine_never_get_the_same_uid(tmp_path: Path) -> None:
    one, two = UidPool(400000, 400002, tmp_path), UidPool(400000, 400002, tmp_path)  # two agents, one lock dir
    leases = [one.take(), two.take(), one.take()]
    assert sorted(lease.uid for lease in leases) == [400000, 400001, 400002]
    with pytest.raises(FleetError, match="in use"):
        two.take()
    leases[1].release()
    assert one.take().uid == leases[1].uid  # free again once its session ended


def _sandbox(tmp_path: Path, mechanism: str, **kw: object) -> Sandbox:
    state = tmp_path / "agents" / "a1"
    state.mkdir(parents=True)
    return Sandbox.create(Probe(mechanism, bwrap="/usr/bin/bwrap", setpriv="/usr/bin/setpriv"), state,
                          uid_range=(400000, 400009), **kw)  # type: ignore[arg-type]


def test_a_root_agent_drops_each_slot_to_its_own_uid_after_building_the_view(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fleet.agents.sandbox.LOCK_DIR", tmp_path / "locks")
    box = _sandbox(tmp_path, "uid", expose=(str(tmp_path),))
    lease = box.take_uid()
    assert lease is not None and 400000 <= lease.uid <= 400009
    slot_dir = box.state_dir / "slots" / "0"
    argv = box.slot_argv(7, lease.uid, slot_dir)
    assert argv[0] == "/usr/bin/bwrap" and "--unshare-user" not in argv
    assert {"--unshare-pid", "--unshare-ipc", "--as-pid-1", "--die-with-parent", "--new-session"} <= set(argv)
    # the exposed tmp dir holds the agents' state: an empty tmpfs covers it, before the slot's dir is bound
    tmpfs = [argv[i + 1] for i, a in enumerate(argv) if a == "--tmpfs"]
    assert str(box.state_dir) in tmpfs and str(box.state_dir.parent) in tmpfs
    assert argv.index(str(box.state_dir)) < argv.index("--bind")
    binds = [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == "--bind"]
    assert binds == [(str(slot_dir), "/run/fleet")]  # the slot's dir, and nothing else of the state dir
    at = argv.index("/tmp")  # the sessions' /tmp: theirs to write, bounded
    assert tuple(argv[at - 5:at + 1]) == ("--perms", "1777", "--size", str(1 << 30), "--tmpfs", "/tmp")
    tail = argv[argv.index("--") + 1:]
    assert tail[:1] == ["/usr/bin/setpriv"] and f"--reuid={lease.uid}" in tail and "--no-new-privs" in tail
    assert "--bounding-set=-all" in tail and "--clear-groups" in tail
    assert tail[-2:] == ["/run/fleet-init.py", "7"]  # the slot's init, with its end of the agent's socketpair


def test_a_non_root_agent_uses_a_user_namespace_and_no_setpriv(tmp_path: Path) -> None:
    box = _sandbox(tmp_path, "userns")
    assert box.take_uid() is None
    argv = box.slot_argv(5, 1000, box.state_dir / "slots" / "0")
    assert "--unshare-user" in argv and "/usr/bin/setpriv" not in argv and "--cap-add" not in argv
    assert argv[argv.index("--") + 1:][-2:] == ["/run/fleet-init.py", "5"]


def test_the_view_never_exposes_the_root_directory(tmp_path: Path) -> None:
    box = _sandbox(tmp_path, "userns", expose=("/",))
    argv = box.slot_argv(5, 1000, box.state_dir / "slots" / "0")
    binds = [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a in ("--ro-bind", "--bind")]
    assert ("/", "/") not in binds


@pytest.mark.parametrize("reported, shown", [
    ({"mechanism": "uid", "namespaces": ["pid", "mount", "ipc"], "tool": "bubblewrap", "uid_range": [300000, 300999]},
     "uid 300000-300999 per slot, pid+mount+ipc namespaces (bubblewrap)"),
    ({"mechanism": "userns", "namespaces": ["user", "pid", "mount", "ipc"], "tool": "bubblewrap"},
     "the agent's uid in a user namespace, pid+mount+ipc+user namespaces (bubblewrap)"),
    ({"mechanism": "none", "reason": "bubblewrap is not installed"},
     "none: sessions run as the agent (bubblewrap is not installed)"),
])
def test_what_fleet_show_says_of_a_hosts_isolation(reported: dict, shown: str) -> None:
    assert Isolation.model_validate(reported).describe() == shown


@pytest.mark.parametrize("forged", [
    {"mechanism": "chroot"}, {"mechanism": "uid", "user": "x\x1b[2J"}, {"mechanism": "uid", "uid_range": [1, 2**40]},
    {"mechanism": "uid", "namespaces": ["pid"] * 5},
])
def test_a_forged_isolation_report_is_refused(forged: dict) -> None:
    with pytest.raises(ValueError):
        Isolation.model_validate(forged)
