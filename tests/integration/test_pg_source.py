"""PostgresSource against a real PostgreSQL: snapshot + stream, exactly once.

The helpers at the top are shared by the other test_pg_*.py modules.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agent.errors import PositionLostError, ServiceError, UsageError
from agent.events import ChangeEvent, Heartbeat, Position, Transaction
from agent.settings import ArchiveSettings, EncryptionSettings, Settings, SourceSettings
from connectors.postgres.replication import lsn_to_int
from connectors.postgres.source import PostgresSource
from connectors.postgres.teardown import teardown
from tests.servers.postgres import PostgresServer

# ----------------------------------------------------------------- helpers


def make_settings(
    dsn: str,
    state_dir: Path,
    tables: list[str] | None = None,
    slot: str | None = None,
    heartbeat: str = "1s",
) -> Settings:
    name = slot or f"cv_{uuid.uuid4().hex[:10]}"
    return Settings(
        source=SourceSettings(
            type="postgres",
            dsn=dsn,
            tables=tables,
            slot=name,
            publication=name,
            heartbeat_interval=heartbeat,  # type: ignore[arg-type]
        ),
        archive=ArchiveSettings(url=f"file://{state_dir}/archive"),
        encryption=EncryptionSettings(recipients=[state_dir / "archive.pub"]),
        state_dir=state_dir,
    )


@dataclass
class Captured:
    transactions: list[tuple[Position, str, list[ChangeEvent]]] = field(default_factory=list)
    heartbeats: list[Heartbeat] = field(default_factory=list)

    @property
    def events(self) -> list[ChangeEvent]:
        return [e for _p, _x, evs in self.transactions for e in evs]


def drain(
    source: PostgresSource,
    until: Callable[[Captured], bool],
    timeout: float = 60,
    captured: Captured | None = None,
    confirm: bool = True,
    stream: Iterator[Transaction | Heartbeat] | None = None,
) -> Captured:
    """Consume the stream (confirming each transaction) until `until` holds."""
    captured = captured if captured is not None else Captured()
    deadline = time.monotonic() + timeout
    it = stream if stream is not None else source.stream()
    if until(captured):
        return captured
    for item in it:
        if isinstance(item, Transaction):
            events = list(item.events)
            captured.transactions.append((item.position, item.txid, events))
            if confirm:
                source.confirm(item.position)
        else:
            captured.heartbeats.append(item)
        if until(captured):
            return captured
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; captured {len(captured.events)} events")
    raise AssertionError("stream ended")


def snapshot_rows(source: PostgresSource, reader: Any) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for schema in reader.tables():
        out[schema.qualified] = list(reader.rows(schema))
    reader.close()
    return out


def slot_confirmed(server: PostgresServer, dbname: str, slot: str) -> int:
    rows = server.execute(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        dbname,
        params=(slot,),
    )
    return lsn_to_int(rows[0][0])


def drop_slot_behind_our_back(server: PostgresServer, slot: str) -> None:
    """Terminate the walsender and drop its slot before the source reconnects."""
    deadline = time.monotonic() + 20
    while True:
        try:
            server.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE slot_name = %s AND active_pid IS NOT NULL",
                params=(slot,),
            )
            server.execute("SELECT pg_drop_replication_slot(%s)", params=(slot,))
            return
        except psycopg.errors.ObjectInUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


# ------------------------------------------------------------------- tests


def test_snapshot_then_stream_with_table_definitions(
    pg_server: PostgresServer, pg_database: Any, state_dir: Path
) -> None:
    db = pg_database.name
    pg_server.execute(
        "CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL DEFAULT 'x',"
        " email text UNIQUE, points numeric(12,2));"
        "CREATE TABLE orders (id serial PRIMARY KEY, customer_id bigint REFERENCES customers(id)"
        " ON DELETE CASCADE, at timestamptz DEFAULT now());"
        "CREATE INDEX orders_customer ON orders (customer_id);"
        "INSERT INTO customers VALUES (1, 'ann', 'a@x', 10.50), (2, 'bob', NULL, NULL);"
        "INSERT INTO orders (customer_id, at) VALUES (1, '2024-01-02 03:04:05+00')",
        db,
    )
    settings = make_settings(pg_database.dsn, state_dir)
    source = PostgresSource(settings, state_dir, status_interval=0.5)
    try:
        reader = source.start(None)
        assert reader is not None
        schemas = {s.qualified: s for s in reader.tables()}
        cust = schemas["public.customers"]
        assert cust.primary_key == ("id",)
        assert [(c.name, c.type_name, c.nullable) for c in cust.columns] == [
            ("id", "bigint", False),
            ("name", "text", False),
            ("email", "text", True),
            ("points", "numeric(12,2)", True),
        ]
        assert cust.columns[1].default == "'x'::text"
        assert [i.columns for i in cust.indexes if i.unique] == [("email",)]
        orders = schemas["public.orders"]
        (fk,) = orders.foreign_keys
        assert (fk.columns, fk.ref_table, fk.ref_columns, fk.on_delete) == (
            ("customer_id",),
            "customers",
            ("id",),
            "CASCADE",
        )
        assert ("customer_id",) in [i.columns for i in orders.indexes]
        rows = snapshot_rows(source, reader)
        assert sorted(rows["public.customers"], key=lambda r: r["id"]) == [
            {"id": 1, "name": "ann", "email": "a@x", "points": "10.50"},
            {"id": 2, "name": "bob", "email": None, "points": None},
        ]
        assert rows["public.orders"] == [
            {"id": 1, "customer_id": 1, "at": "2024-01-02T03:04:05+00:00"}
        ]
        pg_server.execute(
            "INSERT INTO customers VALUES (3, 'cy', 'c@x', 1);"
            "UPDATE customers SET points = 11 WHERE id = 1; DELETE FROM orders;"
            "DELETE FROM customers WHERE id = 2",
            db,
        )
        got = drain(source, lambda c: len(c.events) >= 4)
        ops = [(e.op, e.table, e.key) for e in got.events]
        assert ops == [
            ("c", "customers", {"id": 3}),
            ("u", "customers", {"id": 1}),
            ("d", "orders", {"id": 1}),
            ("d", "customers", {"id": 2}),
        ]
        assert got.events[1].after == {"id": 1, "name": "ann", "email": "a@x", "points": "11.00"}
        # The stream's values and the snapshot's are the same JSON.
        assert got.events[0].after == {"id": 3, "name": "cy", "email": "c@x", "points": "1.00"}
        position, txid, _ = got.transactions[0]
        assert position.sort_key[0] >= lsn_to_int(reader.position.text)
        assert int(txid) > 0
    finally:
        source.close()
    assert "dropped" in " ".join(teardown(settings, state_dir))
    assert pg_server.execute(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
        params=(settings.source.slot,),
    ) == [(0,)]


def test_snapshot_boundary_under_concurrent_writes(
    pg_server: PostgresServer, pg_database: Any, state_dir: Path
) -> None:
    """Every change is seen exactly once across snapshot + stream."""
    db = pg_database.name
    pg_server.execute(
        "CREATE TABLE acct (id int PRIMARY KEY, n int NOT NULL);"
        "INSERT INTO acct SELECT g, 0 FROM generate_series(1, 2000) g",
        db,
    )
    stop = threading.Event()
    writes: list[tuple[int, int]] = []  # (id, n) after each committed write

    def writer() -> None:
        with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
            i = 0
            while not stop.is_set():
                i += 1
                row_id = 2000 + i if i % 3 == 0 else (i * 7) % 2000 + 1
                if i % 3 == 0:
                    conn.execute("INSERT INTO acct VALUES (%s, %s)", (row_id, i))
                else:
                    conn.execute("UPDATE acct SET n = %s WHERE id = %s", (i, row_id))
                writes.append((row_id, i))

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(0.3)
    settings = make_settings(pg_database.dsn, state_dir, tables=["public.acct"])
    source = PostgresSource(settings, state_dir, status_interval=0.5)
    try:
        reader = source.start(None)
        assert reader is not None
        time.sleep(0.3)
        state = {r["id"]: r["n"] for r in snapshot_rows(source, reader)["public.acct"]}
        time.sleep(0.3)
        stop.set()
        thread.join()
        final = dict(pg_server.execute("SELECT id, n FROM acct", db))
        streamed = drain(source, _Applier(state).caught_up_with(final), timeout=60)
        # Exactly once: no streamed insert hits a row the snapshot had already.
        seen_inserts = [e.key["id"] for e in streamed.events if e.op == "c"]  # type: ignore[index]
        assert len(seen_inserts) == len(set(seen_inserts))
        assert writes and len(writes) > 20
    finally:
        stop.set()
        source.close()


class _Applier:
    """Applies captured events to the snapshot's state as they arrive, keeping
    the set of ids that still differ from the final table (re-applying and
    comparing everything per transaction was quadratic: a fast machine's
    writer produced enough transactions to time the test out)."""

    def __init__(self, snapshot: dict[int, int]) -> None:
        self.state = dict(snapshot)
        self.seen = 0  # transactions applied so far

    def caught_up_with(self, final: dict[int, int]) -> Callable[[Captured], bool]:
        differ = {k for k in self.state.keys() | final.keys() if self.state.get(k) != final.get(k)}

        def until(captured: Captured) -> bool:
            for _p, _x, events in captured.transactions[self.seen:]:
                for e in events:
                    assert e.after is not None
                    row_id = e.after["id"]
                    if e.op == "c":
                        assert row_id not in self.state, f"insert of {row_id} seen twice"
                    self.state[row_id] = e.after["n"]
                    if self.state[row_id] == final.get(row_id):
                        differ.discard(row_id)
                    else:
                        differ.add(row_id)
            self.seen = len(captured.transactions)
            return not differ

        return until


def test_unchanged_toast_listed_under_default_identity(
    pg_server: PostgresServer, pg_database: Any, state_dir: Path
) -> None:
    db = pg_database.name
    pg_server.execute(
        "CREATE TABLE docs (id int PRIMARY KEY, body text, n int);"
        "ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;"
        "CREATE TABLE docs_full (id int PRIMARY KEY, body text, n int);"
        "ALTER TABLE docs_full ALTER COLUMN body SET STORAGE EXTERNAL;"
        "ALTER TABLE docs_full REPLICA IDENTITY FULL",
        db,
    )
    settings = make_settings(pg_database.dsn, state_dir)
    source = PostgresSource(settings, state_dir)
    try:
        reader = source.start(None)
        assert reader is not None
        reader.close()
        big = "x" * 10000
        for table in ("docs", "docs_full"):
            pg_server.execute(f"INSERT INTO {table} VALUES (1, '{big}', 1)", db)
            pg_server.execute(f"UPDATE {table} SET n = 2 WHERE id = 1", db)
        got = drain(source, lambda c: len(c.events) >= 4)
        upd, upd_full = got.events[1], got.events[3]
        assert upd.op == "u" and upd.unchanged == ("body",)
        assert upd.after == {"id": 1, "n": 2}
        assert upd.before == {"id": 1}
        assert upd_full.unchanged == ()
        assert upd_full.after == {"id": 1, "body": big, "n": 2}
        assert upd_full.before == {"id": 1, "body": big, "n": 1}
    finally:
        source.close()


def test_schema_changes_mid_stream(
    pg_server: PostgresServer, pg_database: Any, state_dir: Path
) -> None:
    db = pg_database.name
    pg_server.execute("CREATE TABLE t (id int PRIMARY KEY, a int, b text)", db)
    settings = make_settings(pg_database.dsn, state_dir)
    source = PostgresSource(settings, state_dir)
    try:
        reader = source.start(None)
        assert reader is not None
        reader.close()
        statements = [
            "INSERT INTO t VALUES (1, 1, 'one')",
            "ALTER TABLE t ADD COLUMN c numeric(5,1) DEFAULT 0",
            "INSERT INTO t VALUES (2, 2, 'two', 2.5)",
            "ALTER TABLE t DROP COLUMN b",
            "INSERT INTO t VALUES (3, 3, 3.5)",
            "ALTER TABLE t RENAME COLUMN a TO aa",
            "INSERT INTO t VALUES (4, 4, 4.5)",
            "ALTER TABLE t ALTER COLUMN aa TYPE bigint",
            "UPDATE t SET aa = 5000000000 WHERE id = 4",
        ]
        for stmt in statements:
            pg_server.execute(stmt, db)
        got = drain(source, lambda c: len(c.events) >= 5)
        shapes = [(e.schema_version, e.after) for e in got.events]
        assert shapes == [
            (1, {"id": 1, "a": 1, "b": "one"}),
            (2, {"id": 2, "a": 2, "b": "two", "c": "2.5"}),
            (3, {"id": 3, "a": 3, "c": "3.5"}),
            (4, {"id": 4, "aa": 4, "c": "4.5"}),
            (5, {"id": 4, "aa": 5000000000, "c": "4.5"}),
        ]
    finally:
        source.close()


def test_transaction_schemas_name_new_shapes_before_events(
    pg_server: PostgresServer, pg_database: Any, state_dir: Path
) -> None:
    db = pg_database.name
    pg_server.execute("CREATE TABLE s (id int PRIMARY KEY, a int)", db)
    settings = make_settings(pg_database.dsn, state_dir)
    source = PostgresSource(settings, state_dir)
    try:
        reader = source.start(None)
        assert reader is not None
        reader.close()
        pg_server.execute("INSERT INTO s VALUES (1, 1)", db)
        pg_server.execute("ALTER TABLE s ADD COLUMN b text", db)
        pg_server.execute("INSERT INTO s VALUES (2, 2, 'b')", db)
        seen = []
        for item in source.stream():
            if isinstance(item, Transaction):
                seen.append([(s.version, s.column_names) for s in item.schemas])
                list(item.events)
                if len(seen) == 2:
                    break
        # Version 1 came from the snapshot; the ALTER brought version 2.
        assert seen == [[], [(2, ("id", "a", "b"))]]
    finally:
        source.close()


def test_confirmed_flush_advances_while_only_uncaptured_tables_change(
    pg_server: PostgresServer, pg_database: Any, state_dir: Path
) -> None:
    db = pg_database.name
    pg_server.execute(
        "CREATE TABLE captured (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY)", db
    )
    settings = make_settings(pg_database.dsn, state_dir, tables=["public.captured"])
    source = PostgresSource(settings, state_dir, status_interval=0.5)
    try:
        reader = source.start(None)
        assert reader is not None
        reader.close()
        slot = settings.source.slot
        stream = source.stream()
        drain(source, lambda c: len(c.heartbeats) >= 2, stream=stream)
        before = slot_confirmed(pg_server, db, slot)
        for i in range(50):
            pg_server.execute(f"INSERT INTO other VALUES ({i})", db)
        target = lsn_to_int(pg_server.execute("SELECT pg_current_wal_lsn()::text", db)[0][0])
        deadline = time.monotonic() + 30
        got = Captured()
        while slot_confirmed(pg_server, db, slot) < target:
            assert time.monotonic() < deadline, "confirmed_flush_lsn did not advance"
            drain(source, lambda c, n=len(got.heartbeats): len(c.heartbeats) > n,
                  captured=got, stream=stream)  # fmt: skip
        assert slot_confirmed(pg_server, db, slot) > before
        assert got.events == []
        behind = source.behind_bytes()
        assert behind is not None and behind >= 0
    finally:
        source.close()


def test_table_without_primary_key_is_refused_by_name(
    pg_server: PostgresServer, pg_database: Any, state_dir: Path
) -> None:
    db = pg_database.name
    pg_server.execute(
        "CREATE TABLE keyed (id int PRIMARY KEY); CREATE TABLE loose (id int, v text)", db
    )
    for tables in (["public.keyed", "public.loose"], None):
        settings = make_settings(pg_database.dsn, state_dir, tables=tables)
        source = PostgresSource(settings, state_dir)
        try:
            with pytest.raises(UsageError, match=r"public\.loose") as exc:
                source.start(None)
            assert exc.value.exit_code == 2
            failed = [c for c in source.checks() if not c.ok]
            assert any("public.loose" in c.name and c.fatal for c in failed)
        finally:
            source.close()
        # Nothing was created: no publication, no slot.
        assert pg_server.execute("SELECT count(*) FROM pg_publication", db) == [(0,)]
    assert pg_server.execute(
        "SELECT count(*) FROM pg_replication_slots WHERE database = %s", params=(db,)
    ) == [(0,)]


def test_checks_report_prerequisites(
    pg_server: PostgresServer, pg_database: Any, state_dir: Path
) -> None:
    db = pg_database.name
    pg_server.execute(
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int);"
        "ALTER TABLE b REPLICA IDENTITY FULL",
        db,
    )
    settings = make_settings(pg_database.dsn, state_dir)
    source = PostgresSource(settings, state_dir)
    try:
        results = {c.name: c for c in source.checks()}
    finally:
        source.close()
    assert results["postgres wal_level"].ok
    assert results["postgres replication privilege"].ok
    assert results["postgres replication connection"].ok
    assert results["postgres publication"].ok
    assert "DEFAULT" in results["postgres table public.a"].detail
    assert "FULL" in results["postgres table public.b"].detail
    assert results["postgres slot"].ok


def test_publication_needs_dba_prints_sql(
    pg_server: PostgresServer, pg_database: Any, state_dir: Path
) -> None:
    db = pg_database.name
    role = f"cv_{uuid.uuid4().hex[:8]}"
    pg_server.execute(
        f"CREATE ROLE {role} LOGIN REPLICATION; CREATE TABLE p (id int PRIMARY KEY);"
        f"GRANT SELECT ON p TO {role}",
        db,
    )
    dsn = pg_database.dsn.replace("postgres@", f"{role}@")
    settings = make_settings(dsn, state_dir, tables=["public.p"])
    source = PostgresSource(settings, state_dir)
    try:
        with pytest.raises(ServiceError, match=r"CREATE PUBLICATION .* FOR TABLE \"public\".\"p\""):
            source.start(None)
    finally:
        source.close()
    # A DBA creates it; then the least-privileged role can run.
    pg_server.execute(
        f"CREATE PUBLICATION {settings.source.publication} FOR TABLE p"
        " WITH (publish_via_partition_root = true)",
        db,
    )
    source = PostgresSource(settings, state_dir)
    try:
        reader = source.start(None)
        assert reader is not None
        reader.close()
        pg_server.execute("INSERT INTO p VALUES (7)", db)
        got = drain(source, lambda c: len(c.events) >= 1)
        assert got.events[0].after == {"id": 7}
    finally:
        source.close()
    # Teardown keeps the DBA's publication.
    lines = teardown(settings, state_dir)
    assert any("kept" in line for line in lines)


def test_dropped_slot_is_position_lost(
    pg_server: PostgresServer, pg_database: Any, state_dir: Path
) -> None:
    db = pg_database.name
    pg_server.execute("CREATE TABLE t (id int PRIMARY KEY)", db)
    settings = make_settings(pg_database.dsn, state_dir)
    source = PostgresSource(settings, state_dir)
    reader = source.start(None)
    assert reader is not None
    reader.close()
    pg_server.execute("INSERT INTO t VALUES (1)", db)
    got = drain(source, lambda c: len(c.events) >= 1)
    source.close()
    slot = settings.source.slot
    pg_server.execute("SELECT pg_drop_replication_slot(%s)", params=(slot,))
    resumed = PostgresSource(settings, state_dir)
    try:
        with pytest.raises(PositionLostError, match="no such slot") as exc:
            resumed.start(got.transactions[-1][0])
        assert exc.value.exit_code == 3
    finally:
        resumed.close()
    # Dropped while streaming: the reconnect finds it gone.
    settings2 = make_settings(pg_database.dsn, state_dir / "2")
    source = PostgresSource(settings2, state_dir / "2")
    try:
        reader = source.start(None)
        assert reader is not None
        reader.close()
        stream = source.stream()
        drain(source, lambda c: len(c.heartbeats) >= 1, stream=stream)
        drop_slot_behind_our_back(pg_server, settings2.source.slot)
        with pytest.raises(PositionLostError):
            drain(source, lambda c: False, stream=stream, timeout=30)
    finally:
        source.close()


def test_scheduled_snapshot_while_streaming(
    pg_server: PostgresServer, pg_database: Any, state_dir: Path
) -> None:
    """A temporary slot's consistent point splits the stream exactly."""
    db = pg_database.name
    pg_server.execute("CREATE TABLE t (id int PRIMARY KEY)", db)
    settings = make_settings(pg_database.dsn, state_dir)
    source = PostgresSource(settings, state_dir)
    try:
        reader = source.start(None)
        assert reader is not None
        reader.close()
        stream = source.stream()
        for i in range(1, 21):
            pg_server.execute(f"INSERT INTO t VALUES ({i})", db)
        got = drain(source, lambda c: len(c.events) >= 20, stream=stream)
        snap = source.take_snapshot()
        for i in range(21, 31):
            pg_server.execute(f"INSERT INTO t VALUES ({i})", db)
        assert snap.held_xmin is not None
        rows = {r["id"] for r in snapshot_rows(source, snap)["public.t"]}
        assert snap.duration_seconds >= 0
        drain(source, lambda c: len(c.events) >= 30, captured=got, stream=stream)
        cut = snap.position.sort_key
        before = {e.key["id"] for p, _x, evs in got.transactions for e in evs if p.sort_key < cut}  # type: ignore[index]
        assert rows == before == set(range(1, 21))
        # The temporary slot is gone as soon as the snapshot was imported.
        assert pg_server.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE database = %s", params=(db,)
        ) == [(1,)]
    finally:
        source.close()
