"""A private MariaDB server for tests: mariadb-install-db in a temp dir, one free port.

Configured like a binlog source changevault supports (log_bin, ROW format,
FULL row image and row metadata, gtid_strict_mode, server_id=1) and small
enough to start in about a second. root has an empty password over TCP; a
replication user `repl`/`replpw` has the least privileges a binlog reader needs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

import pymysql
import pymysql.cursors

from tests.servers.lifecycle import ServerProcess
from tests.servers.processes import (
    MissingServerBinary,
    ServerStartError,
    free_port,
    run_setup,
    spawn,
    tail,
    terminate,
    wait_until,
)

StopMode = Literal["clean", "kill"]

INSTALL_HINT = "apt-get install mariadb-server"

# Speed over durability: these servers live for one test session. Flushing at
# commit to the OS (not the disk) still survives a killed server process.
SERVER_OPTIONS: tuple[str, ...] = (
    "--bind-address=127.0.0.1",
    "--skip-name-resolve",
    "--binlog-format=ROW",
    "--binlog-row-image=FULL",
    "--binlog-row-metadata=FULL",
    "--gtid-strict-mode=ON",
    "--server-id=1",
    "--log-slave-updates=ON",
    "--sync-binlog=0",
    "--innodb-flush-log-at-trx-commit=2",
    "--innodb-doublewrite=0",
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=16M",
    "--innodb-use-native-aio=0",
    "--performance-schema=OFF",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_general_ci",
    "--max-connections=200",
)


def quote_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def find_binary(name: str, *candidates: str) -> Path:
    found = shutil.which(name)
    paths = [found] if found else []
    paths += [str(Path(c) / name) for c in candidates]
    for path in paths:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return Path(path)
    raise MissingServerBinary(
        f"expected the MariaDB binary {name!r} on PATH or in {list(candidates)}, "
        f"found none: {INSTALL_HINT}"
    )


class MariaDBServer(ServerProcess):
    """One MariaDB server. `start()` runs mariadb-install-db on first use."""

    host = "127.0.0.1"
    user = "root"
    password = ""
    repl_user = "repl"
    repl_password = "replpw"

    def __init__(
        self,
        *,
        log_dir: Path | None = None,
        extra_options: Sequence[str] = (),
        name: str = "mariadb",
    ) -> None:
        self.mariadbd = find_binary("mariadbd", "/usr/sbin", "/usr/local/mysql/bin")
        self._install_db = find_binary("mariadb-install-db", "/usr/bin", "/usr/local/mysql/bin")
        self._root = Path(tempfile.mkdtemp(prefix=f"cv-{name}-"))
        self.data_dir = self._root / "data"
        self.binlog_dir = self._root / "binlog"
        self.socket = str(self._root / "mysqld.sock")
        log_dir = log_dir or Path(tempfile.mkdtemp(prefix="cv-test-logs-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}-{self._root.name}.log"
        self._extra = tuple(extra_options)
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._started_once = False

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        if self.running:
            return
        fresh = not (self.data_dir / "mysql").is_dir()
        if fresh:
            self._install()
        self._start_on_free_port()
        if fresh:
            self._create_users()
        self._started_once = True

    def close(self) -> None:
        self.cleanup()

    def stop(self, mode: StopMode = "clean") -> None:
        """clean: normal shutdown (SIGTERM); kill: SIGKILL, crash recovery on start."""
        if self._process is not None:
            sig = signal.SIGTERM if mode == "clean" else signal.SIGKILL
            terminate(self._process, sig, timeout=60)
            self._process = None
        self._close_log()

    def restart(self, mode: StopMode = "clean") -> None:
        self.stop(mode)
        self.start()

    def cleanup(self) -> None:
        self.stop("kill")
        shutil.rmtree(self._root, ignore_errors=True)

    # -- connections ------------------------------------------------------------

    def dsn(self, db: str | None = None) -> str:
        return f"mysql://{self.user}@{self.host}:{self.port}/{db or ''}"

    def connect(self, db: str | None = None, **kwargs: Any) -> pymysql.connections.Connection[Any]:
        """An autocommit root connection over TCP (caller closes it)."""
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=db,
            autocommit=True,
            connect_timeout=10,
            **kwargs,
        )

    def execute(
        self,
        query: str,
        db: str | None = None,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
    ) -> list[tuple[Any, ...]]:
        """Run one statement in autocommit; returns its rows ([] if none)."""
        with self.connect(db) as conn, conn.cursor() as cur:
            cur.execute(query, params)
            return list(cur.fetchall()) if cur.description else []

    def create_database(self, name: str) -> str:
        self.execute(f"CREATE DATABASE {quote_identifier(name)}")
        return self.dsn(name)

    # -- internals --------------------------------------------------------------

    def _user_args(self) -> list[str]:
        # mariadbd refuses to run as root unless told to; the datadir is ours.
        return ["--user=root"] if os.geteuid() == 0 else []

    def _install(self) -> None:
        self.binlog_dir.mkdir(exist_ok=True)
        returncode, output = run_setup(
            [
                self._install_db,
                "--no-defaults",
                f"--datadir={self.data_dir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--innodb-log-file-size=16M",
                "--innodb-buffer-pool-size=32M",
                *self._user_args(),
            ]
        )
        if returncode != 0:
            raise ServerStartError(f"mariadb-install-db exited with {returncode}: {output[-2000:]}")

    def _start_once(self) -> None:
        self._log = self.log_path.open("ab")
        self._process = spawn(
            [
                self.mariadbd,
                "--no-defaults",
                *self._user_args(),
                f"--datadir={self.data_dir}",
                f"--socket={self.socket}",
                f"--port={self.port}",
                f"--pid-file={self._root / 'mariadbd.pid'}",
                f"--tmpdir={self._root}",
                f"--log-bin={self.binlog_dir / 'mariadb-bin'}",
                *SERVER_OPTIONS,
                *self._extra,
            ],
            self._log,
        )
        try:
            wait_until(
                self._accepts_connections,
                timeout=60,
                what=f"mariadbd on port {self.port}",
                log_path=self.log_path,
                process=self._process,
            )
        except ServerStartError:
            self.stop("kill")
            raise

    def _socket_connection(self) -> pymysql.connections.Connection[Any]:
        return pymysql.connect(
            unix_socket=self.socket, user="root", password="", autocommit=True, connect_timeout=2
        )

    def _accepts_connections(self) -> bool:
        # The unix socket: before _create_users root exists only @localhost.
        try:
            with self._socket_connection() as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
            return True
        except pymysql.err.OperationalError:
            return False

    def _create_users(self) -> None:
        statements = (
            "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'",
            "GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION",
            "CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s",
            "GRANT REPLICATION SLAVE, REPLICATION CLIENT, SELECT, RELOAD ON *.* TO %s@'%%'",
        )
        with self._socket_connection() as conn, conn.cursor() as cur:
            # Keep the binlog free of fixture setup: tests see only their own GTIDs.
            cur.execute("SET SESSION sql_log_bin = 0")
            for statement in statements[:2]:
                cur.execute(statement)
            cur.execute(statements[2], (self.repl_user, self.repl_password))
            cur.execute(statements[3], (self.repl_user,))

    def describe(self) -> str:
        return f"MariaDB {self.dsn()} data={self.data_dir} log={self.log_path}"

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)
