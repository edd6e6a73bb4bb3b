"""Replication slot and publication management.

The rule that shapes this module: a table without a primary key (and without
REPLICA IDENTITY USING INDEX or FULL) must never enter a publication that
publishes updates and deletes — PostgreSQL would then refuse every UPDATE and
DELETE on it in production. So tables are checked before anything is created,
and a FOR ALL TABLES publication is refused while any such table exists.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from agent.checkpoint import write_atomically
from agent.errors import PositionLostError, ServiceError, UsageError
from agent.settings import parse_table_name

log = logging.getLogger(__name__)

# Marks a publication as ours, so teardown never drops one a DBA made.
PUBLICATION_MARKER = "created by changevault"
_CREATED_FILE = "postgres-created.json"

Conn = psycopg.Connection[Any]
# The schema of a `source.tables` entry written without one.
DEFAULT_SCHEMA = "public"


@dataclass(frozen=True, slots=True)
class TableRef:
    """A captured table as the catalogs describe it now."""

    schema: str
    name: str
    relid: int
    relkind: str  # "r" table, "p" partitioned table
    replica_identity: str  # relreplident: d default, f full, i index, n nothing
    has_primary_key: bool
    has_identity_index: bool

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def identity_ok(self) -> bool:
        """UPDATE/DELETE keep working when the table is published."""
        if self.relkind == "p":
            return True  # the leaf partitions are checked one by one
        if self.replica_identity == "f":
            return True
        if self.replica_identity == "i":
            return self.has_identity_index
        return self.replica_identity == "d" and self.has_primary_key

    def identity_text(self) -> str:
        if self.relkind == "p":
            return "partitioned table (each partition is checked)"
        if self.replica_identity == "f":
            return "REPLICA IDENTITY FULL: updates and deletes carry the whole old row"
        if self.replica_identity == "i":
            return "REPLICA IDENTITY USING INDEX: before-images carry the index columns"
        if self.replica_identity == "n":
            return "REPLICA IDENTITY NOTHING: UPDATE and DELETE would fail once published"
        if self.has_primary_key:
            return (
                "REPLICA IDENTITY DEFAULT: before-images carry only the primary key "
                "(ALTER TABLE ... REPLICA IDENTITY FULL for whole old rows)"
            )
        return "no primary key and REPLICA IDENTITY DEFAULT: UPDATE and DELETE would fail"


@dataclass(frozen=True, slots=True)
class SlotInfo:
    name: str
    plugin: str | None
    database: str | None
    temporary: bool
    active_pid: int | None
    wal_status: str | None
    confirmed_flush_lsn: str | None
    restart_lsn: str | None


_TABLE_COLUMNS = sql.SQL(
    "SELECT n.nspname, c.relname, c.oid::int8, c.relkind::text, c.relreplident::text,"
    " EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),"
    " EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
)


def _ref(row: tuple[Any, ...]) -> TableRef:
    return TableRef(row[0], row[1], int(row[2]), row[3], row[4], bool(row[5]), bool(row[6]))


def user_tables(conn: Conn) -> list[TableRef]:
    """Every permanent user table (FOR ALL TABLES publishes all of them)."""
    query = _TABLE_COLUMNS + sql.SQL(
        " WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p'"
        " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1, 2"
    )
    return [_ref(r) for r in conn.execute(query).fetchall()]


def resolve_tables(conn: Conn, names: list[str]) -> list[TableRef]:
    """The configured `schema.table` names as catalog entries; unknown names are exit 2.

    Names are compared exactly (see `parse_table_name`: no case folding, no
    search_path); a name without a schema means `public`.
    """
    refs = []
    for name in names:
        try:
            schema, table = parse_table_name(name)
        except ValueError as exc:
            raise UsageError(f"source.tables: {exc}") from None
        row = conn.execute(
            _TABLE_COLUMNS
            + sql.SQL(" WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')"),
            (schema or DEFAULT_SCHEMA, table),
        ).fetchone()
        if row is None:
            raise UsageError(
                f"source.tables: expected an existing table, found no table {name!r} "
                f"(schema {schema or DEFAULT_SCHEMA!r}, table {table!r}; names are case-sensitive)"
            )
        refs.append(_ref(row))
    return refs


def leaf_partitions(conn: Conn, table: TableRef) -> list[TableRef]:
    query = _TABLE_COLUMNS + sql.SQL(
        " JOIN pg_partition_tree(%s::oid) t ON t.relid = c.oid WHERE t.isleaf"
    )
    return [_ref(r) for r in conn.execute(query, (table.relid,)).fetchall()]


def publication_tables(conn: Conn, publication: str) -> list[TableRef]:
    """Tables the publication sends, as pgoutput names them (roots when via root)."""
    query = _TABLE_COLUMNS + sql.SQL(
        " JOIN pg_publication_tables p ON p.schemaname = n.nspname AND p.tablename = c.relname"
        " WHERE p.pubname = %s ORDER BY 1, 2"
    )
    return [_ref(r) for r in conn.execute(query, (publication,)).fetchall()]


def unsafe_tables(conn: Conn, tables: list[TableRef]) -> list[TableRef]:
    """The tables (or leaf partitions) whose UPDATE/DELETE would fail once published."""
    bad: list[TableRef] = []
    for table in tables:
        candidates = leaf_partitions(conn, table) if table.relkind == "p" else [table]
        bad.extend(t for t in candidates if not t.identity_ok)
    return bad


def refuse_unsafe(conn: Conn, tables: list[TableRef], all_tables: bool) -> None:
    bad = unsafe_tables(conn, tables)
    if not bad:
        return
    names = ", ".join(t.qualified for t in bad)
    scope = "the database (FOR ALL TABLES publishes every table)" if all_tables else "source.tables"
    raise UsageError(
        f"expected every published table to have a primary key or REPLICA IDENTITY "
        f"USING INDEX/FULL, found none on {names} in {scope}: publishing it would make "
        f"UPDATE and DELETE on it fail; add a primary key or list only keyed tables"
    )


# ------------------------------------------------------------------ publication


def publication_exists(conn: Conn, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone()
    return row is not None


def publication_sql(name: str, tables: list[TableRef] | None) -> sql.Composed:
    """The CREATE PUBLICATION statement we run, or a DBA runs for us."""
    if tables is None:
        target: sql.Composable = sql.SQL("FOR ALL TABLES")
    else:
        target = sql.SQL("FOR TABLE ") + sql.SQL(", ").join(
            sql.Identifier(t.schema, t.name) for t in tables
        )
    return sql.SQL("CREATE PUBLICATION {} {} WITH (publish_via_partition_root = true)").format(
        sql.Identifier(name), target
    )


def ensure_publication(
    conn: Conn, name: str, tables: list[TableRef] | None, state_dir: Path
) -> bool:
    """Create the publication when missing; True if we created it.

    Without the privilege, the error carries the exact SQL a DBA runs.
    """
    if publication_exists(conn, name):
        if tables is not None:
            published = {t.relid for t in publication_tables(conn, name)}
            missing = [t for t in tables if t.relid not in published]
            if missing:
                fix = sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                    sql.Identifier(name),
                    sql.SQL(", ").join(sql.Identifier(t.schema, t.name) for t in missing),
                )
                raise ServiceError(
                    f"expected publication {name} to include "
                    f"{', '.join(t.qualified for t in missing)}, found it does not; "
                    f"a DBA runs: {fix.as_string(conn)};"
                )
        return False
    create = publication_sql(name, tables)
    try:
        with conn.transaction():
            conn.execute(create)
            conn.execute(
                sql.SQL("COMMENT ON PUBLICATION {} IS {}").format(
                    sql.Identifier(name), sql.Literal(PUBLICATION_MARKER)
                )
            )
    except psycopg.errors.InsufficientPrivilege:
        raise ServiceError(
            f"expected publication {name} to exist or be creatable, found neither "
            f"(permission denied); a DBA runs: {create.as_string(conn)};"
        ) from None
    record_created(state_dir, publication=name)
    log.info("created publication %s", name)
    return True


def publication_is_ours(conn: Conn, name: str) -> bool:
    row = conn.execute(
        "SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = %s",
        (name,),
    ).fetchone()
    return row is not None and row[0] == PUBLICATION_MARKER


# ------------------------------------------------------------------------ slots


def slot_info(conn: Conn, name: str) -> SlotInfo | None:
    row = conn.execute(
        "SELECT slot_name::text, plugin::text, database::text, temporary, active_pid,"
        " wal_status, confirmed_flush_lsn::text, restart_lsn::text"
        " FROM pg_replication_slots WHERE slot_name = %s",
        (name,),
    ).fetchone()
    if row is None:
        return None
    return SlotInfo(row[0], row[1], row[2], bool(row[3]), row[4], row[5], row[6], row[7])


def require_resumable_slot(conn: Conn, name: str, database: str, position: str) -> SlotInfo:
    """The slot we stream from still exists, is ours and still has our position."""
    info = slot_info(conn, name)
    redo = "see docs/postgresql.md, 'Re-snapshot'"
    if info is None:
        raise PositionLostError(
            f"expected replication slot {name} (checkpoint at {position}), found no such slot: "
            f"it was dropped or did not follow a failover; changes since {position} are "
            f"lost to us; take a new snapshot ({redo})"
        )
    if info.wal_status == "lost":
        raise PositionLostError(
            f"expected replication slot {name} to still hold WAL from {position}, found it "
            f"invalidated (wal_status=lost, max_slot_wal_keep_size exceeded); take a new "
            f"snapshot ({redo})"
        )
    if info.plugin != "pgoutput" or info.database != database:
        raise UsageError(
            f"expected slot {name} to be a pgoutput slot on database {database}, found "
            f"plugin {info.plugin} on database {info.database}; choose another source.slot"
        )
    return info


def record_created(state_dir: Path, **names: str) -> None:
    """Remember what we created, so teardown drops only that."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / _CREATED_FILE
    current = created_objects(state_dir)
    current.update(names)
    write_atomically(path, json.dumps(current, sort_keys=True).encode())


def created_objects(state_dir: Path) -> dict[str, str]:
    path = state_dir / _CREATED_FILE
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {str(k): str(v) for k, v in data.items()}


def forget_created(state_dir: Path) -> None:
    (state_dir / _CREATED_FILE).unlink(missing_ok=True)
