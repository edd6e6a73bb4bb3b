"""Segment objects: compressed records, sealed in chunks, self-describing.

Object layout (integers big-endian):

    b"CVSEG" | version u8 | u32 len | data-key announcement (signed, wrapped
    to every recipient) | u32 len | meta JSON | sealed stream (agent.crypto.stream)

The stream's associated data binds the archive id, the object key and the
digest of everything before it, so a segment cannot be moved to another key
or archive, nor given another announcement, without failing its tags. The
plaintext is a zstd frame of `records`; it is released to the reader only
chunk by chunk, after each chunk's tag verified.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import zstandard

from agent.archive.records import KIND_EVENT, Record, encode_record, read_records
from agent.crypto.datakeys import DataKey, DataKeyOpener
from agent.crypto.stream import DEFAULT_CHUNK_SIZE, open_chunks, seal_chunks
from agent.errors import DecodeError, IntegrityError

MAGIC = b"CVSEG"
VERSION = 1
_LEN = struct.Struct(">I")
_MAX_HEADER_PART = 1024 * 1024
# An event record's head: kind u8 | u32 body length (records.py's layout).
_EVENT_HEAD = struct.Struct(">BI").pack
_EVENT_HEAD_SIZE = struct.calcsize(">BI")


def stream_aad(archive_id: str, key: str, header: bytes) -> bytes:
    return (
        b"changevault-segment-v1\x00"
        + archive_id.encode()
        + b"\x00"
        + key.encode()
        + b"\x00"
        + hashlib.sha256(header).digest()
    )


def seal_object(
    data_key: DataKey,
    archive_id: str,
    key: str,
    meta: dict[str, Any],
    plaintext: Iterable[bytes],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> bytes:
    """A whole sealed object in memory (segments are bounded by segment_max_bytes).

    Small chunks (index objects) let a reader fetch and open one chunk by a
    range read; the stream format is the same whatever the size.
    """
    meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    header = (
        MAGIC
        + bytes([VERSION])
        + _LEN.pack(len(data_key.announcement))
        + data_key.announcement
        + _LEN.pack(len(meta_bytes))
        + meta_bytes
    )
    out = bytearray(header)
    aad = stream_aad(archive_id, key, header)
    for piece in seal_chunks(data_key.secret, aad, plaintext, chunk_size=chunk_size):
        out += piece
    return bytes(out)


@dataclass(frozen=True, slots=True)
class ObjectHeader:
    announcement: bytes
    meta: dict[str, Any]
    raw: bytes  # everything before the sealed stream


def read_header(f: IO[bytes], where: str) -> ObjectHeader:
    def take(n: int) -> bytes:
        data = f.read(n)
        if len(data) != n:
            raise IntegrityError(f"{where}: object truncated inside its header")
        return data

    magic = take(len(MAGIC) + 1)
    if magic[:-1] != MAGIC:
        raise IntegrityError(f"{where}: not a changevault archive object (bad magic)")
    if magic[-1] != VERSION:
        raise IntegrityError(f"{where}: archive object version {magic[-1]} is not supported")
    parts = [magic]
    fields: list[bytes] = []
    for _ in range(2):
        raw_len = take(_LEN.size)
        (n,) = _LEN.unpack(raw_len)
        if n > _MAX_HEADER_PART:
            raise IntegrityError(f"{where}: header field of {n} bytes is implausible")
        body = take(n)
        parts += [raw_len, body]
        fields.append(body)
    try:
        meta = json.loads(fields[1])
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        raise IntegrityError(f"{where}: garbled object metadata") from None
    if not isinstance(meta, dict):
        raise IntegrityError(f"{where}: garbled object metadata")
    return ObjectHeader(fields[0], meta, b"".join(parts))


def open_object(
    data: bytes | IO[bytes], opener: DataKeyOpener, archive_id: str, key: str
) -> Iterator[bytes]:
    """Plaintext chunks of one object, each released only after its tag verified."""
    f = io.BytesIO(data) if isinstance(data, bytes) else data
    header = read_header(f, key)
    _announcement, secret = opener.unwrap(header.announcement)
    yield from open_chunks(secret, stream_aad(archive_id, key, header.raw), f)


class _ChunkReader(io.RawIOBase):
    """A file-like view of an iterator of byte chunks (for the zstd reader)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._buf = nxt
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def read_segment_records(
    data: bytes | IO[bytes], opener: DataKeyOpener, archive_id: str, key: str
) -> Iterator[Record]:
    raw = io.BufferedReader(_ChunkReader(open_object(data, opener, archive_id, key)))
    try:
        with zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True) as plain:
            yield from read_records(plain)
    except zstandard.ZstdError as exc:
        raise DecodeError(f"{key}: segment does not decompress: {exc}") from None


class SegmentBuilder:
    """Accumulates records for one segment, compressed, in bounded memory.

    Records are gathered into a plaintext buffer and handed to zstd a chunk at
    a time; the output is the same single zstd frame of the records in order.
    Each compress() call releases the GIL, and getting it back costs the
    archive thread a switch interval (5 ms) whenever another pipeline thread
    is busy: one call per record, or per 64 KiB, made that wait the archive
    sink's main cost (measured beside a busy thread: 100k rows/s at 64 KiB,
    220k at 1 MiB).
    """

    # Plaintext gathered before one compress() call: bounds the extra memory.
    CHUNK_BYTES = 1024 * 1024

    # Level 1: on envelope JSON it compresses as well as level 3 (measured:
    # slightly smaller) at about a third of the CPU, and the archive sink's
    # thread competes with capture for the GIL.
    def __init__(self, level: int = 1) -> None:
        self._cctx = zstandard.ZstdCompressor(level=level)
        self._comp = self._cctx.compressobj()
        self._out = bytearray()
        self._pending = bytearray()
        self.raw_bytes = 0
        self.records = 0

    def add(self, rec: Record) -> None:
        self._append(encode_record(rec))

    def add_event(self, envelope: bytes) -> None:
        """`add(EventRecord(envelope))` without the record object (the hot path)."""
        pending = self._pending
        pending += _EVENT_HEAD(KIND_EVENT, len(envelope))
        pending += envelope
        self.raw_bytes += _EVENT_HEAD_SIZE + len(envelope)
        self.records += 1
        if len(pending) >= self.CHUNK_BYTES:
            self._compress_pending()

    def _append(self, data: bytes) -> None:
        self._pending += data
        self.raw_bytes += len(data)
        self.records += 1
        if len(self._pending) >= self.CHUNK_BYTES:
            self._compress_pending()

    def _compress_pending(self) -> None:
        self._out += self._comp.compress(self._pending)
        self._pending = bytearray()

    def finish(self) -> bytes:
        if self._pending:
            self._compress_pending()
        self._out += self._comp.flush()
        return bytes(self._out)
