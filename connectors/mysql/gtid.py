"""GTID positions of both flavours: MariaDB GTID lists and MySQL 8 GTID sets.

MariaDB numbers transactions `domain-server-seq`; replication state is one GTID
per domain (the last one applied), e.g. `0-1-42,1-2-7`. MySQL numbers them
`uuid:gno` and its state is a set of intervals per source uuid, e.g.
`3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7-9`. Both are immutable values here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.errors import UsageError

_MARIADB_GTID = re.compile(r"^\s*(\d+)-(\d+)-(\d+)\s*$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True, slots=True, order=True)
class MariaDBGtid:
    domain: int
    server: int
    seq: int

    @classmethod
    def parse(cls, text: str) -> MariaDBGtid:
        m = _MARIADB_GTID.match(text)
        if not m:
            raise UsageError(f"expected a MariaDB GTID like 0-1-42, found {text!r}")
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)))

    def __str__(self) -> str:
        return f"{self.domain}-{self.server}-{self.seq}"


@dataclass(frozen=True, slots=True)
class MariaDBGtidList:
    """One GTID per replication domain: everything up to it has been seen."""

    gtids: tuple[MariaDBGtid, ...] = ()  # sorted by domain, one per domain

    @classmethod
    def parse(cls, text: str) -> MariaDBGtidList:
        parts = [p for p in text.replace("\n", "").split(",") if p.strip()]
        by_domain: dict[int, MariaDBGtid] = {}
        for part in parts:
            gtid = MariaDBGtid.parse(part)
            if gtid.domain in by_domain:
                raise UsageError(f"expected one GTID per domain, found domain {gtid.domain} twice")
            by_domain[gtid.domain] = gtid
        return cls(tuple(sorted(by_domain.values())))

    def __str__(self) -> str:
        return ",".join(str(g) for g in self.gtids)

    def __bool__(self) -> bool:
        return bool(self.gtids)

    def seq(self, domain: int) -> int:
        for g in self.gtids:
            if g.domain == domain:
                return g.seq
        return 0

    def with_gtid(self, gtid: MariaDBGtid) -> MariaDBGtidList:
        """The state after applying `gtid` (it replaces its domain's entry)."""
        rest = [g for g in self.gtids if g.domain != gtid.domain]
        return MariaDBGtidList(tuple(sorted([*rest, gtid])))

    def union(self, other: MariaDBGtidList) -> MariaDBGtidList:
        """Per domain, the later of the two GTIDs."""
        merged = {g.domain: g for g in self.gtids}
        for g in other.gtids:
            if g.domain not in merged or merged[g.domain].seq < g.seq:
                merged[g.domain] = g
        return MariaDBGtidList(tuple(sorted(merged.values())))

    def contains(self, gtid: MariaDBGtid) -> bool:
        """True when `gtid` is at or before this state in its domain."""
        return gtid.seq <= self.seq(gtid.domain)

    def issubset(self, other: MariaDBGtidList) -> bool:
        return all(g.seq <= other.seq(g.domain) for g in self.gtids)

    def compare(self, other: MariaDBGtidList) -> int | None:
        """-1, 0 or 1; None when the states are not ordered (domains disagree)."""
        return _compare(self.issubset(other), other.issubset(self))


@dataclass(frozen=True, slots=True)
class MySQLGtidSet:
    """uuid -> sorted, disjoint, non-adjacent inclusive intervals of gno."""

    intervals: tuple[tuple[str, tuple[tuple[int, int], ...]], ...] = ()

    @classmethod
    def parse(cls, text: str) -> MySQLGtidSet:
        result: dict[str, list[tuple[int, int]]] = {}
        for member in text.replace("\n", "").split(","):
            member = member.strip()
            if not member:
                continue
            uuid, *ranges = member.split(":")
            uuid = uuid.strip().lower()
            if not _UUID.match(uuid) or not ranges:
                raise UsageError(f"expected a MySQL GTID set like uuid:1-5, found {member!r}")
            for r in ranges:
                lo, _, hi = r.strip().partition("-")
                try:
                    start, end = int(lo), int(hi or lo)
                except ValueError:
                    raise UsageError(f"expected an interval like 1-5, found {r!r}") from None
                if start < 1 or end < start:
                    raise UsageError(f"expected an interval like 1-5, found {r!r}")
                result.setdefault(uuid, []).append((start, end))
        return cls._normalized(result)

    @classmethod
    def _normalized(cls, by_uuid: dict[str, list[tuple[int, int]]]) -> MySQLGtidSet:
        out: list[tuple[str, tuple[tuple[int, int], ...]]] = []
        for uuid in sorted(by_uuid):
            merged: list[tuple[int, int]] = []
            for start, end in sorted(by_uuid[uuid]):
                if merged and start <= merged[-1][1] + 1:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], end))
                else:
                    merged.append((start, end))
            if merged:
                out.append((uuid, tuple(merged)))
        return cls(tuple(out))

    def __str__(self) -> str:
        return ",".join(
            uuid + "".join(f":{s}" if s == e else f":{s}-{e}" for s, e in ranges)
            for uuid, ranges in self.intervals
        )

    def __bool__(self) -> bool:
        return bool(self.intervals)

    def _as_dict(self) -> dict[str, list[tuple[int, int]]]:
        return {uuid: list(ranges) for uuid, ranges in self.intervals}

    def with_gtid(self, uuid: str, gno: int) -> MySQLGtidSet:
        d = self._as_dict()
        d.setdefault(uuid.lower(), []).append((gno, gno))
        return self._normalized(d)

    def union(self, other: MySQLGtidSet) -> MySQLGtidSet:
        d = self._as_dict()
        for uuid, ranges in other.intervals:
            d.setdefault(uuid, []).extend(ranges)
        return self._normalized(d)

    def contains(self, uuid: str, gno: int) -> bool:
        ranges = dict(self.intervals).get(uuid.lower(), ())
        return any(s <= gno <= e for s, e in ranges)

    def issubset(self, other: MySQLGtidSet) -> bool:
        theirs = dict(other.intervals)
        for uuid, ranges in self.intervals:
            for s, e in ranges:
                if not any(os <= s and e <= oe for os, oe in theirs.get(uuid, ())):
                    return False
        return True

    def compare(self, other: MySQLGtidSet) -> int | None:
        """-1 (subset), 0 (equal), 1 (superset), None (neither contains the other)."""
        return _compare(self.issubset(other), other.issubset(self))


def _compare(le: bool, ge: bool) -> int | None:
    if le and ge:
        return 0
    if le:
        return -1
    if ge:
        return 1
    return None


GtidState = MariaDBGtidList | MySQLGtidSet


def parse_gtid_state(text: str) -> GtidState:
    """Either flavour, recognised by its syntax (`uuid:` means MySQL)."""
    if ":" in text:
        return MySQLGtidSet.parse(text)
    return MariaDBGtidList.parse(text)
