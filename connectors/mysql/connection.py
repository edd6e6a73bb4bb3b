"""Connection parameters from settings and the few server facts we need."""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import unquote, urlsplit

import pymysql

from agent.errors import ConfigError, RefusedError, ServiceError
from agent.settings import SourceSettings, TlsSettings


def connect_kwargs(source: SourceSettings) -> dict[str, Any]:
    """pymysql keyword arguments for `mysql://user@host:port/db` (password from settings)."""
    parts = urlsplit(source.dsn)
    if not parts.hostname:
        raise ConfigError(
            f"source.dsn: expected mysql://user@host:3306/db, found {source.redacted_dsn}")
    password = (source.password.get_secret_value() if source.password
                else unquote(parts.password or ""))
    kwargs: dict[str, Any] = {
        "host": parts.hostname,
        "port": parts.port or 3306,
        "user": unquote(parts.username or ""),
        "password": password,
        "charset": "utf8mb4",
        "connect_timeout": 10,
        "autocommit": True,
    }
    ctx = tls_context(source.tls)
    if ctx is not None:
        # One SSLContext serves pymysql and, through connection_settings, the
        # binlog stream (mysql-replication opens its connections with pymysql).
        kwargs["ssl"] = ctx
    elif source.tls is not None:
        kwargs["ssl_disabled"] = True
    return kwargs


def tls_context(tls: TlsSettings | None) -> ssl.SSLContext | None:
    """The SSLContext for `source.tls` (None: no TLS); bad files are exit 2, one line."""
    if tls is None or tls.mode == "disable":
        return None
    tls.require_readable_files("source.tls")
    try:
        # Without ca_file: the system's trusted CAs.
        ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"source.tls.ca_file: expected PEM CA certificates: {exc}") from None
    ctx.check_hostname = tls.mode == "verify-full"  # pymysql's ssl_verify_identity
    if tls.mode == "require":
        ctx.verify_mode = ssl.CERT_NONE  # encrypted, server unchecked
    if tls.cert_file and tls.key_file:
        try:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                f"source.tls.cert_file/key_file: expected a PEM certificate and its "
                f"unencrypted key: {exc}") from None
    return ctx


def connect(kwargs: dict[str, Any], what: str) -> pymysql.connections.Connection[Any]:
    try:
        return pymysql.connect(**kwargs)
    except pymysql.err.MySQLError as exc:
        # 1045 access denied, 1044 no access to the database: not transient.
        refused = bool(exc.args) and exc.args[0] in (1044, 1045)
        raise (RefusedError if refused else ServiceError)(
            f"could not connect to MySQL at {kwargs['host']}:{kwargs['port']} for {what}: "
            f"{exc.args[-1] if exc.args else exc}") from None


def query_one(conn: pymysql.connections.Connection[Any], sql: str,
              args: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        row = cur.fetchone()
    return tuple(row) if row is not None else None


def variable(conn: pymysql.connections.Connection[Any], name: str) -> str | None:
    row = query_one(conn, "SHOW GLOBAL VARIABLES LIKE %s", (name,))
    return None if row is None else str(row[1])


def is_mariadb(conn: pymysql.connections.Connection[Any]) -> bool:
    row = query_one(conn, "SELECT VERSION()")
    return row is not None and "mariadb" in str(row[0]).lower()


def collation_charsets(conn: pymysql.connections.Connection[Any]) -> dict[int, str]:
    """Collation id -> character set name, as this server numbers them."""
    with conn.cursor() as cur:
        cur.execute("SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATIONS")
        result = {int(r[0]): str(r[1]) for r in cur.fetchall() if r[0] is not None}
    result.setdefault(63, "binary")
    return result


def quote_identifier(name: str) -> str:
    """A backtick-quoted MySQL identifier."""
    return "`" + name.replace("`", "``") + "`"
