"""`restore --preview` and `--in-place --yes` into MariaDB through the real agent and CLI.

What "untouched" means here: every captured table carries AFTER INSERT /
UPDATE / DELETE triggers that append (table, id, event) to `touch_log`, a
table the agent does not capture. A row the restore rewrote in any way — an
UPDATE even to the same values (MariaDB fires row triggers for every row an
UPDATE matches), a delete and re-insert — leaves a line there; a row it left
alone leaves none. The triggers also exercise the preview's trigger report.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from tests.e2e.agent_process import AgentProcess, cli, events, make_keys, wait_for, write_config
from tests.e2e.test_restore_mysql import (
    EVERYTHING,
    ROW_SQL,
    checkpoint_seq,
    connect,
    row,
    table_rows,
    wait_durable,
)

ENTITY_TABLES = ("customers", "orders", "ledger")
TOUCH_LOG = ("CREATE TABLE touch_log (n INT AUTO_INCREMENT PRIMARY KEY, tbl VARCHAR(20),"
             " row_id BIGINT, op VARCHAR(6))")


def add_touch_triggers(cur: Any, table: str) -> None:
    for event, ref in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
        cur.execute(f"CREATE TRIGGER touch_{table}_{event.lower()} AFTER {event} ON {table}"
                    f" FOR EACH ROW INSERT INTO touch_log (tbl, row_id, op)"
                    f" VALUES ('{table}', {ref}.id, '{event.lower()}')")


def touches(server: Any, db: str) -> list[tuple[str, int, str]]:
    return [(str(t), int(i), str(o)) for t, i, o in
            server.execute("SELECT tbl, row_id, op FROM touch_log ORDER BY n", db)]


def state_of(server: Any, db: str, tables: tuple[str, ...]) -> dict[str, Any]:
    """Every row of the tables (and the touch log): equal before and after = nothing written."""
    out: dict[str, Any] = {t: table_rows(server, db, t) for t in tables}
    out["touch_log"] = touches(server, db)
    return out


def by_id(server: Any, db: str, table: str) -> dict[int, tuple[Any, ...]]:
    return {int(r[0]): r for r in table_rows(server, db, table)[1]}


def page_views(server: Any, db: str, n: int) -> None:
    server.execute("INSERT INTO page_views (url) SELECT CONCAT('u', seq) FROM seq_1_to_"
                   f"{int(n)}", db)


def start_agent(tmp_path: Path, dsn: str, server_id: int,
                tables: list[str]) -> tuple[Path, dict[str, Path], Path, AgentProcess]:
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "cv.yaml",
        source={"type": "mysql", "dsn": dsn, "server_id": server_id, "tables": tables},
        archive_url=(tmp_path / "archive").as_uri(), keys=keys, state_dir=state,
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    wait_for(lambda: checkpoint_seq(state) >= 0, 60, "initial snapshot")
    return config, keys, state, agent


def now_text(server: Any) -> str:
    got = server.execute("SELECT DATE_FORMAT(UTC_TIMESTAMP(6), '%Y-%m-%dT%H:%i:%s.%f')")
    return str(got[0][0]) + "+00:00"


def test_mariadb_entity_preview_cascade_in_place_and_idempotence(
        mariadb_server: Any, mysql_database: Any, tmp_path: Path) -> None:
    db = mysql_database.name
    conn = connect(mariadb_server, db)
    try:
        cur = conn.cursor()
        # changed_at: an UPDATE that does not set it stamps it with the current time.
        cur.execute("CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(40),"
                    " balance DECIMAL(12,2), changed_at TIMESTAMP(6) NOT NULL"
                    " DEFAULT '2020-01-01 00:00:00' ON UPDATE CURRENT_TIMESTAMP(6))")
        cur.execute("CREATE TABLE orders (id INT PRIMARY KEY, customer_id INT, total DECIMAL(12,2),"
                    " CONSTRAINT ord_cust FOREIGN KEY (customer_id) REFERENCES customers (id))")
        cur.execute("CREATE TABLE ledger (id INT PRIMARY KEY, customer_id INT NOT NULL, points INT,"
                    " CONSTRAINT led_cust FOREIGN KEY (customer_id) REFERENCES customers (id))")
        cur.execute("CREATE TABLE page_views (id INT AUTO_INCREMENT PRIMARY KEY, url VARCHAR(40))")
        # Not captured: reaches orders with ON DELETE CASCADE (the refusal case).
        cur.execute("CREATE TABLE notes (id INT PRIMARY KEY, order_id INT, CONSTRAINT note_ord"
                    " FOREIGN KEY (order_id) REFERENCES orders (id) ON DELETE CASCADE)")
        cur.execute(TOUCH_LOG)
        for t in ENTITY_TABLES:
            add_touch_triggers(cur, t)
        cur.execute("INSERT INTO customers (id, name, balance) SELECT seq, CONCAT('c', seq), seq * 10"
                    " FROM seq_1_to_5")
        cur.execute("INSERT INTO orders SELECT seq, (seq % 5) + 1, seq FROM seq_1_to_20")
        cur.execute("INSERT INTO ledger SELECT seq, (seq % 5) + 1, seq * 2 FROM seq_1_to_20")
    finally:
        conn.close()
    config, keys, state, agent = start_agent(
        tmp_path, mysql_database.dsn, 7401, ["customers", "orders", "ledger", "page_views"])
    try:
        mariadb_server.execute("INSERT INTO orders VALUES (100, 3, 99.5)", db)  # after the snapshot
        for _ in range(3):  # unrelated traffic in segments of their own (1 s segments)
            page_views(mariadb_server, db, 200)
            wait_durable(mariadb_server, state)
            time.sleep(1.2)
        truth = {t: by_id(mariadb_server, db, t) for t in ENTITY_TABLES}
        t_time = now_text(mariadb_server)
        time.sleep(1.2)  # MariaDB records whole seconds: nothing later may share T's second
        for stmt in (
            # Customer 3 damaged: an order deleted (from the snapshot), one inserted
            # after T, the balance zeroed, a ledger row deleted.
            "DELETE FROM orders WHERE id = 2",
            "INSERT INTO orders VALUES (200, 3, 1)",
            # (changed_at kept: restoring the balance must not stamp it either)
            "UPDATE customers SET balance = 0, changed_at = changed_at WHERE id = 3",
            "DELETE FROM ledger WHERE id = 7",
            # Other customers change too; the restore must leave them as they are now.
            "UPDATE customers SET balance = 0 WHERE id = 1",
            "DELETE FROM orders WHERE id = 5",
        ):
            mariadb_server.execute(stmt, db)
        for _ in range(2):
            page_views(mariadb_server, db, 200)
            wait_durable(mariadb_server, state)
            time.sleep(1.2)
        wait_durable(mariadb_server, state)
        dsn = mariadb_server.dsn(db)

        def restore(*extra: str) -> Any:
            return cli(["restore", "-c", str(config), "--to", t_time, "--target-dsn", dsn,
                        "--private-key", str(keys["archive.key"]), *extra])

        # Injection strings and unknown names: one line, exit 2, nothing touched.
        before = state_of(mariadb_server, db, ENTITY_TABLES)
        for bad in ("customers.id=1;DROP TABLE notes", "customers.id=1 OR 1=1", "customers.id=",
                    "nosuch.id=1", "customers.nosuch=1", "customers.id=99999999999"):
            proc = restore("--entity", bad, "--in-place", "--yes")
            assert proc.returncode == 2, (bad, proc.stdout, proc.stderr)
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        proc = restore("--entity", "customers.id=3", "--in-place")
        assert proc.returncode == 2 and "--yes" in proc.stderr, proc.stderr

        # Preview into a new database: nothing created, the tables in scope listed.
        preview_db = f"{db[:50]}_pv"
        proc = restore("--entity", "customers.id=3", "--preview", "--target-schema", preview_db)
        assert proc.returncode == 0, proc.stderr
        assert not mariadb_server.execute(
            "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", params=(preview_db,))
        m = re.search(r"tables in scope: (.*)", proc.stdout)
        assert m and sorted(m.group(1).split(", ")) == [
            f"{db}.customers", f"{db}.ledger", f"{db}.orders"], proc.stdout
        assert f"{db}.orders -> {preview_db}.orders: 5 to insert" in proc.stdout, proc.stdout

        # Preview in place: the expected differences and the triggers, nothing written.
        proc = restore("--entity", "customers.id=3", "--in-place", "--preview")
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        assert (f"{db}.customers -> {db}.customers: 0 to insert, 1 to update, 0 to delete, "
                "0 unchanged") in out, out
        assert (f"{db}.orders -> {db}.orders: 1 to insert, 0 to update, 1 to delete, "
                "4 unchanged") in out, out
        assert (f"{db}.ledger -> {db}.ledger: 1 to insert, 0 to update, 0 to delete, "
                "3 unchanged") in out, out
        assert 'update [3]: {"balance":["0.00","30.00"]}' in out, out
        assert 'delete {"id":200,"customer_id":3,"total":"1.00"}' in out, out
        assert "triggers that would fire: touch_orders_delete (AFTER DELETE)" in out, out
        assert state_of(mariadb_server, db, ENTITY_TABLES) == before

        # A note (not captured) on the order the restore would delete: refused.
        mariadb_server.execute("INSERT INTO notes VALUES (1, 200)", db)
        before = state_of(mariadb_server, db, ENTITY_TABLES)
        proc = restore("--entity", "customers.id=3", "--in-place", "--yes")
        assert proc.returncode == 2, (proc.stdout, proc.stderr)
        assert "cascade" in proc.stderr and f"{db}.notes" in proc.stderr, proc.stderr
        assert "note_ord ON DELETE CASCADE" in proc.stderr, proc.stderr
        assert state_of(mariadb_server, db, ENTITY_TABLES) == before
        mariadb_server.execute("DELETE FROM notes", db)

        # MariaDB records a commit's time in whole seconds (when COMMIT began).
        started = re.sub(r"\.\d+", "", now_text(mariadb_server))
        before = state_of(mariadb_server, db, ENTITY_TABLES)
        proc = restore("--entity", "customers.id=3", "--in-place", "--yes")
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        assert "MISMATCH" not in proc.stdout, proc.stdout
        assert f"{db}.orders: 1 inserted, 0 updated, 1 deleted, 4 untouched" in proc.stdout
        # Exactly the entity's differing rows were written; nothing else was touched.
        new_touches = touches(mariadb_server, db)[len(before["touch_log"]):]
        assert sorted(new_touches) == [("customers", 3, "update"), ("ledger", 7, "insert"),
                                       ("orders", 2, "insert"), ("orders", 200, "delete")]
        after = {t: by_id(mariadb_server, db, t) for t in ENTITY_TABLES}
        assert after["customers"][3] == truth["customers"][3]
        assert after["orders"][2] == truth["orders"][2]
        assert after["ledger"][7] == truth["ledger"][7]
        assert after["orders"][100] == truth["orders"][100]
        assert 200 not in after["orders"]
        # Customer 1's later changes stay.
        assert after["customers"][1][2] == 0 and truth["customers"][1][2] != 0
        assert 5 not in after["orders"]
        written = {(t, i) for t, i, _ in new_touches}
        for t in ENTITY_TABLES:
            kept = {int(r[0]): r for r in before[t][1] if (t, int(r[0])) not in written}
            assert {k: after[t].get(k) for k in kept} == kept, t

        # Idempotent: a second run finds nothing to do and writes nothing.
        log_len = len(touches(mariadb_server, db))
        proc = restore("--entity", "customers.id=3", "--in-place", "--yes")
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        for t in ENTITY_TABLES:
            assert f"{db}.{t}: 0 inserted, 0 updated, 0 deleted" in proc.stdout, proc.stdout
        assert len(touches(mariadb_server, db)) == log_len

        # The running agent captured the restore's own writes as new changes.
        wait_durable(mariadb_server, state)
        later = events(config, keys, "--from", started)
        assert {(e["source"]["table"], e["op"], e["key"]["id"]) for e in later} >= {
            ("customers", "u", 3), ("orders", "c", 2), ("orders", "d", 200), ("ledger", "c", 7)}
    finally:
        assert agent.stop() == 0, agent.log()


def test_mariadb_whole_table_in_place_exact_values_and_constraint_rollback(
        mariadb_server: Any, mysql_database: Any, tmp_path: Path) -> None:
    db = mysql_database.name
    conn = connect(mariadb_server, db)
    try:
        cur = conn.cursor()
        cur.execute(EVERYTHING)
        cur.execute("CREATE TABLE accounts (id INT PRIMARY KEY, code VARCHAR(10) NOT NULL,"
                    " UNIQUE KEY by_code (code))")
        cur.execute(TOUCH_LOG)
        add_touch_triggers(cur, "everything")
        add_touch_triggers(cur, "accounts")
        # Row 1 in the snapshot (its FLOAT has an exact 6-digit form: a snapshot reads
        # FLOAT as 6-digit text); rows 2 and 3 arrive through the binlog.
        cur.execute(ROW_SQL, row(1))
        cur.execute("INSERT INTO accounts VALUES (1, 'a'), (2, 'b')")
    finally:
        conn.close()
    config, keys, state, agent = start_agent(
        tmp_path, mysql_database.dsn, 7402, ["everything", "accounts"])
    try:
        conn = connect(mariadb_server, db)
        cur = conn.cursor()
        cur.execute(ROW_SQL, row(2))
        cur.execute(ROW_SQL, row(3))
        wait_durable(mariadb_server, state)
        truth = table_rows(mariadb_server, db, "everything")
        t_time = now_text(mariadb_server)
        time.sleep(1.2)
        cur.execute("UPDATE everything SET vc = 'changed', f = 3.25, j = '[1]', bl = NULL, b = 0,"
                    " ts = '2001-01-01 00:00:00', dec1 = 0 WHERE id = 2")
        cur.execute("DELETE FROM everything WHERE id = 3")
        cur.execute(ROW_SQL, row(4))
        # A unique value moving between rows: restoring it needs the delete before the
        # update, but updates run first; the server refuses and everything rolls back.
        cur.execute("UPDATE accounts SET code = 'c' WHERE id = 2")
        cur.execute("INSERT INTO accounts VALUES (3, 'b')")
        conn.close()
        wait_durable(mariadb_server, state)
        dsn = mariadb_server.dsn(db)

        def restore(*extra: str) -> Any:
            return cli(["restore", "-c", str(config), "--to", t_time, "--target-dsn", dsn,
                        "--private-key", str(keys["archive.key"]), *extra])

        before = state_of(mariadb_server, db, ("everything", "accounts"))
        proc = restore("--tables", "everything", "--in-place", "--preview")
        assert proc.returncode == 0, proc.stderr
        # Row 1 compares equal across every type (read through the same converters).
        assert (f"{db}.everything -> {db}.everything: 1 to insert, 1 to update, 1 to delete, "
                "1 unchanged") in proc.stdout, proc.stdout
        assert state_of(mariadb_server, db, ("everything", "accounts")) == before

        proc = restore("--tables", "everything,accounts", "--in-place", "--yes")
        assert proc.returncode == 2, (proc.stdout, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "constraints" in proc.stderr and "Duplicate" in proc.stderr, proc.stderr
        assert state_of(mariadb_server, db, ("everything", "accounts")) == before

        proc = restore("--tables", "everything", "--in-place", "--yes")
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        assert "MISMATCH" not in proc.stdout, proc.stdout
        assert f"{db}.everything: 1 inserted, 1 updated, 1 deleted, 1 untouched" in proc.stdout
        assert table_rows(mariadb_server, db, "everything") == truth
        new_touches = touches(mariadb_server, db)[len(before["touch_log"]):]
        assert sorted(new_touches) == [("everything", 2, "update"), ("everything", 3, "insert"),
                                       ("everything", 4, "delete")]
        assert table_rows(mariadb_server, db, "accounts") == before["accounts"]

        log_len = len(touches(mariadb_server, db))
        proc = restore("--tables", "everything", "--in-place", "--yes")
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        assert f"{db}.everything: 0 inserted, 0 updated, 0 deleted, 3 untouched" in proc.stdout
        assert len(touches(mariadb_server, db)) == log_len
    finally:
        assert agent.stop() == 0, agent.log()
