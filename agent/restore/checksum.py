"""Order-independent checksums of a table's rows, the same on both sides.

Each row is the list of its values in column order, as JSON values of
CONTRACT.md (what the archive holds, and what the applier reads back from
the target); its digest is SHA-256 of the row's compact JSON (agent.fastjson:
type-exact, it tells `1` from `1.0` and `true` from `1`, and dicts keep their
key order), about a tenth of the cost of the stdlib's encoder: the checksum is
computed for every restored row twice. JSON values hold no NaN (CONTRACT.md
spells non-finite floats as strings), so orjson's NaN-as-null cannot blur two
rows. The table's checksum is the row count and the sum of the digests modulo
2**128: a sum, unlike XOR, does not let two identical rows cancel out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from agent.fastjson import dumps_raw as _dumps

_SHA256 = hashlib.sha256
_MOD = 1 << 128


@dataclass
class TableChecksum:
    rows: int = 0
    _sum: int = 0

    def add(self, values: Sequence[Any]) -> None:
        # Summed unreduced (a big-int add per row); reduced mod 2**128 when read.
        self._sum += int.from_bytes(_SHA256(_dumps(values)).digest()[:16], "big")
        self.rows += 1

    @property
    def total(self) -> int:
        return self._sum % _MOD

    def hex(self) -> str:
        return f"{self.total:032x}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TableChecksum) and (self.rows, self.total) == (
            other.rows,
            other.total,
        )

    __hash__ = None  # type: ignore[assignment]


def summed(rows: Iterable[Sequence[Any]], into: TableChecksum) -> Iterator[Sequence[Any]]:
    """Pass rows through, adding each to `into` (one pass feeds COPY and the checksum)."""
    for values in rows:
        into.add(values)
        yield values


def checksum_of(rows: Iterable[Sequence[Any]]) -> TableChecksum:
    out = TableChecksum()
    for values in rows:
        out.add(values)
    return out
