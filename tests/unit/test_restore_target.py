"""Target resolution: --to TIME, --to-position, --before-tx bounds, and the planner's choices."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from agent.archive import catalog
from agent.archive.catalog import CatalogEntry
from agent.checkpoint import position_to_json
from agent.errors import UsageError
from agent.events import Position
from agent.restore.planner import make_plan
from agent.restore.target import Target, parse_lsn, position_target, time_target


def ts(s: str) -> datetime:
    return datetime.fromisoformat(s)


def test_time_without_offset_is_utc_and_never_splits_by_commit_time() -> None:
    t = time_target("2026-01-01T10:00:00")
    assert t.time == datetime(2026, 1, 1, 10, tzinfo=UTC)
    p = Position("0/1", (1,))
    assert t.admits(p, ts("2026-01-01T10:00:00+00:00"))
    assert not t.admits(p, ts("2026-01-01T10:00:00.000001+00:00"))
    assert time_target("2026-01-01T12:00:00+02:00").time == datetime(2026, 1, 1, 10, tzinfo=UTC)


def test_lsn_parsing() -> None:
    assert parse_lsn("0/16B3748") == 0x16B3748
    assert parse_lsn("1/0") == 1 << 32
    for bad in ("16B3748", "0/xyz", "", "1/2/3"):
        with pytest.raises(UsageError):
            parse_lsn(bad)
    with pytest.raises(UsageError, match="only PostgreSQL"):
        position_target("0/1", "mysql")


def test_position_bounds_inclusive_and_exclusive() -> None:
    inclusive = Target("x", bound=(100,))
    exclusive = Target("x", bound=(100,), exclusive=True)
    at, past = Position("a", (100,)), Position("b", (101,))
    now = datetime.now(UTC)
    assert inclusive.admits(at, now) and not inclusive.admits(past, now)
    assert not exclusive.admits(at, now) and exclusive.admits(Position("c", (99,)), now)


def _entry(seq: int, kind: str, body: dict[str, Any]) -> CatalogEntry:
    return CatalogEntry(seq, kind, "arch", "", "2026-01-01T00:00:00+00:00", "agent", None, body)


def _pos(n: int) -> dict[str, Any]:
    return position_to_json(Position(f"0/{n:X}", (n,)))


def _archive() -> list[CatalogEntry]:
    def snap(seq: int, sid: str, at: int, started: str) -> list[CatalogEntry]:
        body = {"snapshot_id": sid, "position": _pos(at), "started": started, "tables": []}
        return [
            _entry(seq, catalog.SNAPSHOT_BEGIN, body),
            _entry(seq + 1, catalog.SNAPSHOT_END, {"snapshot_id": sid}),
        ]

    def seg(seq: int, after: int | None, first: int, last: int, c0: str, c1: str) -> CatalogEntry:
        return _entry(seq, catalog.SEGMENT, {
            "after": _pos(after) if after else None, "first_position": _pos(first),
            "last_position": _pos(last), "first_commit_ts": c0, "last_commit_ts": c1, "tx_ends": 2,
        })

    return [
        _entry(0, catalog.GENESIS, {}),
        *snap(1, "s1", 10, "2026-01-01T10:00:00+00:00"),
        seg(3, None, 20, 30, "2026-01-01T10:01:00+00:00", "2026-01-01T10:02:00+00:00"),
        seg(4, 30, 40, 50, "2026-01-01T10:03:00+00:00", "2026-01-01T10:04:00+00:00"),
        *snap(5, "s2", 50, "2026-01-01T10:05:00+00:00"),
        seg(7, 50, 60, 70, "2026-01-01T10:06:00+00:00", "2026-01-01T10:07:00+00:00"),
        seg(8, 70, 80, 90, "2026-01-01T10:08:00+00:00", "2026-01-01T10:09:00+00:00"),
    ]


def test_plan_picks_the_newest_snapshot_inside_the_target_and_only_needed_segments() -> None:
    entries = _archive()
    plan = make_plan(entries, time_target("2026-01-01T10:03:30Z"))
    assert plan.snapshot.snapshot_id == "s1"
    assert [e.seq for e in plan.segments] == [3, 4]
    plan = make_plan(entries, time_target("2026-01-01T10:06:30Z"))
    assert plan.snapshot.snapshot_id == "s2"
    # one segment before the first one after the snapshot (a tx may begin there)
    assert [e.seq for e in plan.segments] == [4, 7]
    plan = make_plan(entries, position_target("0/3C", "postgres"))  # 60
    assert plan.snapshot.snapshot_id == "s2"
    assert [e.seq for e in plan.segments] == [4, 7]
    plan = make_plan(entries, Target("before", bound=(80,), exclusive=True))
    assert [e.seq for e in plan.segments] == [4, 7, 8]


def test_a_target_before_the_oldest_snapshot_is_refused() -> None:
    with pytest.raises(UsageError, match="oldest restorable: 2026-01-01T10:00:00"):
        make_plan(_archive(), time_target("2026-01-01T09:00:00Z"))
    with pytest.raises(UsageError, match="before the oldest complete snapshot"):
        make_plan(_archive(), position_target("0/5", "postgres"))
