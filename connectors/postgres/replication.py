"""A walsender client on psycopg 3: replication commands and the COPY_BOTH stream.

psycopg's high-level API cannot drive a COPY_BOTH stream, so after
START_REPLICATION we talk to libpq through `pgconn`: `get_copy_data(1)` in
async mode, `select()` on the socket and `consume_input()` — a read never
blocks past its timeout, so the caller can send status updates and check its
stop flag. A replication connection accepts no bound parameters: every
command is built with psycopg.sql and sent with the simple query protocol.
"""

from __future__ import annotations

import select
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from agent.errors import ServiceError
from agent.settings import SourceSettings, TlsSettings
from connectors.postgres.pgtypes import REPLICATION_SESSION_SETTINGS

# Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_OFFSET_US = 946_684_800_000_000
# Stream message headers after the one-byte kind ('w' / 'k').
XLOGDATA = struct.Struct("!QQq")  # data start, WAL end, send time
KEEPALIVE = struct.Struct("!QqB")  # WAL end, send time, reply requested
_STATUS = struct.Struct("!cQQQqB")


def lsn_to_int(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def lsn_to_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def pg_time_to_datetime(micros: int) -> datetime:
    """A protocol timestamp (microseconds since 2000-01-01 UTC) as aware UTC."""
    return _PG_EPOCH + timedelta(microseconds=micros)


def _now_pg_micros() -> int:
    return time.time_ns() // 1000 - _PG_EPOCH_OFFSET_US


def connection_params(source: SourceSettings) -> dict[str, Any]:
    """Keyword arguments for psycopg.connect from the source settings (never logged)."""
    # The same session settings on every connection, so text values from the
    # snapshot and from pgoutput are printed identically.
    options = " ".join(f"-c {k}={v}" for k, v in REPLICATION_SESSION_SETTINGS.items())
    params: dict[str, Any] = {
        "application_name": "changevault",
        "connect_timeout": 10,
        "options": options,
    }
    if source.password is not None:
        params["password"] = source.password.get_secret_value()
    params.update(tls_params(source.tls))
    return params


def tls_params(tls: TlsSettings | None) -> dict[str, str]:
    """libpq's ssl* parameters for `source.tls`; unreadable files are exit 2 here."""
    if tls is None:
        return {}
    tls.require_readable_files("source.tls")
    params: dict[str, str] = {"sslmode": tls.mode}
    if tls.ca_file:
        params["sslrootcert"] = str(tls.ca_file)
    elif tls.mode == "verify-full" and psycopg.pq.version() >= 160000:
        # Without a CA file, check against the system's trusted CAs (as the
        # MySQL and Kafka connections do), not libpq's ~/.postgresql/root.crt.
        params["sslrootcert"] = "system"
    if tls.cert_file and tls.key_file:
        params["sslcert"] = str(tls.cert_file)
        params["sslkey"] = str(tls.key_file)
    return params


@dataclass(frozen=True, slots=True)
class SystemIdentity:
    system_id: str
    timeline: int
    xlogpos: int
    dbname: str | None


@dataclass(frozen=True, slots=True)
class CreatedSlot:
    name: str
    consistent_point: int
    snapshot_name: str | None


def standby_status(write: int, flush: int, apply: int, reply: bool = False) -> bytes:
    return _STATUS.pack(b"r", write, flush, apply, _now_pg_micros(), int(reply))


class ReplicationConnection:
    """One walsender session (`replication=database`)."""

    def __init__(self, dsn: str, params: dict[str, Any]) -> None:
        self._conn = psycopg.connect(dsn, replication="database", autocommit=True, **params)
        self._streaming = False

    @property
    def streaming(self) -> bool:
        return self._streaming

    @property
    def backend_pid(self) -> int:
        return self._conn.info.backend_pid

    def command(self, query: sql.SQL | sql.Composed) -> list[tuple[Any, ...]]:
        """Run one replication command (simple query protocol, no parameters)."""
        if self._streaming:
            raise ServiceError("replication connection is streaming; expected an idle connection")
        with self._conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchall() if cur.description else []

    def identify_system(self) -> SystemIdentity:
        row = self.command(sql.SQL("IDENTIFY_SYSTEM"))[0]
        return SystemIdentity(str(row[0]), int(row[1]), lsn_to_int(row[2]), row[3])

    def create_slot(
        self, name: str, *, temporary: bool = False, export_snapshot: bool = False
    ) -> CreatedSlot:
        """CREATE_REPLICATION_SLOT ... LOGICAL pgoutput (PostgreSQL 15 option syntax).

        With `export_snapshot` the snapshot stays importable only until the next
        command on this connection, so import it before streaming.
        """
        query = sql.SQL("CREATE_REPLICATION_SLOT {} {}LOGICAL pgoutput (SNAPSHOT {})").format(
            sql.Identifier(name),
            sql.SQL("TEMPORARY " if temporary else ""),
            sql.Literal("export" if export_snapshot else "nothing"),
        )
        row = self.command(query)[0]
        return CreatedSlot(str(row[0]), lsn_to_int(row[1]), row[2])

    def drop_slot(self, name: str) -> None:
        self.command(sql.SQL("DROP_REPLICATION_SLOT {} WAIT").format(sql.Identifier(name)))

    def start(self, slot: str, start_lsn: int, publications: Sequence[str]) -> None:
        """START_REPLICATION with pgoutput protocol 2: streaming and messages on."""
        pubs = ",".join(publications)
        query = sql.SQL(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '2', streaming 'on', "
            "publication_names {}, messages 'true')"
        ).format(sql.Identifier(slot), sql.SQL(lsn_to_text(start_lsn)), sql.Literal(pubs))
        pgconn = self._conn.pgconn
        pgconn.send_query(query.as_bytes(self._conn))
        # Wait for the CopyBoth response without blocking past a deadline.
        deadline = time.monotonic() + 30
        while True:
            self._wait_readable(1.0)
            pgconn.consume_input()
            if pgconn.is_busy():
                if time.monotonic() > deadline:
                    raise ServiceError("START_REPLICATION: no answer from the walsender in 30s")
                continue
            result = pgconn.get_result()
            if result is None:
                raise ServiceError("START_REPLICATION: the walsender closed the command")
            if result.status == psycopg.pq.ExecStatus.COPY_BOTH:
                break
            # An error: turn it into the matching psycopg exception (with sqlstate).
            raise psycopg.errors.error_from_result(result, encoding="utf-8")
        pgconn.nonblocking = 1
        self._streaming = True

    def _wait_readable(self, timeout: float) -> bool:
        readable, _, _ = select.select([self._conn.pgconn.socket], [], [], timeout)
        return bool(readable)

    def read_batch(self, timeout: float, limit: int = 4096) -> list[memoryview]:
        """Every complete message libpq already holds (at most `limit`), raw: the
        first byte is 'w' (XLogData: 24 header bytes, then the pgoutput payload)
        or 'k' (keepalive). Waits at most `timeout` for the first; [] if none came.

        One call per burst instead of per message, no message object and no copy
        here: each view owns its libpq buffer, the caller copies the payload once.
        """
        pgconn = self._conn.pgconn
        get = pgconn.get_copy_data
        out: list[memoryview] = []
        deadline = 0.0
        while True:
            nbytes, data = get(1)
            if nbytes > 0:
                out.append(data)
                if len(out) >= limit:
                    return out
                continue
            if nbytes == -1:
                # End of COPY: the server ended the stream (shutdown, terminate).
                result = pgconn.get_result()
                detail = result.error_message.decode(errors="replace") if result else ""
                raise psycopg.OperationalError(
                    f"walsender ended the stream {detail.strip()}".strip()
                )
            if out:
                return out
            now = time.monotonic()
            if not deadline:
                deadline = now + timeout
            elif now >= deadline:
                return out
            if self._wait_readable(deadline - now):
                pgconn.consume_input()

    def send_status(self, write: int, flush: int, apply: int, reply: bool = False) -> None:
        pgconn = self._conn.pgconn
        pgconn.put_copy_data(standby_status(write, flush, apply, reply))
        # Non-blocking flush: retry while libpq still holds unsent bytes.
        deadline = time.monotonic() + 10
        while pgconn.flush() == 1:
            if time.monotonic() > deadline:
                raise psycopg.OperationalError("could not send a standby status update in 10s")
            select.select([], [pgconn.socket], [], 1.0)

    def close(self) -> None:
        self._streaming = False
        self._conn.close()
