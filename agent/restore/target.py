"""What `--to`, `--to-position` and `--before-tx` mean, as a predicate on transactions.

A target is a prefix of the log in commit order, never splitting a
transaction: `--to TIME` ends just before the first transaction committed
later than TIME; `--to-position POS` keeps every transaction at or before
POS; `--before-tx TX` keeps everything before that transaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from agent.archive.reader import ArchiveReader, SnapshotInfo
from agent.archive.records import TxBeginRecord
from agent.archive.segment import read_segment_records
from agent.errors import UsageError
from agent.events import Position
from agent.timestamps import parse_user_time

_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


def parse_lsn(text: str) -> int:
    """`0/16B3748` -> the 64-bit LSN (PostgreSQL's text form: two hex halves)."""
    m = _LSN.match(text.strip())
    if m is None:
        raise UsageError(f"--to-position: expected a PostgreSQL LSN like 0/16B3748, found {text!r}")
    return (int(m.group(1), 16) << 32) + int(m.group(2), 16)


@dataclass(frozen=True, slots=True)
class Target:
    """A log prefix. Exactly one of `time` / `bound` is set.

    `bound` is compared with Position.sort_key: a transaction is in the
    prefix iff its sort_key <= bound (`exclusive`: < bound).
    """

    description: str
    time: datetime | None = None
    bound: tuple[int, ...] | None = None
    exclusive: bool = False

    def admits(self, position: Position, commit_ts: datetime) -> bool:
        if self.time is not None:
            return commit_ts <= self.time
        assert self.bound is not None
        if self.exclusive:
            return position.sort_key < self.bound
        return position.sort_key <= self.bound

    def snapshot_ok(self, snap: SnapshotInfo) -> bool:
        """Whether every transaction the snapshot holds lies inside the prefix.

        For a time target the snapshot's start time is used: everything in it
        committed before its consistent point, which precedes the start.
        """
        if self.time is not None:
            return datetime.fromisoformat(snap.started) <= self.time
        return self.admits(snap.position, datetime.min)


def time_target(value: str) -> Target:
    ts = parse_user_time(value, "--to")
    return Target(f"--to {ts.isoformat(timespec='microseconds')}", time=ts)


def position_target(value: str, connector: str) -> Target:
    if connector != "postgres":
        raise UsageError(
            f"--to-position: only PostgreSQL LSNs are supported by this version, "
            f"the archive is from {connector}"
        )
    return Target(f"--to-position {value}", bound=(parse_lsn(value),))


def before_tx_target(reader: ArchiveReader, txid: str) -> Target:
    """Find the transaction by its source.txid, newest occurrence first.

    PostgreSQL xids wrap around, so a txid can repeat over a long archive;
    the newest one is meant (what `events` printed recently).
    """
    from agent.archive.reader import segment_entries

    if reader.opener is None:
        raise UsageError("--before-tx needs the private key (archive.key)")
    for entry in reversed(segment_entries(reader.entries())):
        key = entry.body["object"]
        data = reader.fetch(key, entry.body["digest"])
        for rec in read_segment_records(data, reader.opener, reader.archive_id, key):
            if isinstance(rec, TxBeginRecord) and rec.txid == txid:
                return Target(
                    f"--before-tx {txid} (at {rec.position.text})",
                    bound=rec.position.sort_key,
                    exclusive=True,
                )
    raise UsageError(
        f"--before-tx: expected a transaction with txid {txid} in the archive, found none"
    )
