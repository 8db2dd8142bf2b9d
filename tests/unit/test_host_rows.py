"""Host rows (fleet.hosts.model): the fast reader of a page's rows accepts exactly what from_row accepts.

`row_reader(HOST_COLUMNS)` takes an unrolled path for speed (100k hosts per plan); these tests hold it to the
same outcome as `from_row` on valid rows, on hostile rows (every column given a wrong type, unknown statuses,
wrong lengths, rows that are not lists) and on columns of another server version.
"""

from __future__ import annotations

from typing import Any

import pytest

from fleet.hosts.model import HOST_COLUMNS, Host, Session, from_row, row_reader

MID = "00000000-0000-4000-8000-000000000001"


def host(**kw: Any) -> Host:
    base: dict[str, Any] = {
        "machine_id": MID, "tenant": "fin-prod", "hostname": "h1", "key_id": "k", "pools": ("a", "b"),
        "labels": ("gpu", "region=eu"), "models": ("m",), "status": "active", "running": 1, "max_sessions": 4,
        "sessions": (Session("s1", "running"),), "pool_modes": ("persistent", "on_demand"), "max_disk_gb": 50.5,
        "last_seen": 1_700_000_000.25, "started_at": 1_700_000_000, "version": "0.2.0",
        "enrolled_at": "2026-01-01T00:00:00Z", "revoked_at": None, "credential_socket": "/run/c.sock",
        "declared": "paused",
    }
    return Host(**{**base, **kw})


def wire(h: Host) -> list[Any]:
    """The row as it arrives: JSON arrays are lists."""
    return [list(v) if isinstance(v, tuple) else v for v in h.to_row()]


def outcome(read: Any, row: Any) -> Any:
    try:
        return read(row)
    except (ValueError, TypeError, IndexError) as exc:
        return type(exc)


VALID = [
    host(),
    host(sessions=(), running=0, status="offline", key_id=None, max_disk_gb=None, last_seen=None, started_at=None,
         version=None, enrolled_at=None, credential_socket=None, declared=None),
    host(status="revoked", revoked_at="2026-02-01T00:00:00Z", pools=(), labels=(), models=(), pool_modes=()),
    host(sessions=(Session("a", "queued"), Session("b", "lost")), max_disk_gb=7),
]


@pytest.mark.parametrize("h", VALID)
def test_valid_rows_read_as_from_row_reads_them(h: Host) -> None:
    row = wire(h)
    assert row_reader(HOST_COLUMNS)(row) == from_row(HOST_COLUMNS, row) == h


WRONG = [None, 1, 1.5, True, "x", [], ["x", 1], [1], {"a": 1}, [["s", "running"]]]


@pytest.mark.parametrize("column", HOST_COLUMNS)
@pytest.mark.parametrize("value", WRONG, ids=repr)
def test_every_column_with_any_value_gives_the_outcome_of_from_row(column: str, value: Any) -> None:
    row = wire(host())
    row[HOST_COLUMNS.index(column)] = value
    assert outcome(row_reader(HOST_COLUMNS), row) == outcome(lambda r: from_row(HOST_COLUMNS, r), row)


@pytest.mark.parametrize("row", [None, "row", {}, wire(host())[:-1], [*wire(host()), None], tuple(wire(host())),
                                 [*wire(host())[:7], "unknown", *wire(host())[8:]]], ids=repr)
def test_malformed_rows_give_the_outcome_of_from_row(row: Any) -> None:
    assert outcome(row_reader(HOST_COLUMNS), row) == outcome(lambda r: from_row(HOST_COLUMNS, r), row)


def test_other_columns_are_read_by_from_row() -> None:
    columns = [*HOST_COLUMNS, "newer"]
    row = [*wire(host()), 42]
    got = row_reader(columns)(row)
    assert got == from_row(columns, row) == host() and got.extra == {"newer": 42}
