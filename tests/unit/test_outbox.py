"""The agent's outbox (fleet.agents.outbox) on real files: kept until dropped, read back oldest first, and a bad
file (corrupt, oversize, misnamed, another session's) is removed at load, never a reason not to start."""

from __future__ import annotations

from pathlib import Path

from fleet.agents.outbox import MAX_KEPT, Outbox
from fleet.bus.messages import MAX_MESSAGE_BYTES, WorkEvent


def sid(name: str) -> str:
    return name.encode().hex()[:20].rjust(20, "0")


def ev(name: str, at: float, phase: str = "succeeded") -> WorkEvent:
    return WorkEvent(session=sid(name), fence=7, phase=phase, exit_code=0, at=at, output_tail="out")  # type: ignore[arg-type]


def test_reports_are_kept_until_dropped_and_come_back_oldest_first(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    assert box.load() == []  # no outbox yet
    assert box.put(ev("b", 2.0)) and box.put(ev("a", 1.0)) and box.put(ev("c", 3.0))
    assert (tmp_path / "outbox" / f"{sid('a')}.json").stat().st_mode & 0o777 == 0o600
    box.drop(sid("c"))
    again = Outbox(tmp_path).load()  # the next run of the agent
    assert [(e.session, e.fence, e.phase, e.output_tail) for e in again] == [(sid("a"), 7, "succeeded", "out"),
                                                                              (sid("b"), 7, "succeeded", "out")]


def test_bad_files_are_removed_at_load(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.put(ev("good", 1.0))
    d = tmp_path / "outbox"
    (d / "corrupt.json").write_text("{nope")
    (d / f"{sid('other')}.json").write_text(ev("someone-else", 2.0).model_dump_json())  # another session's
    (d / "big.json").write_bytes(b" " * (MAX_MESSAGE_BYTES + 1))
    (d / "x y.json").write_text(ev("x y", 3.0).model_dump_json())  # not a session ID
    assert [e.session for e in Outbox(tmp_path).load()] == [sid("good")]
    assert sorted(p.name for p in d.iterdir()) == [f"{sid('good')}.json"]


def test_a_name_that_is_not_a_session_id_and_a_full_outbox_are_not_kept(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    assert not box.put(WorkEvent.model_construct(session="../../escape", fence=1, phase="failed", at=1.0))
    assert not (tmp_path / "escape.json").exists()
    for n in range(MAX_KEPT):
        assert box.put(ev(f"s{n}", float(n)))
    assert not box.put(ev("one-more", 1.0))
    assert box.put(ev("s0", 1.0))  # one it keeps already is rewritten
