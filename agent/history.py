"""`changevault events`: decrypted change events as JSON lines.

From the archive: without `--from`, a replayable history (the oldest retained
snapshot's rows as `r` events, then every change after it in commit order);
with `--from TIME`, the changes committed at or after TIME. With
`--from-kafka`, the per-table topics merged back into commit order using the
transactions topic.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from agent.archive import catalog
from agent.archive.access import data_key_opener, open_store, trusted_keys
from agent.archive.reader import (
    ArchiveReader,
    complete_snapshots,
    entry_position,
    segment_entries,
    snapshot_envelopes,
)
from agent.errors import IntegrityError, UsageError
from agent.settings import Settings, load_settings
from agent.timestamps import parse_user_time


def table_filter(raw: str | None) -> set[str] | None:
    """`--tables a,public.b` -> names matched against schema.table or table."""
    if raw is None:
        return None
    names = {t.strip() for t in raw.split(",") if t.strip()}
    if not names:
        raise UsageError("--tables: expected a comma-separated list of tables")
    return names


def _wanted(doc: dict[str, Any], tables: set[str] | None) -> bool:
    if tables is None:
        return True
    src = doc["source"]
    return src["table"] in tables or f"{src['schema']}.{src['table']}" in tables


def archive_events(
    reader: ArchiveReader,
    since: datetime | None,
    until: datetime | None,
    tables: set[str] | None,
) -> Iterator[bytes]:
    entries = reader.entries()
    segments = segment_entries(entries)
    if since is None:
        # A replayable history starts at a snapshot with no gap after it: the
        # oldest one taken after the last recorded gap.
        gaps = [e.seq for e in entries if e.kind == catalog.GAP]
        snaps = [s for s in complete_snapshots(entries) if not gaps or s.begin.seq > gaps[-1]]
        if not snaps:
            if gaps:
                raise IntegrityError(
                    f"gap in the archive (catalog entry {gaps[-1]}) and no complete snapshot "
                    "after it: no replayable history; use --from TIME for the changes"
                )
            raise UsageError("the archive holds no complete snapshot yet; use --from TIME")
        snap = snaps[0]
        for env in snapshot_envelopes(reader, snap):
            if _wanted(json.loads(env), tables):
                yield env
        start = snap.position.sort_key
        # Skip segments wholly before the snapshot, but keep the one before the
        # first later segment: a transaction that ends after the snapshot may
        # have begun there.
        first = next(
            (
                i
                for i, e in enumerate(segments)
                if (p := entry_position(e, "last_position")) is None or p.sort_key > start
            ),
            len(segments),
        )
        segments = segments[max(0, first - 1) :]
    else:
        start = None
    for tx in reader.transactions(segments):
        if start is not None and tx.position.sort_key <= start:
            continue
        commit = datetime.fromisoformat(tx.commit_ts)
        if since is not None and commit < since:
            continue
        if until is not None and commit > until:
            break
        for env in tx.events:
            if _wanted(json.loads(env), tables):
                yield env


def kafka_events(
    settings: Settings,
    private_key: Any,
    tables: set[str] | None,
    since: datetime | None,
    until: datetime | None,
) -> Iterator[bytes]:
    from agent.crypto.keyfiles import load_recipient_private
    from agent.crypto.messages import MessageOpener
    from connectors.kafka.consumer import read_topics
    from connectors.kafka.topic_names import transactions_topic

    assert settings.kafka is not None
    path = private_key or settings.encryption.private_key_file
    if path is None:
        raise UsageError("events --from-kafka needs --private-key FILE (archive.key)")
    opener = MessageOpener([load_recipient_private(path)], trusted_keys(settings))
    prefix = settings.kafka.topic_prefix
    tx_topic = transactions_topic(prefix)
    order: dict[str, int] = {}
    events: list[tuple[str, int, int, bytes]] = []
    topics = _topics(settings)
    for rec in read_topics(settings.kafka, [tx_topic, *topics]):
        if rec.value is None:
            continue  # tombstone
        plain = opener.open(rec.value, rec.topic, rec.key or b"")
        doc = json.loads(plain)
        if rec.topic == tx_topic:
            order.setdefault(doc["position"], len(order))
        else:
            # A key change was sent as delete of the old key (id ".../old")
            # then insert of the new one: same seq, the delete first.
            sub = 0 if doc["id"].endswith("/old") else 1
            events.append((doc["source"]["position"], doc["source"]["seq"], sub, plain))
    seen: set[str] = set()
    # Commit order is the transactions topic's order; events of a transaction
    # whose record is missing sort last rather than being dropped.
    events.sort(key=lambda e: (order.get(e[0], len(order)), e[1], e[2]))
    for _p, _s, _sub, plain in events:
        doc = json.loads(plain)
        if doc["id"] in seen or not _wanted(doc, tables):
            continue
        commit = datetime.fromisoformat(doc["source"]["commit_ts"])
        if (since is not None and commit < since) or (until is not None and commit > until):
            continue
        seen.add(doc["id"])
        yield plain


def _topics(settings: Settings) -> list[str]:
    from connectors.kafka.admin import TopicAdmin

    assert settings.kafka is not None
    prefix = settings.kafka.topic_prefix + "."
    admin = TopicAdmin(settings.kafka)
    try:
        names = admin.list_topics()
    finally:
        admin.close()
    return sorted(n for n in names if n.startswith(prefix) and not n.endswith(".transactions"))


def events_command(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    since = parse_user_time(args.from_time, "--from") if args.from_time else None
    until = parse_user_time(args.to_time, "--to") if args.to_time else None
    tables = table_filter(args.tables)
    out = sys.stdout.buffer
    if args.from_kafka:
        if settings.kafka is None:
            raise UsageError(f"{settings.origin}: --from-kafka needs a kafka section")
        stream = kafka_events(settings, args.private_key, tables, since, until)
    else:
        reader = ArchiveReader(
            open_store(settings),
            trusted_keys(settings),
            data_key_opener(settings, args.private_key),
        )
        stream = archive_events(reader, since, until, tables)
    for env in stream:
        out.write(env + b"\n")
    out.flush()
    return 0
