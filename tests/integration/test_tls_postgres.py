"""A real TLS connection: private PostgreSQL with ssl=on and a CA generated here.

The agent's own connection parameters (connectors.postgres.replication.
connection_params) reach the server encrypted and verified with verify-full;
a wrong CA or a certificate for another host name is refused; `check` and a
short `run` work over TLS, and every agent connection (walsender included)
is encrypted (pg_stat_ssl).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.settings import SourceSettings, TlsSettings
from connectors.postgres.replication import connection_params
from tests.e2e.agent_process import AgentProcess, cli, events, make_keys, wait_for, write_config
from tests.servers.postgres import PostgresServer

pytestmark = pytest.mark.xdist_group("tls_postgres")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], cn: str,
              names: list[x509.GeneralName]) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca[0].subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca[1], hashes.SHA256())
    )
    return cert, key


class TlsFiles:
    """A CA, a server certificate for 127.0.0.1, and an unrelated second CA, as PEM files."""

    def __init__(self, directory: Path, server_names: list[x509.GeneralName]) -> None:
        ca = make_ca("changevault test CA")
        other = make_ca("some other CA")
        server = make_leaf(ca, "changevault test server", server_names)  # the SAN names the host
        self.ca = directory / "ca.pem"
        self.other_ca = directory / "other-ca.pem"
        self.server_cert = directory / "server.pem"
        self.server_key = directory / "server.key"
        self.ca.write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
        self.other_ca.write_bytes(other[0].public_bytes(serialization.Encoding.PEM))
        self.server_cert.write_bytes(server[0].public_bytes(serialization.Encoding.PEM))
        self.server_key.write_bytes(_pem_key(server[1]))
        # PostgreSQL refuses a key readable by others, and runs as `postgres` under root.
        os.chmod(self.server_key, 0o600)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for f in (self.server_cert, self.server_key):
                os.chown(f, owner.pw_uid, owner.pw_gid)


def _tls_server(names: list[x509.GeneralName], tag: str) -> Iterator[tuple[PostgresServer, TlsFiles]]:
    directory = Path(tempfile.mkdtemp(prefix=f"cv-tls-{tag}-"))
    os.chmod(directory, 0o755)  # the server user must reach its certificate
    files = TlsFiles(directory, names)
    server = PostgresServer(name=f"postgres-tls-{tag}", extra_settings={
        "ssl": "on",
        "ssl_cert_file": f"'{files.server_cert}'",
        "ssl_key_file": f"'{files.server_key}'",
    })
    try:
        server.start()
        yield server, files
    finally:
        server.cleanup()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_pg() -> Iterator[tuple[PostgresServer, TlsFiles]]:
    yield from _tls_server([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                            x509.DNSName("localhost")], "ok")


def source(dsn: str, **tls: Any) -> SourceSettings:
    return SourceSettings(type="postgres", dsn=dsn, tls=TlsSettings(**tls) if tls else None)


def ssl_in_use(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    return bool(row and row[0])


def test_verify_full_with_our_ca_connects_encrypted(tls_pg: tuple[PostgresServer, TlsFiles]) -> None:
    server, files = tls_pg
    dsn = server.dsn()
    params = connection_params(source(dsn, mode="verify-full", ca_file=files.ca))
    assert params["sslmode"] == "verify-full" and params["sslrootcert"] == str(files.ca)
    with psycopg.connect(dsn, **params) as conn:
        assert ssl_in_use(conn)
    # verify-ca checks the chain only; require encrypts without checking.
    with psycopg.connect(dsn, **connection_params(source(dsn, mode="verify-ca", ca_file=files.ca))) as conn:
        assert ssl_in_use(conn)
    with psycopg.connect(dsn, **connection_params(source(dsn, mode="require"))) as conn:
        assert ssl_in_use(conn)
    # Without a tls section, the connection is libpq's default (prefer) — for contrast:
    with psycopg.connect(dsn, **connection_params(source(dsn, mode="disable"))) as conn:
        assert not ssl_in_use(conn)


def test_a_wrong_ca_is_refused(tls_pg: tuple[PostgresServer, TlsFiles]) -> None:
    server, files = tls_pg
    dsn = server.dsn()
    for mode in ("verify-ca", "verify-full"):
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            psycopg.connect(dsn, **connection_params(source(dsn, mode=mode, ca_file=files.other_ca)))


def test_verify_full_refuses_a_certificate_for_another_host() -> None:
    for server, files in _tls_server([x509.DNSName("db.example.invalid")], "wrongname"):
        dsn = server.dsn()
        with pytest.raises(psycopg.OperationalError, match="does not match host name"):
            psycopg.connect(dsn, **connection_params(source(dsn, mode="verify-full", ca_file=files.ca)))
        # verify-ca does not check the name: the same server is accepted.
        with psycopg.connect(dsn, **connection_params(source(dsn, mode="verify-ca", ca_file=files.ca))) as conn:
            assert ssl_in_use(conn)


def test_check_and_run_over_verify_full(tls_pg: tuple[PostgresServer, TlsFiles], tmp_path: Path) -> None:
    server, files = tls_pg
    dsn = server.create_database("cv_tls_run")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t VALUES (1, 'a')")
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"

    def config(ca: Path, name: str) -> Path:
        return write_config(
            tmp_path / name,
            source={"type": "postgres", "dsn": dsn, "slot": "cv_tls", "publication": "cv_tls",
                    "tls": {"mode": "verify-full", "ca_file": str(ca)}},
            archive_url=(tmp_path / "archive").as_uri(), keys=keys, state_dir=state,
        )

    bad = cli(["check", "-c", str(config(files.other_ca, "bad.yaml"))])
    assert bad.returncode != 0 and "certificate verify failed" in bad.stdout + bad.stderr
    good = config(files.ca, "cv.yaml")
    check = cli(["check", "-c", str(good)])
    assert check.returncode == 0, check.stdout + check.stderr

    agent = AgentProcess(good, tmp_path / "agent.log")
    try:
        wait_for(lambda: (state / "checkpoint.json").exists(), 60, "initial snapshot")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO t VALUES (2, 'b')")
            (end,) = conn.execute("SELECT pg_current_wal_lsn()").fetchone() or (None,)
            # Every connection the agent holds (the walsender too) is encrypted.
            rows = conn.execute(
                "SELECT a.backend_type, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"
                " WHERE a.application_name = 'changevault'"
            ).fetchall()
            assert rows and all(ssl for _type, ssl in rows), rows
            assert any(t == "walsender" for t, _ssl in rows), rows

        def durable() -> bool:
            with psycopg.connect(dsn, autocommit=True) as c:
                row = c.execute("SELECT confirmed_flush_lsn >= %s FROM pg_replication_slots"
                                " WHERE slot_name = 'cv_tls'", (end,)).fetchone()
            return bool(row and row[0])

        wait_for(durable, 60, "the insert to be durable")
    finally:
        assert agent.stop() == 0, agent.log()
    history = events(good, keys)
    assert [(e["op"], e["key"]) for e in history] == [("r", {"id": 1}), ("c", {"id": 2})]
