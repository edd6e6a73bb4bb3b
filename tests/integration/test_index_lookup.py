"""Index lookups by range reads: exact answers, a few KiB read, tampering caught."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

import pytest

from agent.archive.access import verify_key_of
from agent.archive.index_lookup import IndexReader
from agent.archive.segment import seal_object
from agent.archive.sink import INDEX_CHUNK_BYTES
from agent.crypto.datakeys import DataKeyManager, DataKeyOpener
from agent.crypto.keyfiles import (
    generate_key_files,
    load_recipient_private,
    load_recipient_public,
    load_signing_key,
)
from agent.errors import IntegrityError
from agent.restore.fetch_count import CountingStore
from connectors.base import ObjectStore
from connectors.storage.factory import open_object_store

ARCHIVE = "archive-1"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_key_files(tmp_path_factory.mktemp("keys"))


def _opener(keys: dict[str, Path]) -> DataKeyOpener:
    vk = verify_key_of(load_signing_key(keys["signing.key"]))
    return DataKeyOpener([load_recipient_private(keys["archive.key"])], {vk.key_id: vk})


def _put_index(store: ObjectStore, keys: dict[str, Path], key: str, hashes: list[bytes],
               chunk_size: int = INDEX_CHUNK_BYTES) -> tuple[int, str]:
    signer = load_signing_key(keys["signing.key"])
    dk = DataKeyManager([load_recipient_public(keys["archive.pub"])], signer, "agent-1").current()
    blob = seal_object(dk, ARCHIVE, key, {"kind": "index"}, [b"".join(sorted(hashes))],
                       chunk_size=chunk_size)
    store.create(key, blob)
    return len(blob), hashlib.sha256(blob).hexdigest()


def test_lookups_are_exact_and_read_a_few_chunks(tmp_path: Path, keys: dict[str, Path]) -> None:
    store = CountingStore(open_object_store((tmp_path / "a").as_uri()))
    hashes = [secrets.token_bytes(8) for _ in range(20_000)]
    size, digest = _put_index(store, keys, "segments/x.idx", hashes)
    reader = IndexReader(store, _opener(keys), ARCHIVE)
    absent = [secrets.token_bytes(8) for _ in range(50)]
    for h in [*hashes[:: 997], *hashes[-3:], min(hashes), max(hashes)]:
        assert reader.present("segments/x.idx", size, digest, [h]) == {h}
    for h in absent:
        assert reader.present("segments/x.idx", size, digest, [h]) == set()
    assert reader.range_lookups == 1 and reader.whole_fetches == 0
    fresh = IndexReader(store, _opener(keys), ARCHIVE)
    before = store.count.bytes
    assert fresh.present("segments/x.idx", size, digest, [hashes[12345]]) == {hashes[12345]}
    one_lookup = store.count.bytes - before
    assert one_lookup < 4 * 1024 < size // 30  # header + one or two chunks of a 160 KB index


def test_many_wanted_hashes_fetch_the_whole_index(tmp_path: Path, keys: dict[str, Path]) -> None:
    store = open_object_store((tmp_path / "a").as_uri())
    hashes = [secrets.token_bytes(8) for _ in range(5_000)]
    size, digest = _put_index(store, keys, "segments/y.idx", hashes)
    reader = IndexReader(store, _opener(keys), ARCHIVE)
    wanted = set(hashes[:200]) | {secrets.token_bytes(8) for _ in range(200)}
    assert reader.present("segments/y.idx", size, digest, wanted) == set(hashes[:200])
    assert reader.whole_fetches == 1


def test_an_index_sealed_in_large_chunks_is_fetched_whole(tmp_path: Path, keys: dict[str, Path]) -> None:
    store = open_object_store((tmp_path / "a").as_uri())
    hashes = [secrets.token_bytes(8) for _ in range(5_000)]
    size, digest = _put_index(store, keys, "segments/z.idx", hashes, chunk_size=64 * 1024)
    reader = IndexReader(store, _opener(keys), ARCHIVE)
    assert reader.present("segments/z.idx", size, digest, [hashes[7]]) == {hashes[7]}
    assert reader.whole_fetches == 1 and reader.range_lookups == 0


@pytest.mark.parametrize("case", ["flip", "moved", "truncated"])
def test_tampering_fails_the_chunk_tag(tmp_path: Path, keys: dict[str, Path], case: str) -> None:
    store = open_object_store((tmp_path / "a").as_uri())
    hashes = [secrets.token_bytes(8) for _ in range(20_000)]
    size, digest = _put_index(store, keys, "segments/x.idx", hashes)
    data = store.get("segments/x.idx")
    store.delete("segments/x.idx")
    key = "segments/x.idx"
    if case == "flip":  # every chunk's byte flipped: whichever the lookup reads fails
        store.create(key, bytes(b ^ 1 if i > 400 and i % 97 == 0 else b for i, b in enumerate(data)))
    elif case == "moved":  # the same object under another key: the AAD binds the key
        key = "segments/other.idx"
        store.create(key, data)
    else:  # cut short: the catalog's size no longer matches what is stored
        store.create(key, data[:-2000])
    reader = IndexReader(store, _opener(keys), ARCHIVE)
    with pytest.raises(IntegrityError):
        for h in [max(hashes), *hashes[::500]]:  # the largest sits in the (cut) last chunk
            reader.present(key, size, digest, [h])
