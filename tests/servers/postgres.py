"""A private PostgreSQL 15 cluster for tests: initdb in a temp dir, one free port.

Configured for logical decoding (wal_level=logical, 20 slots/senders) and
for speed (fsync, full_page_writes and synchronous_commit off). Trust auth on
the unix socket and 127.0.0.1, including replication connections.

PostgreSQL refuses to run as root, so under root initdb and postgres run as
the `postgres` OS user that Debian's package creates.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

import psycopg
from psycopg import sql

from tests.servers.lifecycle import ServerProcess
from tests.servers.processes import (
    MissingServerBinary,
    ServerStartError,
    free_port,
    require_executable,
    run_setup,
    spawn,
    tail,
    terminate,
    wait_until,
)

StopMode = Literal["smart", "fast", "immediate"]

INSTALL_HINT = "apt-get install postgresql-15"
_CANDIDATE_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/local/pgsql/bin")
_STOP_SIGNALS: dict[str, int] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}

BASE_SETTINGS: dict[str, str] = {
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "max_connections": "100",
    "fsync": "off",
    # on: an immediate stop must not lose acknowledged commits, and slots only
    # decode flushed WAL; with fsync=off it costs nothing.
    "synchronous_commit": "on",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "max_wal_size": "256MB",
    "checkpoint_timeout": "30min",
    "wal_sender_timeout": "60s",
    "log_min_messages": "warning",
    "log_connections": "off",
    "log_line_prefix": "'%m [%p] %q%u@%d '",
    "timezone": "'UTC'",
    "unix_socket_permissions": "0777",
}


def find_bin_dir() -> Path:
    """The PostgreSQL 15 bin dir; CV_TEST_PG_BIN_DIR overrides the search."""
    override = os.environ.get("CV_TEST_PG_BIN_DIR")
    candidates = [override] if override else list(_CANDIDATE_BIN_DIRS)
    pg_config = shutil.which("pg_config")
    if not override and pg_config:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            ).stdout.strip()
            candidates.append(out)
    for candidate in candidates:
        path = Path(candidate)
        if (path / "initdb").is_file() and (path / "postgres").is_file():
            return path
    raise MissingServerBinary(
        f"expected PostgreSQL 15 binaries (initdb, postgres) in one of {candidates}, "
        f"found none: {INSTALL_HINT}"
    )


def _run_as_user() -> str | None:
    """The OS user to run PostgreSQL as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise MissingServerBinary(
            "running as root needs the unprivileged OS user 'postgres' for initdb/postgres, "
            f"found none: {INSTALL_HINT} (creates it) or `useradd postgres`"
        ) from None
    return "postgres"


class PostgresServer(ServerProcess):
    """One PostgreSQL cluster. `start()` runs initdb on first use.

    `extra_settings` are appended to postgresql.conf verbatim (values as they
    would appear there, e.g. {"logical_decoding_work_mem": "64kB"}), so a test
    can start a dedicated server with unusual settings.
    """

    host = "127.0.0.1"
    superuser = "postgres"

    def __init__(
        self,
        *,
        log_dir: Path | None = None,
        extra_settings: Mapping[str, str] | None = None,
        name: str = "postgres",
    ) -> None:
        self.bin_dir = find_bin_dir()
        self._user = _run_as_user()
        self._root = Path(tempfile.mkdtemp(prefix=f"cv-{name}-"))
        self.data_dir = self._root / "data"
        self.socket_dir = self._root / "sock"
        log_dir = log_dir or Path(tempfile.mkdtemp(prefix="cv-test-logs-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}-{self._root.name}.log"
        self._extra = dict(extra_settings or {})
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._started_once = False

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        if self.running:
            return
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._start_on_free_port()

    bind_error = "could not bind"

    def _port_changed(self) -> None:
        self._write_port()

    def close(self) -> None:
        self.cleanup()

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop like `pg_ctl stop -m mode`: smart waits for clients, fast rolls
        back and disconnects them, immediate is a crash (recovery on start)."""
        if self._process is not None:
            terminate(self._process, _STOP_SIGNALS[mode], timeout=60)
            self._process = None
        self._close_log()

    def restart(self, mode: StopMode = "fast") -> None:
        self.stop(mode)
        self.start()

    def cleanup(self) -> None:
        """Stop (immediately: the data is thrown away) and delete the data dir."""
        self.stop("immediate")
        shutil.rmtree(self._root, ignore_errors=True)

    # -- connections ------------------------------------------------------------

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.superuser}@{self.host}:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
        """An autocommit superuser connection (caller closes it)."""
        return psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=10, **kwargs)

    def execute(
        self,
        query: str | sql.Composable,
        dbname: str = "postgres",
        params: Sequence[Any] | Mapping[str, Any] | None = None,
    ) -> list[tuple[Any, ...]]:
        """Run one statement in autocommit; returns its rows ([] if none)."""
        with self.connect(dbname) as conn, conn.cursor() as cur:
            cur.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description is not None else []

    def create_database(self, name: str) -> str:
        self.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def set_config(self, name: str, value: str) -> None:
        """ALTER SYSTEM SET name = value, then reload; restarts (fast) only if
        the setting needs it (e.g. max_replication_slots)."""
        self.execute(
            sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
        )
        self.execute("SELECT pg_reload_conf()")
        rows = self.execute(
            "SELECT pending_restart FROM pg_settings WHERE name = %s", params=(name,)
        )
        if rows and rows[0][0]:
            self.restart("fast")

    # -- internals --------------------------------------------------------------

    def _initdb(self) -> None:
        for directory in (self._root, self.socket_dir):
            directory.mkdir(exist_ok=True)
            self._chown(directory)
        initdb = require_executable(self.bin_dir / "initdb", INSTALL_HINT)
        returncode, output = run_setup(
            [
                initdb,
                "-D", str(self.data_dir),
                "-U", self.superuser,
                "--auth=trust",
                "--no-sync",
                "--no-instructions",
                "--encoding=UTF8",
                "--locale=C",
            ],
            user=self._user,
        )  # fmt: skip
        if returncode != 0:
            raise ServerStartError(f"initdb exited with {returncode}: {output[-2000:]}")
        hba = (
            "local all all trust\n"
            "local replication all trust\n"
            "host all all 127.0.0.1/32 trust\n"
            "host replication all 127.0.0.1/32 trust\n"
        )
        (self.data_dir / "pg_hba.conf").write_text(hba)
        settings = {
            **BASE_SETTINGS,
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
        }
        settings.update(self._extra)
        conf = "".join(f"{key} = {value}\n" for key, value in settings.items())
        with (self.data_dir / "postgresql.conf").open("a") as fh:
            fh.write("\n# changevault test server\n" + conf)
            fh.write("include_if_exists = 'port.conf'\n")
        self._write_port()

    def _write_port(self) -> None:
        # A separate file, so a port retry does not rewrite postgresql.conf.
        port_conf = self.data_dir / "port.conf"
        port_conf.write_text(f"port = {self.port}\n")
        self._chown(port_conf)

    def _chown(self, path: Path) -> None:
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _start_once(self) -> None:
        postgres = require_executable(self.bin_dir / "postgres", INSTALL_HINT)
        self._log = self.log_path.open("ab")
        # SIGQUIT on parent death: postgres' own immediate shutdown, which also
        # ends its backends, where SIGKILL would orphan them.
        self._process = spawn(
            [postgres, "-D", self.data_dir],
            self._log,
            user=self._user,
            death_signal=signal.SIGQUIT,
        )
        try:
            wait_until(
                self._accepts_connections,
                timeout=60,
                what=f"postgres on port {self.port}",
                log_path=self.log_path,
                process=self._process,
            )
        except ServerStartError:
            self.stop("immediate")
            raise
        self._started_once = True

    def _accepts_connections(self) -> bool:
        try:
            with psycopg.connect(self.dsn(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def describe(self) -> str:
        return f"PostgreSQL {self.dsn()} data={self.data_dir} log={self.log_path}"

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)
