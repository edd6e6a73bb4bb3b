"""Chunked authenticated encryption of archive segments (STREAM, as in age and Tink).

Online AEAD after Hoang, Reyhanitabar, Rogaway and Vizár (CRYPTO 2015): the
plaintext is cut into chunks, each sealed with AES-256-GCM under a nonce that
holds the chunk's index and a last-chunk flag. Reordering, dropping,
duplicating or truncating chunks changes a nonce and fails a tag; a reader
releases a chunk only after its tag verified, and a stream that ends
without a final-marked chunk is an error.

On-disk framing (integers big-endian), readable in bounded memory:

    header (32 bytes): b"CVST" | version u8 (=1) | chunk size u32
                       | salt (16) | nonce prefix (7)
    then per chunk:    u32 len | ciphertext || tag (len = plaintext + 16)

Segment key = HKDF-SHA256(data key, salt, info="changevault stream key v1"):
each segment has its own key (like Tink's AES-GCM-HKDF streaming AEAD), so
chunk nonces of different segments never meet under one key.
Chunk nonce = prefix (7) || chunk index u32 || last u8 (0 or 1).
Chunk associated data = header || caller aad (archive id, object key ...).
Every chunk but the last holds exactly `chunk size` plaintext bytes.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.errors import IntegrityError

STREAM_MAGIC = b"CVST"
STREAM_VERSION = 1
DEFAULT_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 4 * 1024 * 1024  # bounds a reader's memory whatever the header says
SALT_BYTES = 16
NONCE_PREFIX_BYTES = 7
TAG_BYTES = 16
MAX_CHUNKS = 2**32  # the index is 32 bits: 256 TiB at 64 KiB chunks
_HEADER = struct.Struct(">4sBI16s7s")
HEADER_BYTES = _HEADER.size
_LEN = struct.Struct(">I")
_KEY_INFO = b"changevault stream key v1"


@runtime_checkable
class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def _segment_cipher(data_key: bytes, salt: bytes) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_KEY_INFO)
    return AESGCM(hkdf.derive(data_key))


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if last else 0)


def seal_chunks(
    data_key: bytes,
    aad: bytes,
    plaintext_chunks: Iterable[bytes],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[bytes]:
    """Yield the header, then one framed sealed chunk at a time.

    Input pieces may have any size; they are re-cut into `chunk_size` chunks.
    One chunk is held back until it is known whether more data follows, so
    the final chunk can be marked.
    """
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size: expected 1..{MAX_CHUNK_SIZE}, found {chunk_size}")
    salt = secrets.token_bytes(SALT_BYTES)
    prefix = secrets.token_bytes(NONCE_PREFIX_BYTES)
    header = _HEADER.pack(STREAM_MAGIC, STREAM_VERSION, chunk_size, salt, prefix)
    cipher = _segment_cipher(data_key, salt)
    chunk_aad = header + aad
    yield header

    def frame(index: int, plaintext: bytes, last: bool) -> bytes:
        if index >= MAX_CHUNKS:
            raise ValueError("segment too large: chunk index would wrap")
        sealed = cipher.encrypt(_nonce(prefix, index, last), plaintext, chunk_aad)
        return _LEN.pack(len(sealed)) + sealed

    index = 0
    buf = bytearray()
    for piece in plaintext_chunks:
        buf += piece
        # Strictly more than one chunk buffered: this one is surely not last.
        while len(buf) > chunk_size:
            yield frame(index, bytes(buf[:chunk_size]), last=False)
            del buf[:chunk_size]
            index += 1
    yield frame(index, bytes(buf), last=True)


class _ByteSource:
    """read(n) over a file-like object or an iterable of byte strings."""

    def __init__(self, sealed: Iterable[bytes] | _Readable) -> None:
        self._file = sealed if isinstance(sealed, _Readable) else None
        self._pieces = None if self._file is not None else iter(sealed)  # type: ignore[arg-type]
        self._buf = bytearray()

    def read(self, n: int) -> bytes:
        """Up to n bytes; fewer only at the end of the input."""
        if self._file is not None:
            got = bytearray()
            while len(got) < n:
                more = self._file.read(n - len(got))
                if not more:
                    break
                got += more
            return bytes(got)
        assert self._pieces is not None
        while len(self._buf) < n:
            piece = next(self._pieces, None)
            if piece is None:
                break
            self._buf += piece
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


def open_chunks(
    data_key: bytes,
    aad: bytes,
    sealed: Iterable[bytes] | _Readable,
) -> Iterator[bytes]:
    """Yield plaintext chunks, each only after its tag verified.

    IntegrityError on a bad header, a changed, dropped, repeated or reordered
    chunk, a stream cut short (no final chunk) or anything after the final one.
    """
    src = _ByteSource(sealed)
    header = src.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES:
        raise IntegrityError(
            f"archive segment: expected a {HEADER_BYTES}-byte header, found {len(header)} bytes"
        )
    magic, version, chunk_size, salt, prefix = _HEADER.unpack(header)
    if magic != STREAM_MAGIC:
        raise IntegrityError("archive segment: expected magic CVST, found other bytes")
    if version != STREAM_VERSION:
        raise IntegrityError(
            f"archive segment: expected stream version {STREAM_VERSION}, found {version}"
        )
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise IntegrityError(f"archive segment: chunk size {chunk_size} out of range")
    cipher = _segment_cipher(data_key, salt)
    chunk_aad = header + aad
    max_frame = chunk_size + TAG_BYTES

    next_len = src.read(_LEN.size)
    index = 0
    while True:
        if len(next_len) < _LEN.size:
            raise IntegrityError(
                f"archive segment: ended after {index} chunk(s) without a final chunk (truncated)"
            )
        (n,) = _LEN.unpack(next_len)
        if not TAG_BYTES <= n <= max_frame:
            raise IntegrityError(
                f"archive segment: chunk {index} length {n} outside {TAG_BYTES}..{max_frame}"
            )
        body = src.read(n)
        if len(body) < n:
            raise IntegrityError(f"archive segment: chunk {index} truncated")
        next_len = src.read(_LEN.size)
        # The chunk is the final one exactly when nothing follows it; a
        # truncated stream or appended data then fails the tag below.
        last = not next_len
        if not last and n != max_frame:
            raise IntegrityError(f"archive segment: short chunk {index} before the end")
        if index >= MAX_CHUNKS:
            raise IntegrityError("archive segment: too many chunks")
        try:
            plaintext = cipher.decrypt(_nonce(prefix, index, last), body, chunk_aad)
        except InvalidTag:
            where = "final chunk" if last else f"chunk {index}"
            raise IntegrityError(
                f"archive segment: {where} does not verify "
                "(altered, reordered, truncated or wrong key)"
            ) from None
        yield plaintext
        if last:
            return
        index += 1


def frame_bytes(chunk_size: int) -> int:
    """Stored size of a full (non-final) chunk: length prefix, ciphertext, tag."""
    return _LEN.size + chunk_size + TAG_BYTES


def stream_chunk_size(header: bytes) -> int:
    """The chunk size a stream header declares (IntegrityError if malformed)."""
    if len(header) != HEADER_BYTES:
        raise IntegrityError(f"archive segment: expected a {HEADER_BYTES}-byte header")
    magic, version, chunk_size, _salt, _prefix = _HEADER.unpack(header)
    if magic != STREAM_MAGIC or version != STREAM_VERSION:
        raise IntegrityError("archive segment: expected a CVST version 1 stream header")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise IntegrityError(f"archive segment: chunk size {chunk_size} out of range")
    return int(chunk_size)


def open_chunk_at(
    data_key: bytes, aad: bytes, header: bytes, index: int, last: bool, frame: bytes
) -> bytes:
    """Plaintext of one chunk read at its offset (random access, e.g. a range read).

    The caller derives `index` and `last` from the object's size, which the
    signed catalog records; the nonce binds both, so a chunk moved, or a
    stream cut to end before `index`, fails the tag like in open_chunks.
    """
    chunk_size = stream_chunk_size(header)
    _magic, _version, _cs, salt, prefix = _HEADER.unpack(header)
    if len(frame) < _LEN.size:
        raise IntegrityError(f"archive segment: chunk {index} truncated")
    (n,) = _LEN.unpack_from(frame)
    body = frame[_LEN.size :]
    if len(body) != n or not TAG_BYTES <= n <= chunk_size + TAG_BYTES:
        raise IntegrityError(f"archive segment: chunk {index} has a bad length")
    if not last and n != chunk_size + TAG_BYTES:
        raise IntegrityError(f"archive segment: short chunk {index} before the end")
    try:
        return _segment_cipher(data_key, salt).decrypt(
            _nonce(prefix, index, last), body, header + aad
        )
    except InvalidTag:
        raise IntegrityError(
            f"archive segment: chunk {index} does not verify "
            "(altered, reordered, truncated or wrong key)"
        ) from None
