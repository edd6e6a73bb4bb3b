"""Which of some keyed hashes a sealed segment index holds, by range reads.

An index object is a sealed stream of sorted 8-byte hashes (archive/sink.py).
Keyed hashes are uniform, so hash h sits near entry h / 2^64 * n: the reader
range-reads the object's header and the few chunks around that entry,
widening until the chunks it holds bracket h, and opens each chunk alone
(agent.crypto.stream.open_chunk_at). An entity restore then reads a few KiB
per segment instead of the whole index. docs/archive-format.md, "Range reads
of an index", says why authenticity holds without the whole-object digest.

Indexes sealed in large chunks (older archives) and lookups that would touch
most of an index fetch the whole object and check its catalog digest instead.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Collection
from dataclasses import dataclass, field

from agent.archive.segment import open_object, read_header, stream_aad
from agent.crypto.datakeys import DataKeyOpener
from agent.crypto.stream import HEADER_BYTES, TAG_BYTES, frame_bytes, open_chunk_at
from agent.crypto.stream import stream_chunk_size as declared_chunk_size
from agent.errors import IntegrityError
from connectors.base import ObjectStore

HASH_BYTES = 8
_LEN = struct.Struct(">I")
_FIRST_READ = 1024  # an object header is a few hundred bytes: one read usually holds it
_WHOLE_FETCH_CHUNKS = 8  # below this many chunks a whole fetch costs no more
_WHOLE_FETCH_BYTES = 6 * 1024  # ... nor for an object this small (no header read first)


def _header_length(head: bytes) -> int | None:
    """Length of the object header (magic .. meta) if `head` shows it, else None."""
    at = 6  # b"CVSEG" + version
    for _ in range(2):
        if len(head) < at + _LEN.size:
            return None
        (n,) = _LEN.unpack_from(head, at)
        at += _LEN.size + n
    return at


def contains(index: bytes, h: bytes) -> bool:
    """Whether a sorted run of 8-byte hashes holds h (binary search, no copies)."""
    lo, hi = 0, len(index) // HASH_BYTES
    while lo < hi:
        mid = (lo + hi) // 2
        probe = index[mid * HASH_BYTES : (mid + 1) * HASH_BYTES]
        if probe < h:
            lo = mid + 1
        elif probe > h:
            hi = mid
        else:
            return True
    return False


@dataclass
class _OpenIndex:
    """An index object's geometry and key, and the chunks opened so far."""

    key: str
    size: int
    body_at: int  # offset of the first chunk frame
    chunk_size: int
    chunks: int
    entries: int
    secret: bytes
    aad: bytes
    stream_header: bytes
    opened: dict[int, bytes] = field(default_factory=dict)


class IndexReader:
    """Looks hashes up in index objects; remembers the last header length as a guess."""

    def __init__(self, store: ObjectStore, opener: DataKeyOpener, archive_id: str) -> None:
        self.store = store
        self.opener = opener
        self.archive_id = archive_id
        self._first_read = _FIRST_READ
        self.range_lookups = 0
        self.whole_fetches = 0
        # Lookups come in rounds (entity candidates grow): keep what was read.
        # Bounded by the indexes of one restore plan, as before range reads.
        self._whole_cache: dict[str, bytes] = {}
        self._opened: dict[str, _OpenIndex] = {}

    def present(self, key: str, size: int, digest: str, wanted: Collection[bytes]) -> set[bytes]:
        """The hashes of `wanted` that the index object `key` holds."""
        if not wanted:
            return set()
        whole = self._whole_cache.get(key)
        if whole is not None:
            return {h for h in wanted if contains(whole, h)}
        known = self._opened.get(key)
        if known is not None:
            if len(wanted) * 3 >= known.chunks:
                return self._whole(key, digest, wanted)
            return self._search(key, known, wanted)
        if size <= _WHOLE_FETCH_BYTES:
            return self._whole(key, digest, wanted)
        head = self.store.get_range(key, 0, min(size, self._first_read))
        hlen = _header_length(head)
        if hlen is None or len(head) < hlen + HEADER_BYTES:
            if hlen is None:
                head = self.store.get_range(key, 0, min(size, 64 * 1024))
                hlen = _header_length(head)
                if hlen is None:
                    raise IntegrityError(f"{key}: object header is implausibly long")
            if len(head) < hlen + HEADER_BYTES:
                head += self.store.get_range(key, len(head), hlen + HEADER_BYTES - len(head))
        self._first_read = max(256, hlen + HEADER_BYTES)
        header = read_header(io.BytesIO(head[:hlen]), key)
        stream_header = head[hlen : hlen + HEADER_BYTES]
        if len(stream_header) != HEADER_BYTES:
            raise IntegrityError(f"{key}: object truncated inside its stream header")
        chunk_size = declared_chunk_size(stream_header)
        if chunk_size % HASH_BYTES:
            return self._whole(key, digest, wanted)
        body = size - hlen - HEADER_BYTES
        full = frame_bytes(chunk_size)
        chunks = max(1, -(-body // full))
        last_frame = body - (chunks - 1) * full
        plain_bytes = body - chunks * (_LEN.size + TAG_BYTES)
        if not _LEN.size + TAG_BYTES <= last_frame <= full or plain_bytes % HASH_BYTES:
            raise IntegrityError(f"{key}: index size {size} does not fit its stream")
        entries = plain_bytes // HASH_BYTES
        if chunks < _WHOLE_FETCH_CHUNKS or len(wanted) * 3 >= chunks:
            return self._whole(key, digest, wanted)
        self.range_lookups += 1
        _ann, secret = self.opener.unwrap(header.announcement)
        opened = _OpenIndex(
            key=key,
            size=size,
            body_at=hlen + HEADER_BYTES,
            chunk_size=chunk_size,
            chunks=chunks,
            entries=entries,
            secret=secret,
            aad=stream_aad(self.archive_id, key, header.raw),
            stream_header=stream_header,
        )
        self._opened[key] = opened
        return self._search(key, opened, wanted)

    def _search(self, key: str, idx: _OpenIndex, wanted: Collection[bytes]) -> set[bytes]:
        per_chunk = idx.chunk_size // HASH_BYTES
        full = frame_bytes(idx.chunk_size)
        opened = idx.opened

        def load(first: int, end: int) -> None:
            """Open chunks first..end-1 that are not open yet (one range read)."""
            todo = [i for i in range(first, end) if i not in opened]
            if not todo:
                return
            lo, hi = todo[0], todo[-1] + 1
            start = idx.body_at + lo * full
            end_at = min(idx.size, idx.body_at + hi * full)
            data = self.store.get_range(key, start, end_at - start)
            for i in range(lo, hi):
                if i not in opened:
                    frame = data[(i - lo) * full : (i - lo + 1) * full]
                    opened[i] = open_chunk_at(
                        idx.secret, idx.aad, idx.stream_header, i, i == idx.chunks - 1, frame
                    )

        found: set[bytes] = set()
        for h in wanted:
            # The predicted chunk, and its neighbour when the guess is near that
            # edge (the spread of a uniform sample's order statistic is about
            # sqrt(n)/2 entries, ~60 in a segment's index, half a 1 KiB chunk).
            guess = (int.from_bytes(h[:HASH_BYTES], "big") * idx.entries) >> 64
            chunk, within = divmod(guess, per_chunk)
            chunk = min(chunk, idx.chunks - 1)
            lo = max(0, chunk - 1) if within < per_chunk // 4 else chunk
            hi = min(idx.chunks, chunk + 2) if within >= per_chunk - per_chunk // 4 else chunk + 1
            while True:
                load(lo, hi)
                first, last = opened[lo][:HASH_BYTES], opened[hi - 1][-HASH_BYTES:]
                if lo > 0 and h < first:
                    lo -= 1
                elif hi < idx.chunks and last and h > last:
                    hi += 1
                else:
                    break
            if any(contains(opened[i], h) for i in range(lo, hi)):
                found.add(h)
        return found

    def _whole(self, key: str, digest: str, wanted: Collection[bytes]) -> set[bytes]:
        self.whole_fetches += 1
        data = self.store.get(key)
        if hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(f"{key}: content does not match its catalog digest")
        index = b"".join(open_object(data, self.opener, self.archive_id, key))
        if len(index) % HASH_BYTES:
            raise IntegrityError(f"{key}: index length is not a multiple of 8")
        self._whole_cache[key] = index
        return {h for h in wanted if contains(index, h)}
