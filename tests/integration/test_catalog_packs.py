"""Catalog packs: every reader reads the whole chain, one object per entry, so
the writer packs each full run of entries into one object. A pack is used only
for a run whose entries are all listed, each entry in it is checked as if read
alone, and expire removes the packs of the entries it removes. File and S3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.archive import catalog
from agent.archive.access import verify_key_of
from agent.crypto.keyfiles import load_signing_key
from agent.errors import IntegrityError
from agent.restore.fetch_count import CountingStore
from connectors.base import ObjectStore


def _trusted(keys: dict[str, Path]) -> dict[str, Any]:
    vk = verify_key_of(load_signing_key(keys["signing.key"]))
    return {vk.key_id: vk}


def _write(store: ObjectStore, keys: dict[str, Path], n: int, pack_sizes: tuple[int, ...] = (4,),
           writer: catalog.CatalogWriter | None = None) -> catalog.CatalogWriter:
    if writer is None:
        writer = catalog.CatalogWriter(store, load_signing_key(keys["signing.key"]), "arch-1",
                                       "agent-1", None, pack_sizes=pack_sizes)
    for _ in range(n):
        kind = catalog.GENESIS if writer.tail is None else catalog.GAP
        writer.append(kind, {"i": 0 if writer.tail is None else writer.tail.seq + 1},
                      "2026-11-23T00:00:00+00:00")
    return writer


def _read(store: ObjectStore, keys: dict[str, Path], start: int | None = None) -> list[int]:
    return [e.seq for e in catalog.read_chain(store, _trusted(keys), start_seq=start)]


def test_full_runs_are_packed_and_read_in_one_object_each(store: ObjectStore, keys: dict[str, Path]) -> None:
    _write(store, keys, 10)
    assert catalog.list_pack_keys(store) == [catalog.pack_key(0, 3), catalog.pack_key(4, 7)]
    counting = CountingStore(store)
    try:
        assert _read(counting, keys) == list(range(10))
        # two packs and the two entries of the unfinished run, not ten entries
        assert counting.count.catalog_objects == 4
        # a start inside a pack: that run's later entries one by one, then packs
        assert _read(store, keys, start=5) == list(range(5, 10))
    finally:
        counting.close()


def test_a_restarted_writer_packs_with_the_entries_it_did_not_write(store: ObjectStore, keys: dict[str, Path]) -> None:
    first = _write(store, keys, 2)
    second = catalog.CatalogWriter(store, first.signer, "arch-1", "agent-1", first.tail, pack_sizes=(4,))
    _write(store, keys, 2, writer=second)
    assert catalog.list_pack_keys(store) == [catalog.pack_key(0, 3)]
    assert _read(store, keys) == [0, 1, 2, 3]


def test_without_packs_the_entries_are_read_one_by_one(store: ObjectStore, keys: dict[str, Path]) -> None:
    _write(store, keys, 9)
    for key in catalog.list_pack_keys(store):
        store.delete(key)
    assert _read(store, keys) == list(range(9))


@pytest.mark.parametrize("case", ["garbled", "edited entry", "entry swapped", "short"])
def test_a_tampered_pack_is_an_integrity_error(store: ObjectStore, keys: dict[str, Path], case: str) -> None:
    _write(store, keys, 8)
    key = catalog.pack_key(4, 7)
    raws = catalog.open_pack(store.get(key), key, 4)
    if case == "garbled":
        data = store.get(key)[:-7] + b"garbage"
    elif case == "edited entry":
        raws[1] = raws[1].replace(b'"i":5', b'"i":6')
        data = catalog.build_pack(raws)
    elif case == "entry swapped":  # validly signed, but not the entry of that seq
        data = catalog.build_pack([raws[1], raws[0], *raws[2:]])
    else:
        data = catalog.build_pack(raws[:3])
    store.delete(key)
    store.create(key, data)
    with pytest.raises(IntegrityError):
        _read(store, keys)


def test_a_pack_whose_first_entry_is_gone_is_not_used(store: ObjectStore, keys: dict[str, Path]) -> None:
    # expire removes the head entry by entry; the pack over it is then ignored
    _write(store, keys, 8)
    for seq in range(0, 2):
        store.delete(catalog.entry_key(seq))
    assert _read(store, keys) == list(range(2, 8))


def test_expire_removes_the_packs_of_the_entries_it_removes(store: ObjectStore, keys: dict[str, Path]) -> None:
    from agent.archive.retention import Expirer, ExpireReport

    _write(store, keys, 13)
    assert len(catalog.list_pack_keys(store)) == 3
    entries = list(catalog.read_chain(store, _trusted(keys)))
    expirer = Expirer.__new__(Expirer)  # only the deletion step, on this store
    expirer.store = store
    report = ExpireReport()
    expirer._delete_head(entries, 6, report)
    assert report.deleted_entries == 6
    # 0-3 fully removed, 4-7 partly: both go; 8-11 stays and is still used
    assert catalog.list_pack_keys(store) == [catalog.pack_key(8, 11)]
    counting = CountingStore(store)
    try:
        assert _read(counting, keys) == list(range(6, 13))
        assert counting.count.catalog_objects == 4  # 6, 7, the pack, 12
    finally:
        counting.close()


def test_verify_reads_the_single_objects_and_checks_each_pack_against_them(store: ObjectStore, keys: dict[str, Path]) -> None:
    import dataclasses

    writer = _write(store, keys, 9)
    entries = list(catalog.read_chain(store, _trusted(keys), packs=False))
    assert catalog.check_packs(store, entries) == 2
    # A validly signed entry 5 that is not the one in the catalog: readers taking
    # the pack would see a broken chain, verify names the pack.
    other = dataclasses.replace(entries[5], body={"i": 55}, signer="", digest="")
    key = catalog.pack_key(4, 7)
    raws = catalog.open_pack(store.get(key), key, 4)
    raws[1] = catalog.seal_entry(other, writer.signer)
    store.delete(key)
    store.create(key, catalog.build_pack(raws))
    with pytest.raises(IntegrityError, match=r"packs/.*entry 5 differs"):
        catalog.check_packs(store, entries)


def test_the_agents_archive_writer_packs_at_the_default_size(store: ObjectStore, keys: dict[str, Path]) -> None:
    from agent.archive.writer import ArchiveWriter

    signer = load_signing_key(keys["signing.key"])
    writer = ArchiveWriter(store, signer, verify_key_of(signer), "postgres:shop:cv", "agent-1")
    writer.open()  # the genesis entry
    for i in range(catalog.PACK_SIZES[0]):
        writer.append(catalog.GAP, {"i": i})
    assert catalog.list_pack_keys(store) == [catalog.pack_key(0, catalog.PACK_SIZES[0] - 1)]
    entries = list(catalog.read_chain(store, _trusted(keys)))
    assert [e.seq for e in entries] == list(range(catalog.PACK_SIZES[0] + 1))
    assert catalog.check_packs(store, entries) == 1


def test_two_pack_sizes_readers_take_the_largest(store: ObjectStore, keys: dict[str, Path]) -> None:
    _write(store, keys, 19, pack_sizes=(2, 8))
    packs = catalog.list_pack_keys(store)
    assert catalog.pack_key(0, 7) in packs and catalog.pack_key(8, 15) in packs
    assert catalog.pack_key(16, 17) in packs and len(packs) == 9 + 2
    counting = CountingStore(store)
    try:
        assert _read(counting, keys) == list(range(19))
        assert counting.count.catalog_objects == 4  # 0-7, 8-15, 16-17, 18
        # from inside a large pack: the small packs and singles after it
        assert _read(store, keys, start=3) == list(range(3, 19))
    finally:
        counting.close()
    assert catalog.check_packs(store, list(catalog.read_chain(store, _trusted(keys), packs=False))) == 11


def test_a_restarted_writer_builds_a_large_pack_from_the_small_ones(store: ObjectStore, keys: dict[str, Path]) -> None:
    first = _write(store, keys, 5, pack_sizes=(2, 8))
    second = catalog.CatalogWriter(store, first.signer, "arch-1", "agent-1", first.tail,
                                   pack_sizes=(2, 8))
    counting = CountingStore(store)
    try:
        second.store = counting
        _write(counting, keys, 3, writer=second)
        # entries 0-4 were written before the restart: packs 0-1 and 2-3, then entry 4
        assert counting.count.catalog_objects == 3
    finally:
        counting.close()
    entries = list(catalog.read_chain(store, _trusted(keys), packs=False))
    assert [e.seq for e in entries] == list(range(8))
    assert catalog.pack_key(0, 7) in catalog.list_pack_keys(store)
    assert catalog.check_packs(store, entries) == 5
