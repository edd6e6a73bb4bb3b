"""Record raw pgoutput messages for the decoder's unit tests.

Starts a private PostgreSQL 15 (tests.servers.postgres), runs a workload that
produces every pgoutput message type, and saves what
pg_logical_slot_peek_binary_changes returns -- the exact bytes a walsender
puts inside XLogData -- as JSON lines (lsn, xid, hex data), one file per
option set:

    proto1.jsonl         proto_version 1 (big transactions arrive whole)
    proto2_stream.jsonl  proto_version 2, streaming on (logical_decoding_work_mem=64kB)
    proto1_binary.jsonl  proto_version 1, binary on ('b' column values)

Run from the repository root:  .venv/bin/python tests/unit/data/pgoutput/record.py
The tests assert on the content, so re-recording must keep the workload.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))

from tests.servers.postgres import PostgresServer  # noqa: E402

SESSION = (
    "SET DateStyle = ISO; SET IntervalStyle = iso_8601; SET TimeZone = 'UTC';"
    " SET bytea_output = hex; SET extra_float_digits = 3"
)

SETUP = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TABLE t_default (
    id integer PRIMARY KEY, name varchar(40), big text, amount numeric(12,2),
    at timestamptz, feeling mood, score posint, tags text[]);
ALTER TABLE t_default ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE t_full (id integer PRIMARY KEY, note text, payload text);
ALTER TABLE t_full REPLICA IDENTITY FULL;
ALTER TABLE t_full ALTER COLUMN payload SET STORAGE EXTERNAL;
CREATE TABLE t_parent (id integer PRIMARY KEY);
CREATE TABLE t_child (id serial PRIMARY KEY, parent integer REFERENCES t_parent);
CREATE TABLE t_bulk (id integer PRIMARY KEY, v text);
CREATE PUBLICATION p FOR ALL TABLES;
SELECT pg_create_logical_replication_slot('rec', 'pgoutput');
SELECT pg_replication_origin_create('upstream');
"""

BIG = "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 200) i)"

WORKLOAD = [
    # 1: inserts incl. a TOASTed value, NULLs, enum, domain, array
    f"""INSERT INTO t_default VALUES
        (1, 'one', {BIG}, 12.50, '2024-02-29 12:34:56.789+00', 'happy', 7,
         ARRAY['a', 'b c', NULL, 'd"e']),
        (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
        (3, 'three', 'x', -0.01, '-infinity', 'sad', 1, '{{}}')""",
    # 2: update leaving the TOASTed column unchanged ('u'), no old tuple (DEFAULT)
    "UPDATE t_default SET name = 'uno' WHERE id = 1",
    # 3: update changing the key: old key tuple ('K')
    "UPDATE t_default SET id = 20 WHERE id = 2",
    # 4: delete under DEFAULT identity: key only ('K')
    "DELETE FROM t_default WHERE id = 3",
    # 5-7: REPLICA IDENTITY FULL: insert, update with old row ('O') and 'u', delete ('O')
    f"INSERT INTO t_full VALUES (1, 'first', {BIG})",
    "UPDATE t_full SET note = 'second' WHERE id = 1",
    "DELETE FROM t_full WHERE id = 1",
    # 8: truncate of two tables, cascade + restart identity
    "INSERT INTO t_parent VALUES (1); INSERT INTO t_child (parent) VALUES (1)",
    "TRUNCATE t_parent, t_child RESTART IDENTITY CASCADE",
    # 10-11: logical messages, transactional and not
    "BEGIN; INSERT INTO t_parent VALUES (2);"
    " SELECT pg_logical_emit_message(true, 'cv', 'in tx'); COMMIT",
    "SELECT pg_logical_emit_message(false, 'cv-nontx', '\\x00ff'::bytea)",
    # 12: DDL: a new Relation message with the new shape
    "ALTER TABLE t_default ADD COLUMN extra bigint",
    "INSERT INTO t_default (id, name, extra) VALUES (4, 'four', 9000000000)",
    # 14: a big transaction with a rolled-back savepoint (streamed under proto 2)
    "BEGIN;"
    " INSERT INTO t_bulk SELECT i, 'row ' || i FROM generate_series(1, 1500) i;"
    " SAVEPOINT s1;"
    " INSERT INTO t_bulk SELECT i, 'gone ' || i FROM generate_series(1501, 3000) i;"
    " ROLLBACK TO SAVEPOINT s1;"
    " INSERT INTO t_bulk VALUES (5000, 'kept');"
    " COMMIT",
    # 15: a big aborted transaction (streamed, then Stream Abort of the whole xid)
    "BEGIN;"
    " INSERT INTO t_bulk SELECT i, 'aborted ' || i FROM generate_series(10001, 12000) i;"
    " ROLLBACK",
    # 16: a transaction from a replication origin (Origin message)
    "SELECT pg_replication_origin_session_setup('upstream');"
    " BEGIN; SELECT pg_replication_origin_xact_setup('0/AB', now());"
    " INSERT INTO t_parent VALUES (3); COMMIT;"
    " SELECT pg_replication_origin_session_reset()",
]

RECORDINGS = {
    "proto1.jsonl": ["proto_version", "1", "publication_names", "p", "messages", "true"],
    "proto2_stream.jsonl": [
        "proto_version", "2", "publication_names", "p", "messages", "true",
        "streaming", "on",
    ],
    "proto1_binary.jsonl": [
        "proto_version", "1", "publication_names", "p", "binary", "true",
    ],
}  # fmt: skip


def main() -> None:
    settings = {"logical_decoding_work_mem": "64kB"}
    server = PostgresServer(name="pgoutput-rec", extra_settings=settings)
    with server as pg, pg.connect() as conn:
        # One statement per call: a multi-statement string is one implicit
        # transaction, and slot creation refuses a transaction with writes.
        for step in [SETUP, *WORKLOAD]:
            for statement in filter(None, (s.strip() for s in step.split(";"))):
                conn.execute(statement)
        conn.execute(SESSION)
        for filename, options in RECORDINGS.items():
            rows = conn.execute(
                "SELECT lsn::text, xid::text, data FROM"
                " pg_logical_slot_peek_binary_changes('rec', NULL, NULL, VARIADIC %s)",
                (options,),
            ).fetchall()
            with (HERE / filename).open("w") as out:
                for lsn, xid, data in rows:
                    out.write(json.dumps({"lsn": lsn, "xid": xid, "data": bytes(data).hex()}))
                    out.write("\n")
            print(f"{filename}: {len(rows)} messages")


if __name__ == "__main__":
    main()
