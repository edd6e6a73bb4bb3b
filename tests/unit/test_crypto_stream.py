"""STREAM chunked encryption of archive segments."""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.crypto.stream import (
    DEFAULT_CHUNK_SIZE,
    HEADER_BYTES,
    MAX_CHUNK_SIZE,
    TAG_BYTES,
    open_chunks,
    seal_chunks,
)
from agent.errors import IntegrityError

KEY = bytes(range(32))
AAD = b"archive-id/segments/000001.seg"


def sealed_bytes(data: bytes, chunk_size: int = 16, aad: bytes = AAD) -> bytes:
    return b"".join(seal_chunks(KEY, aad, [data], chunk_size=chunk_size))


def frames(sealed: bytes) -> tuple[bytes, list[bytes]]:
    """Split into header and framed chunks (length prefix included)."""
    header, pos, out = sealed[:HEADER_BYTES], HEADER_BYTES, []
    while pos < len(sealed):
        (n,) = struct.unpack_from(">I", sealed, pos)
        out.append(sealed[pos : pos + 4 + n])
        pos += 4 + n
    return header, out


def opened(sealed: bytes, aad: bytes = AAD, key: bytes = KEY) -> bytes:
    return b"".join(open_chunks(key, aad, [sealed]))


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 32, 33, 100])
def test_round_trip_at_chunk_boundaries(size: int) -> None:
    data = os.urandom(size)
    sealed = sealed_bytes(data)
    assert opened(sealed) == data
    _, fs = frames(sealed)
    assert len(fs) == max(1, -(-size // 16))
    assert all(len(f) == 4 + 16 + TAG_BYTES for f in fs[:-1])


def test_round_trip_default_chunk_size_with_odd_pieces_and_file_input() -> None:
    data = os.urandom(3 * DEFAULT_CHUNK_SIZE + 123)
    pieces = [data[i : i + 7777] for i in range(0, len(data), 7777)]
    sealed = b"".join(seal_chunks(KEY, AAD, pieces))
    assert b"".join(open_chunks(KEY, AAD, io.BytesIO(sealed))) == data
    # an iterable of tiny pieces reads the same
    tiny = [sealed[i : i + 5] for i in range(0, len(sealed), 5)]
    assert b"".join(open_chunks(KEY, AAD, tiny)) == data


def test_each_segment_has_its_own_salt_and_prefix() -> None:
    a, b = sealed_bytes(b"same"), sealed_bytes(b"same")
    assert a[:HEADER_BYTES] != b[:HEADER_BYTES] and a != b


def test_truncation_at_every_chunk_boundary() -> None:
    header, fs = frames(sealed_bytes(os.urandom(80)))
    assert len(fs) == 5
    for k in range(len(fs)):
        with pytest.raises(IntegrityError):
            opened(header + b"".join(fs[:k]))


def test_truncation_at_every_byte() -> None:
    sealed = sealed_bytes(os.urandom(40))
    for n in range(len(sealed)):
        with pytest.raises(IntegrityError):
            opened(sealed[:n])


def test_no_final_chunk_is_named_as_truncation() -> None:
    header, fs = frames(sealed_bytes(os.urandom(40)))
    with pytest.raises(IntegrityError, match="without a final chunk|does not verify"):
        opened(header + fs[0])
    with pytest.raises(IntegrityError, match="without a final chunk"):
        opened(header)


def test_appended_data_and_chunks_after_the_final_one() -> None:
    sealed = sealed_bytes(os.urandom(40))
    _header, fs = frames(sealed)
    for bad in (sealed + b"\x00", sealed + fs[-1], sealed + sealed_bytes(b"x")[HEADER_BYTES:]):
        with pytest.raises(IntegrityError):
            opened(bad)


@pytest.mark.parametrize(
    "rearrange",
    [
        lambda fs: [fs[1], fs[0], *fs[2:]],  # swap
        lambda fs: [fs[0], fs[0], *fs[1:]],  # duplicate
        lambda fs: [fs[0], *fs[2:]],  # drop a middle chunk
        lambda fs: [*fs[:-2], fs[-1]],  # drop the one before last
        lambda fs: [*fs[:-1], fs[0]],  # replace the final chunk
    ],
)
def test_reordered_duplicated_or_dropped_chunks(rearrange: object) -> None:
    header, fs = frames(sealed_bytes(os.urandom(64)))
    with pytest.raises(IntegrityError):
        opened(header + b"".join(rearrange(fs)))  # type: ignore[operator]


def test_chunks_from_another_segment_do_not_fit() -> None:
    h1, f1 = frames(sealed_bytes(b"a" * 40))
    _, f2 = frames(sealed_bytes(b"a" * 40))
    with pytest.raises(IntegrityError):
        opened(h1 + f1[0] + f2[1] + f1[2])


def test_every_bit_flip_is_detected() -> None:
    sealed = sealed_bytes(os.urandom(40))
    for i in range(len(sealed)):
        bad = bytearray(sealed)
        bad[i] ^= 0x01
        with pytest.raises(IntegrityError):
            opened(bytes(bad))


def test_wrong_aad_or_key() -> None:
    sealed = sealed_bytes(b"hello world, more than one chunk")
    with pytest.raises(IntegrityError):
        opened(sealed, aad=b"archive-id/segments/000002.seg")
    with pytest.raises(IntegrityError):
        opened(sealed, key=bytes(32))


def test_plaintext_released_only_after_its_tag() -> None:
    data = b"A" * 16 + b"B" * 16 + b"C" * 16 + b"D" * 5
    header, fs = frames(sealed_bytes(data))
    bad = bytearray(fs[2])
    bad[10] ^= 1
    got: list[bytes] = []
    with pytest.raises(IntegrityError, match="chunk 2"):
        for chunk in open_chunks(KEY, AAD, [header + fs[0] + fs[1] + bytes(bad) + fs[3]]):
            got.append(chunk)
    assert got == [b"A" * 16, b"B" * 16]  # never any of the tampered chunk


def test_reader_streams_in_bounded_memory() -> None:
    # The reader pulls input lazily: after the first plaintext chunk it has
    # consumed only a little more than one frame, whatever the segment size.
    data = os.urandom(50 * 1024)
    sealed = b"".join(seal_chunks(KEY, AAD, [data], chunk_size=1024))
    pulled = 0

    def source() -> Iterator[bytes]:
        nonlocal pulled
        for i in range(0, len(sealed), 100):
            pulled += 100
            yield sealed[i : i + 100]

    it = open_chunks(KEY, AAD, source())
    assert next(it) == data[:1024]
    assert pulled <= HEADER_BYTES + 2 * (4 + 1024 + TAG_BYTES) + 100
    assert b"".join(it) == data[1024:]


def test_writer_streams_in_bounded_memory() -> None:
    produced = 0

    def source() -> Iterator[bytes]:
        nonlocal produced
        for _ in range(100):
            produced += 1000
            yield b"z" * 1000

    it = seal_chunks(KEY, AAD, source(), chunk_size=4096)
    next(it)  # header
    next(it)  # first chunk
    assert produced <= 2 * 4096 + 1000


def test_oversized_chunk_size_or_frame_is_refused_before_reading() -> None:
    sealed = sealed_bytes(b"x" * 40)
    header = bytearray(sealed[:HEADER_BYTES])
    header[5:9] = struct.pack(">I", MAX_CHUNK_SIZE + 1)
    with pytest.raises(IntegrityError, match="chunk size"):
        opened(bytes(header) + sealed[HEADER_BYTES:])
    huge = sealed[:HEADER_BYTES] + struct.pack(">I", 2**32 - 1)
    with pytest.raises(IntegrityError, match="length"):
        opened(huge)


def test_bad_chunk_size_argument() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        list(seal_chunks(KEY, AAD, [b"x"], chunk_size=0))


# ------------------------------------------------------------------- fuzzing

FUZZ_SEALED = sealed_bytes(b"0123456789" * 7, chunk_size=16)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_random_bytes_only_integrity_error(data: bytes) -> None:
    with pytest.raises(IntegrityError):
        opened(data)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, len(FUZZ_SEALED) - 1), st.integers(1, 255)),
        max_size=4,
    ),
    st.integers(0, len(FUZZ_SEALED)),
    st.binary(max_size=40),
)
def test_fuzz_mutations_only_integrity_error(
    flips: list[tuple[int, int]], cut: int, tail: bytes
) -> None:
    bad = bytearray(FUZZ_SEALED)
    for pos, xor in flips:
        bad[pos] ^= xor
    mutated = bytes(bad[:cut]) + tail
    if mutated == FUZZ_SEALED:
        assert opened(mutated) == b"0123456789" * 7
        return
    with pytest.raises(IntegrityError):
        opened(mutated)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2000), st.integers(1, 64))
def test_fuzz_round_trip(data: bytes, chunk_size: int) -> None:
    sealed = b"".join(seal_chunks(KEY, AAD, [data], chunk_size=chunk_size))
    assert opened(sealed) == data
