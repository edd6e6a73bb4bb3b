"""`changevault restore`: rebuild the captured tables as they were at a target.

Order matters for safety: the whole plan is read, verified and folded
(signatures, digests, decryption) before the target is touched, so a
tampered archive or a wrong key exits 4 with nothing written. The load is
one transaction on the target; verification reads the tables back afterwards
and compares checksums with what the archive implies.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.archive.access import data_key_opener, open_store, trusted_keys
from agent.archive.catalog import CatalogEntry
from agent.archive.reader import ArchiveReader, entry_position, segment_entries
from agent.crypto.keyfiles import SigningKey, load_keyhash_key, load_signing_key
from agent.crypto.keyhash import KeyHasher
from agent.errors import IntegrityError, UsageError
from agent.events import Position, TableSchema
from agent.restore.audit import audit_body, write_audit
from agent.restore.candidates import Candidates
from agent.restore.checksum import TableChecksum, checksum_of
from agent.restore.entity import EntityRoot, Link, links_of, parse_entity, scope_tables
from agent.restore.fetch_count import CountingStore
from agent.restore.fold import Fold, FoldStore, replay
from agent.restore.inplace import apply_in_place, compare, key_of, preview_lines
from agent.restore.membership import entity_members
from agent.restore.names import parse_table_list
from agent.restore.planner import Plan, make_plan
from agent.restore.report import RestoreReport, TableResult, redact_dsn
from agent.restore.segment_choice import SegmentChoice, SegmentChooser
from agent.restore.shapes import Shapes, TableShape
from agent.restore.target import Target, before_tx_target, position_target, time_target
from agent.settings import Settings, load_settings
from connectors.base import Applier, ObjectStore

log = logging.getLogger(__name__)

ApplierFactory = Callable[[str], Applier]


@dataclass(frozen=True, slots=True)
class RestoreOptions:
    target_dsn: str
    to_time: str | None = None
    to_position: str | None = None
    before_tx: str | None = None
    target_schema: str | None = None
    tables: str | None = None
    entity: str | None = None
    preview: bool = False
    in_place: bool = False
    yes: bool = False
    private_key: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RestoreOptions:
        return cls(
            target_dsn=args.target_dsn,
            to_time=args.to_time,
            to_position=args.to_position,
            before_tx=args.before_tx,
            target_schema=args.target_schema,
            tables=args.tables,
            entity=args.entity,
            preview=args.preview,
            in_place=args.in_place,
            yes=args.yes,
            private_key=args.private_key,
        )


def _default_schema() -> str:
    return f"changevault_restore_{datetime.now(UTC):%Y%m%d%H%M%S}"


def _signer(settings: Settings) -> SigningKey:
    path = settings.encryption.signing_key_file
    if path is None:
        raise UsageError(
            f"{settings.origin}: encryption.signing_key_file: expected the signing key that "
            "signs restore's audit record, found none"
        )
    return load_signing_key(path)


def _target(opts: RestoreOptions, reader: ArchiveReader, connector: str) -> Target:
    if opts.to_time is not None:
        return time_target(opts.to_time)
    if opts.to_position is not None:
        return position_target(opts.to_position, connector)
    if opts.before_tx is not None:
        return before_tx_target(reader, opts.before_tx.strip())
    raise UsageError("restore: expected one of --to, --to-position, --before-tx")


def _scope(shapes: Shapes, raw: str | None) -> set[str] | None:
    if raw is None:
        return None
    return parse_table_list(raw, [s.schema for s in shapes.by_name.values()])


def _row_values(shape: TableShape) -> Callable[[dict[str, Any]], list[Any]]:
    """A function picking a folded row's values in the shape's column order.

    A renamed column is looked up under each name it had (old rows keep the
    names they were decoded with); the common case, no renames, is one
    dict lookup per column.
    """
    names = [shape.names_of(c.name) for c in shape.schema.columns]
    if all(len(n) == 1 for n in names):
        plain = [n[0] for n in names]
        return lambda row: [row.get(c) for c in plain]

    def values(row: dict[str, Any]) -> list[Any]:
        out = []
        for aliases in names:
            value = None
            for name in aliases:
                if name in row:
                    value = row[name]
                    break
            out.append(value)
        return out

    return values


def default_applier(dsn: str) -> Applier:
    """The applier for a target DSN (the one place that picks it), by its URL scheme."""
    scheme = dsn.split("://", 1)[0].lower() if "://" in dsn else ""
    if scheme in ("mysql", "mariadb"):
        from connectors.mysql.applier import MySQLApplier

        return MySQLApplier(dsn)
    from connectors.postgres.applier import PgApplier

    return PgApplier(dsn)


def _check_target_kind(settings: Settings, dsn: str) -> None:
    """Rows captured from one database kind are restored into the same kind."""
    scheme = dsn.split("://", 1)[0].lower() if "://" in dsn else "postgresql"
    target = "mysql" if scheme in ("mysql", "mariadb") else "postgres"
    if target != settings.source.type:
        raise UsageError(
            f"--target-dsn: this archive was captured from {settings.source.type}; "
            f"expected a {settings.source.type} target, found a {target} DSN"
        )


def _check_flags(opts: RestoreOptions) -> None:
    if opts.in_place and not opts.yes and not opts.preview:
        raise UsageError(
            "--in-place writes into the source-named tables: expected --yes to confirm "
            "(or --preview to see the differences), found neither"
        )
    if opts.in_place and opts.target_schema is not None:
        raise UsageError("--in-place writes into the source-named tables: drop --target-schema")


def _archive_bytes(entries: list[CatalogEntry], plan: Plan) -> int:
    total = sum(
        int(e.body.get("size", 0)) + int(e.body.get("index_size", 0))
        for e in segment_entries(entries)
    )
    return total + sum(int(p.body.get("size", 0)) for p in plan.snapshot.parts)


@dataclass
class _Scope:
    tables: set[str] | None  # None: every captured table
    entity: EntityRoot | None = None
    links: list[Link] | None = None
    order: list[str] | None = None


def _entity_scope(settings: Settings, shapes: Shapes, raw: str, wanted: set[str] | None) -> _Scope:
    tables = {name: s.schema for name, s in shapes.by_name.items()}
    root = parse_entity(raw, tables)
    links = links_of(tables, settings.entity_links)
    order = scope_tables(root.table, links)
    if wanted is not None:
        order = [t for t in order if t in wanted or t == root.table]
    for name in order:
        if not tables[name].primary_key:
            raise UsageError(f"--entity: {name} has no primary key in the archive's definition")
    return _Scope(set(order), root, links, order)


def run_restore(
    settings: Settings,
    opts: RestoreOptions,
    applier_factory: ApplierFactory | None = None,
) -> RestoreReport:
    _check_flags(opts)
    _check_target_kind(settings, opts.target_dsn)
    writes = not opts.preview
    signer = _signer(settings) if writes else None
    store = CountingStore(open_store(settings))
    reader = ArchiveReader(
        store, trusted_keys(settings), data_key_opener(settings, opts.private_key)
    )
    entries = reader.entries()
    target = _target(opts, reader, settings.source.type)
    plan = make_plan(entries, target)
    schema_name = opts.target_schema or _default_schema()
    shapes = Shapes(plan.snapshot.tables)
    scope = _Scope(_scope(shapes, opts.tables))
    if opts.entity is not None:
        scope = _entity_scope(settings, shapes, opts.entity, scope.tables)
    wanted = scope.tables
    fold_store = FoldStore()
    try:
        fold = Fold(fold_store, shapes, wanted, exact_json=settings.source.type == "postgres")
        segments = plan.segments
        catalog_end = None
        if scope.entity is None:
            fold.load_snapshot(reader, plan)
        else:
            store.keep(".seg")  # the chooser's reads serve the fold and replay too
            catalog_end = _catalog_end(plan, target)
            choice, candidates = _entity_segments(
                settings, reader, shapes, scope, plan, catalog_end is None
            )
            segments = choice.segments
            # Only rows that may be members are folded.
            fold.only_keys = {t: set(candidates.found.get(t, ())) for t in scope.order or ()}
            fold.load_snapshot(reader, plan, choice.parts)
        stop = replay(
            reader,
            dataclasses.replace(plan, segments=segments),
            target,
            fold,
            sparse=scope.entity is not None,
        )
        if (
            catalog_end is not None
            and stop.next_txid is None
            and stop.position.sort_key < catalog_end.position.sort_key
        ):
            # The plan's last transactions touch nothing in scope: the catalog names them.
            stop.position, stop.commit_ts = catalog_end.position, catalog_end.commit_ts
            stop.txid = catalog_end.txid
        # Everything the restore needs is now read, verified and folded: only now
        # is the target touched.
        in_scope = [s for name, s in shapes.by_name.items() if wanted is None or name in wanted]
        if not opts.in_place:
            _refuse_name_clash(in_scope)
        report = RestoreReport(
            target=target.description,
            position=stop.position.text,
            commit_ts=stop.commit_ts,
            txid=stop.txid,
            snapshot_id=plan.snapshot.snapshot_id,
            snapshot_position=plan.snapshot.position.text,
            segments_read=len(segments),
            segments_total=plan.total_segments,
            transactions=stop.transactions,
            target_schema="(source-named tables)" if opts.in_place else schema_name,
            target_dsn=redact_dsn(opts.target_dsn),
            skipped_tables=sorted(fold.stats.skipped_tables),
            bytes_read=store.count.bytes,
            objects_read=store.count.objects,
            catalog_bytes=store.count.catalog_bytes,
            archive_bytes=_archive_bytes(entries, plan),
            scope_tables=scope.order or [],
        )
        rows_of = _rows_source(fold_store, shapes, scope)
        applier = (applier_factory or default_applier)(opts.target_dsn)
        try:
            if opts.preview or opts.in_place:
                lines = _compare_and_apply(
                    applier, opts, schema_name, in_scope, rows_of, scope, report
                )
            else:
                _load_new(applier, schema_name, in_scope, rows_of, scope, report)
                lines = []
        finally:
            applier.close()
    finally:
        fold_store.close()
        store.close()
    if opts.preview:
        for line in [*report.lines(), *lines]:
            print(line, file=sys.stdout)
        return report
    assert signer is not None
    _print_and_audit(settings, opts, store, reader, entries, signer, report, scope)
    return report


@dataclass(frozen=True)
class _CatalogEnd:
    """The last transaction of the plan, as the catalog records it."""

    position: Position
    commit_ts: str
    txid: str


def _catalog_end(plan: Plan, target: Target) -> _CatalogEnd | None:
    """Where the replay stops, if the target admits the whole last segment of the plan.

    Position targets only: commit times may be slightly out of commit order,
    so for a time target the last segment is read to find the exact boundary.
    """
    if not plan.segments or target.time is not None:
        return None
    last = plan.segments[-1].body
    position = entry_position(plan.segments[-1], "last_position")
    txid, commit_ts = last.get("last_txid"), last.get("last_commit_ts")
    if position is None or not isinstance(txid, str) or not isinstance(commit_ts, str):
        return None
    when = datetime.fromisoformat(commit_ts)
    if not target.admits(position, when):
        return None
    return _CatalogEnd(position, when.isoformat(), txid)


def _entity_segments(
    settings: Settings,
    reader: ArchiveReader,
    shapes: Shapes,
    scope: _Scope,
    plan: Plan,
    read_last: bool,
) -> tuple[SegmentChoice, Candidates]:
    assert scope.entity is not None and scope.links is not None and scope.order is not None
    path = settings.encryption.keyhash_key_file
    if path is None:
        raise UsageError(
            f"{settings.origin}: encryption.keyhash_key_file: expected the key the archive's "
            "indexes are hashed with (needed by --entity), found none"
        )
    hasher = KeyHasher(load_keyhash_key(path))
    candidates = Candidates(shapes, scope.entity, scope.links, scope.order)
    chooser = SegmentChooser(reader, hasher, candidates, scope.links, scope.order, read_last)
    in_scope = set(scope.order)
    parts = [p for p in plan.snapshot.parts if p.body["table"] in in_scope]
    return chooser.choose(plan.segments, parts), candidates


RowsOf = Callable[[TableShape], Iterator[list[object]]]


def _rows_source(fold_store: FoldStore, shapes: Shapes, scope: _Scope) -> RowsOf:
    """The restored rows of a table: every folded row, or the entity's members."""
    members = None
    if scope.entity is not None:
        assert scope.links is not None and scope.order is not None
        members = entity_members(fold_store, shapes, scope.entity, scope.links, scope.order)

    def rows(shape: TableShape) -> Iterator[list[object]]:
        pick = _row_values(shape)
        if members is not None:
            for row in members.get(shape.name, {}).values():
                yield pick(row)
            return
        for row in fold_store.rows(fold_store.table_id(shape.name)):
            yield pick(row)

    return rows


def _load_new(
    applier: Applier,
    schema_name: str,
    in_scope: list[TableShape],
    rows_of: RowsOf,
    scope: _Scope,
    report: RestoreReport,
) -> None:
    expected: dict[str, TableChecksum] = {}
    by_name = {s.name: s for s in in_scope}

    def rows(table: TableSchema) -> Iterator[list[object]]:
        sums = expected[table.qualified] = TableChecksum()
        for values in rows_of(by_name[table.qualified]):
            sums.add(values)
            yield values

    tables = [s.schema for s in in_scope]
    counts = applier.load_new(schema_name, tables, rows, foreign_keys=scope.tables is None)
    for table in tables:
        actual = checksum_of(applier.read_back(schema_name, table))
        report.tables.append(
            TableResult(
                table.qualified,
                f"{schema_name}.{table.table}",
                counts[table.qualified],
                expected[table.qualified],
                actual,
            )
        )


def _compare_and_apply(
    applier: Applier,
    opts: RestoreOptions,
    schema_name: str,
    in_scope: list[TableShape],
    rows_of: RowsOf,
    scope: _Scope,
    report: RestoreReport,
) -> list[str]:
    """Preview (nothing written) or in place (one transaction); the per-table lines."""
    tables = [s.schema for s in in_scope]
    for t in tables:
        if not t.primary_key:
            raise UsageError(f"{t.qualified}: a row-by-row comparison needs a primary key")
    wanted = {s.name: {key_of(s.schema, v): v for v in rows_of(s)} for s in in_scope}
    entity = (scope.entity, scope.links or []) if scope.entity is not None else None
    target_schema = None if opts.in_place else schema_name
    applier.begin()
    committed = False
    try:
        diffs = compare(applier, target_schema, tables, wanted, entity, lock=not opts.preview)
        if opts.preview:
            return ["preview: nothing written", *preview_lines(diffs)]
        apply_in_place(applier, diffs)
        applier.finish(commit=True)
        committed = True
    finally:
        if not committed:
            applier.finish(commit=False)
    for d in diffs:
        c = d.changes
        report.tables.append(
            TableResult(
                d.table.qualified,
                f"{d.schema}.{d.table.table}",
                len(d.wanted),
                d.expected,
                d.actual,
            )
        )
        report.notes.append(
            f"  {d.table.qualified}: {len(c.inserts)} inserted, {len(c.updates)} updated, "
            f"{len(c.deletes)} deleted, {d.unchanged} untouched"
            + (f"; triggers fired: {', '.join(d.triggers)}" if d.triggers else "")
        )
    return []


def _print_and_audit(
    settings: Settings,
    opts: RestoreOptions,
    store: ObjectStore,
    reader: ArchiveReader,
    entries: list[CatalogEntry],
    signer: SigningKey,
    report: RestoreReport,
    scope: _Scope,
) -> None:
    bad = [t for t in report.tables if not t.ok]
    result = "ok" if not bad else "checksum mismatch: " + ", ".join(t.source for t in bad)
    audit_scope: dict[str, Any] = {
        "mode": "in-place" if opts.in_place else "new-schema",
        "tables": sorted(scope.tables) if scope.tables else "all",
    }
    if scope.entity is not None:
        audit_scope["entity"] = scope.entity.label
    audit = write_audit(
        store,
        signer,
        reader.archive_id,
        entries[-1].digest,
        _source_id(settings),
        audit_body(
            target_dsn=report.target_dsn,
            target_schema=report.target_schema,
            scope=audit_scope,
            target=report.target,
            position=report.position,
            commit_ts=report.commit_ts,
            snapshot_id=report.snapshot_id,
            result=result,
        ),
    )
    report_audit = f"  audit: {audit.object_key}" + (
        f" (catalog entry {audit.catalog_seq})"
        if audit.catalog_seq is not None
        else " (agent running: catalog entry not appended)"
    )
    for line in [*report.lines(), report_audit]:
        print(line, file=sys.stdout)
    if bad:
        first = bad[0]
        raise IntegrityError(
            f"restored table {first.target}: checksum read back from the target "
            f"({first.actual.rows if first.actual else 0} rows, "
            f"{first.actual.hex() if first.actual else '-'}) does not match the archive "
            f"({first.expected.rows} rows, {first.expected.hex()}); schema "
            f"{report.target_schema} is left for inspection"
        )


def _source_id(settings: Settings) -> str:
    from agent.app import source_id

    return source_id(settings)


def _refuse_name_clash(shapes: list[TableShape]) -> None:
    seen: dict[str, str] = {}
    for s in shapes:
        other = seen.get(s.schema.table)
        if other is not None:
            raise UsageError(
                f"--target-schema: {other} and {s.name} would both become table "
                f"{s.schema.table}; restore them separately with --tables"
            )
        seen[s.schema.table] = s.name


def restore_command(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    run_restore(settings, RestoreOptions.from_args(args))
    return 0
