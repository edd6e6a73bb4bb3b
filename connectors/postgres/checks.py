"""The PostgreSQL lines of `changevault check`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from agent.errors import ChangevaultError
from agent.settings import Settings
from connectors.base import CheckResult
from connectors.postgres import slots
from connectors.postgres.replication import ReplicationConnection, connection_params


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def run_checks(settings: Settings, state_dir: Path) -> list[CheckResult]:
    source = settings.source
    params = connection_params(source)
    try:
        conn = psycopg.connect(source.dsn, autocommit=True, **params)
    except psycopg.OperationalError as exc:
        return [
            CheckResult(
                "postgres connection",
                False,
                f"expected to connect to {source.redacted_dsn}, failed: {_last_line(exc)}",
                service=True,
            )
        ]
    with conn:
        results = [CheckResult("postgres connection", True, f"connected to {source.redacted_dsn}")]
        results += _server_checks(conn)
        results.append(_replication_connection(source.dsn, params))
        results += _table_checks(conn, settings)
        results.append(_slot_check(conn, source.slot, source.database))
    return results


def _server_checks(conn: psycopg.Connection[Any]) -> list[CheckResult]:
    out = []
    wal_level = conn.execute("SHOW wal_level").fetchone()
    level = wal_level[0] if wal_level else "?"
    out.append(
        CheckResult(
            "postgres wal_level",
            level == "logical",
            f"wal_level={level}"
            + ("" if level == "logical" else " (expected logical; set it and restart PostgreSQL)"),
        )
    )
    role = conn.execute(
        "SELECT rolname, rolreplication, rolsuper FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    assert role is not None
    ok = bool(role[1] or role[2])
    out.append(
        CheckResult(
            "postgres replication privilege",
            ok,
            f"role {role[0]} has "
            + ("REPLICATION" if role[1] else "SUPERUSER" if role[2] else "no REPLICATION")
            + ("" if ok else f" (a DBA runs: ALTER ROLE {role[0]} REPLICATION;)"),
        )
    )
    slots_row = conn.execute(
        "SELECT current_setting('max_replication_slots')::int,"
        " (SELECT count(*) FROM pg_replication_slots)"
    ).fetchone()
    assert slots_row is not None
    free = int(slots_row[0]) - int(slots_row[1])
    out.append(
        CheckResult(
            "postgres replication slots",
            free > 0,
            f"{free} of max_replication_slots={slots_row[0]} free"
            + ("" if free > 0 else " (raise max_replication_slots or drop unused slots)"),
            fatal=False,
        )
    )
    return out


def _replication_connection(dsn: str, params: dict[str, Any]) -> CheckResult:
    try:
        repl = ReplicationConnection(dsn, params)
    except psycopg.Error as exc:
        return CheckResult(
            "postgres replication connection",
            False,
            f"expected a replication connection (pg_hba.conf 'replication' entry), failed: "
            f"{_last_line(exc)}",
        )
    try:
        ident = repl.identify_system()
    finally:
        repl.close()
    return CheckResult(
        "postgres replication connection",
        True,
        f"IDENTIFY_SYSTEM: system {ident.system_id}, timeline {ident.timeline}",
    )


def _table_checks(conn: psycopg.Connection[Any], settings: Settings) -> list[CheckResult]:
    source = settings.source
    out: list[CheckResult] = []
    try:
        configured = (
            slots.resolve_tables(conn, source.tables) if source.tables is not None else None
        )
    except ChangevaultError as exc:
        return [CheckResult("postgres tables", False, str(exc))]
    pub = source.publication
    exists = slots.publication_exists(conn, pub)
    if exists:
        tables = slots.publication_tables(conn, pub)
        if configured is not None:
            published = {t.relid for t in tables}
            missing = [t for t in configured if t.relid not in published]
            detail = f"publication {pub} exists"
            if missing:
                detail += f" but lacks {', '.join(t.qualified for t in missing)}"
            out.append(CheckResult("postgres publication", not missing, detail))
            tables = configured
        else:
            out.append(CheckResult("postgres publication", True, f"publication {pub} exists"))
    else:
        tables = configured if configured is not None else slots.user_tables(conn)
        can = _can_create_publication(conn, all_tables=configured is None, tables=tables)
        create = slots.publication_sql(pub, configured).as_string(conn)
        out.append(
            CheckResult(
                "postgres publication",
                can,
                f"publication {pub} will be created on first run"
                if can
                else f"publication {pub} is missing and this role cannot create it; "
                f"a DBA runs: {create};",
            )
        )
    scope = "" if configured is not None or exists else " (FOR ALL TABLES publishes it)"
    for table in tables:
        leaves = slots.leaf_partitions(conn, table) if table.relkind == "p" else [table]
        for leaf in leaves:
            out.append(
                CheckResult(
                    f"postgres table {leaf.qualified}",
                    leaf.identity_ok,
                    leaf.identity_text() + ("" if leaf.identity_ok else scope),
                )
            )
    if not tables:
        out.append(CheckResult("postgres tables", False, "expected tables to capture, found none"))
    return out


def _can_create_publication(
    conn: psycopg.Connection[Any], all_tables: bool, tables: list[slots.TableRef]
) -> bool:
    row = conn.execute(
        "SELECT rolsuper, has_database_privilege(current_database(), 'CREATE')"
        " FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    assert row is not None
    if row[0]:
        return True
    if all_tables or not row[1]:
        return False  # FOR ALL TABLES needs a superuser
    owned = conn.execute(
        "SELECT count(*) FROM pg_class WHERE oid = ANY(%s) AND pg_has_role(relowner, 'USAGE')",
        ([t.relid for t in tables],),
    ).fetchone()
    return owned is not None and int(owned[0]) == len(tables)


def _slot_check(conn: psycopg.Connection[Any], slot: str, database: str) -> CheckResult:
    info = slots.slot_info(conn, slot)
    if info is None:
        return CheckResult(
            "postgres slot", True, f"slot {slot} does not exist yet (created on first run)"
        )
    if info.wal_status == "lost":
        return CheckResult(
            "postgres slot",
            False,
            f"slot {slot} is invalidated (wal_status=lost): take a new snapshot "
            f"(docs/postgresql.md, 'Re-snapshot')",
        )
    if info.plugin != "pgoutput" or info.database != database:
        return CheckResult(
            "postgres slot",
            False,
            f"slot {slot} uses plugin {info.plugin} on database {info.database}; "
            f"expected pgoutput on {database}",
        )
    active = f"active (pid {info.active_pid})" if info.active_pid else "inactive"
    return CheckResult(
        "postgres slot",
        True,
        f"slot {slot}: {active}, wal_status={info.wal_status}, "
        f"confirmed_flush_lsn={info.confirmed_flush_lsn}",
    )
