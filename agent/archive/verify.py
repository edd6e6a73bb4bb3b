"""`changevault verify`: the archive checked without (or with) the private key.

Without the key: every catalog entry signed by a trusted key and chained,
every listed object present with the digest the catalog signed, positions
continuous (no gap between what one segment ends with and what the next one
says it follows), the chain's head genesis or declared by a retention entry.
With `--decrypt`: every segment and index also opened, so a wrong key or a
tampered chunk is found now and not during a restore.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from agent.archive import catalog
from agent.archive.access import data_key_opener, open_store, trusted_keys
from agent.archive.reader import ArchiveReader, entry_position
from agent.archive.segment import open_object
from agent.errors import IntegrityError
from agent.settings import load_settings


@dataclass
class VerifyReport:
    entries: int = 0
    packs: int = 0
    segments: int = 0
    snapshots: int = 0
    bytes: int = 0
    decrypted: int = 0
    gaps: list[str] = field(default_factory=list)


def verify_archive(reader: ArchiveReader, decrypt: bool) -> VerifyReport:
    report = VerifyReport()
    # The single entry objects, each checked; then the packs against them.
    entries = list(catalog.read_chain(reader.store, reader.trusted, packs=False))
    if not entries:
        raise IntegrityError(f"{reader.store.url}: the archive has no catalog")
    report.packs = catalog.check_packs(reader.store, entries)
    report.entries = len(entries)
    _check_head(entries)
    first_kept = _first_kept(entries)
    highest: tuple[int, ...] | None = None
    for entry in entries:
        if entry.seq < first_kept:
            continue  # declared expired; its objects may already be gone
        if entry.kind == catalog.GAP:
            report.gaps.append(f"entry {entry.seq}: {entry.body.get('reason', 'positions lost')}")
        objects = []
        if entry.kind == catalog.SEGMENT:
            report.segments += 1
            objects = [
                (entry.body["object"], entry.body["digest"]),
                (entry.body["index_object"], entry.body["index_digest"]),
            ]
            after = entry_position(entry, "after")
            if after is not None and highest is not None and after.sort_key > highest:
                report.gaps.append(
                    f"entry {entry.seq}: segment follows position {after} but the archive "
                    "holds nothing between the previous segment and it"
                )
            last = entry_position(entry, "last_position")
            if last is not None and (highest is None or last.sort_key > highest):
                highest = last.sort_key
        elif entry.kind == catalog.SNAPSHOT_PART:
            objects = [(entry.body["object"], entry.body["digest"])]
        elif entry.kind == catalog.SNAPSHOT_END:
            report.snapshots += 1
            pos = entry_position(entry, "position")
            if pos is not None and (highest is None or pos.sort_key > highest):
                highest = pos.sort_key
        for key, digest in objects:
            data = reader.fetch(key, digest)
            report.bytes += len(data)
            if decrypt:
                assert reader.opener is not None
                # entries[0], not reader.archive_id: that would read the chain again
                for _chunk in open_object(data, reader.opener, entries[0].archive_id, key):
                    pass
                report.decrypted += 1
    return report


def _first_kept(entries: list[catalog.CatalogEntry]) -> int:
    """The first entry the newest retention entry promises to keep (0: all)."""
    kept = [int(e.body.get("first_kept_seq", 0)) for e in entries if e.kind == catalog.RETENTION]
    return max(kept, default=0)


def _check_head(entries: list[catalog.CatalogEntry]) -> None:
    head = entries[0]
    if head.seq == 0:
        return
    # An expire that stopped halfway leaves some declared-expired entries at
    # the head: they are allowed, just no longer checked for their objects.
    if head.seq > _first_kept(entries):
        raise IntegrityError(
            f"catalog starts at entry {head.seq}, but no retention entry declares "
            f"entries before it expired (removed?)"
        )


def verify_command(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    store = open_store(settings)
    opener = data_key_opener(settings, args.private_key) if args.decrypt else None
    reader = ArchiveReader(store, trusted_keys(settings), opener)
    report = verify_archive(reader, args.decrypt)
    if report.gaps:
        raise IntegrityError(f"gap in the archive: {report.gaps[0]} ({len(report.gaps)} gap(s))")
    print(
        f"archive {store.url}: ok: {report.entries} catalog entries"
        + (f" ({report.packs} packs checked)" if report.packs else "")
        + f", {report.segments} segments, "
        f"{report.snapshots} snapshots, {report.bytes} bytes checked"
        + (f", {report.decrypted} objects decrypted" if args.decrypt else ""),
        file=sys.stdout,
    )
    return 0
