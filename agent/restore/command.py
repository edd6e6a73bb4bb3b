"""`changevault restore`: rebuild the captured tables as they were at a target.

Order matters for safety: the whole plan is read, verified and folded
(signatures, digests, decryption) before the target is touched, so a
tampered archive or a wrong key exits 4 with nothing written. The load is
one transaction on the target; verification reads the tables back afterwards
and compares checksums with what the archive implies.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.archive.access import data_key_opener, open_store, trusted_keys
from agent.archive.reader import ArchiveReader
from agent.crypto.keyfiles import SigningKey, load_signing_key
from agent.errors import IntegrityError, NotYetAvailable, UsageError
from agent.events import TableSchema
from agent.restore.audit import audit_body, write_audit
from agent.restore.checksum import TableChecksum, checksum_of
from agent.restore.fold import Fold, FoldStore, replay
from agent.restore.planner import make_plan
from agent.restore.report import RestoreReport, TableResult, redact_dsn
from agent.restore.shapes import Shapes, TableShape
from agent.restore.target import Target, before_tx_target, position_target, time_target
from agent.settings import Settings, load_settings
from connectors.base import Applier

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


def _refuse_unavailable(opts: RestoreOptions) -> None:
    for flag, used in (("--entity", opts.entity), ("--preview", opts.preview),
                       ("--in-place", opts.in_place)):  # fmt: skip
        if used:
            raise NotYetAvailable(f"restore {flag}: not available in this version yet")


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
    wanted: set[str] = set()
    for name in (t.strip() for t in raw.split(",")):
        if not name:
            continue
        matches = [q for q in shapes.by_name if q == name or q.split(".", 1)[1] == name]
        if len(matches) != 1:
            known = ", ".join(sorted(shapes.by_name))
            raise UsageError(
                f"--tables: expected one captured table named {name!r}, found "
                f"{len(matches)} (captured: {known})"
            )
        wanted.add(matches[0])
    if not wanted:
        raise UsageError("--tables: expected a comma-separated list of tables")
    return wanted


def _row_values(shape: TableShape, row: dict[str, Any]) -> list[Any]:
    out = []
    for column in shape.schema.columns:
        value = None
        for name in shape.names_of(column.name):
            if name in row:
                value = row[name]
                break
        out.append(value)
    return out


def run_restore(
    settings: Settings,
    opts: RestoreOptions,
    applier_factory: ApplierFactory | None = None,
) -> RestoreReport:
    _refuse_unavailable(opts)
    if settings.source.type != "postgres":
        raise NotYetAvailable(
            "restore: MySQL/MariaDB targets are not available in this version yet"
        )
    signer = _signer(settings)
    store = open_store(settings)
    reader = ArchiveReader(
        store, trusted_keys(settings), data_key_opener(settings, opts.private_key)
    )
    entries = reader.entries()
    target = _target(opts, reader, settings.source.type)
    plan = make_plan(entries, target)
    schema_name = opts.target_schema or _default_schema()
    shapes = Shapes(plan.snapshot.tables)
    wanted = _scope(shapes, opts.tables)
    fold_store = FoldStore()
    try:
        fold = Fold(fold_store, shapes, wanted)
        fold.load_snapshot(reader, plan)
        stop = replay(reader, plan, target, fold)
        # Everything the restore needs is now read, verified and folded: only now
        # is the target touched.
        in_scope = [s for name, s in shapes.by_name.items() if wanted is None or name in wanted]
        _refuse_name_clash(in_scope)
        report = RestoreReport(
            target=target.description,
            position=stop.position.text,
            commit_ts=stop.commit_ts,
            txid=stop.txid,
            snapshot_id=plan.snapshot.snapshot_id,
            snapshot_position=plan.snapshot.position.text,
            segments_read=len(plan.segments),
            segments_total=plan.total_segments,
            transactions=stop.transactions,
            target_schema=schema_name,
            target_dsn=redact_dsn(opts.target_dsn),
            skipped_tables=sorted(fold.stats.skipped_tables),
        )
        expected: dict[str, TableChecksum] = {}
        by_name = {s.name: s for s in in_scope}

        def rows(table: TableSchema) -> Iterator[list[object]]:
            shape = by_name[table.qualified]
            sums = expected[table.qualified] = TableChecksum()
            for row in fold_store.rows(fold_store.table_id(shape.name)):
                values = _row_values(shape, row)
                sums.add(values)
                yield values

        from connectors.postgres.applier import PgApplier

        applier = (applier_factory or PgApplier)(opts.target_dsn)
        try:
            tables = [s.schema for s in in_scope]
            counts = applier.load_new(schema_name, tables, rows, foreign_keys=wanted is None)
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
        finally:
            applier.close()
    finally:
        fold_store.close()
    bad = [t for t in report.tables if not t.ok]
    result = "ok" if not bad else "checksum mismatch: " + ", ".join(t.source for t in bad)
    audit = write_audit(
        store,
        signer,
        reader.archive_id,
        entries[-1].digest,
        _source_id(settings),
        audit_body(
            target_dsn=report.target_dsn,
            target_schema=schema_name,
            scope={"mode": "new-schema", "tables": sorted(wanted) if wanted else "all"},
            target=target.description,
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
            f"({first.expected.rows} rows, {first.expected.hex()}); schema {schema_name} "
            "is left for inspection"
        )
    return report


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
