"""TLS settings: bad combinations are exit 2 with one line; good ones reach each driver exactly.

(No server needed; the real TLS handshakes are in test_tls_postgres.py and
test_tls_mysql.py.)
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.errors import ConfigError
from agent.settings import KafkaSecurity, KafkaSettings, SourceSettings, TlsSettings, load_settings
from connectors.kafka.client_config import connection_kwargs
from connectors.kafka.confluent_producer import security_config
from connectors.mysql.connection import connect_kwargs
from connectors.postgres.replication import connection_params
from tests.e2e.agent_process import cli
from tests.integration.test_tls_postgres import TlsFiles


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    import ipaddress

    from cryptography import x509

    return TlsFiles(tmp_path_factory.mktemp("pem"), [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])


def config_file(tmp: Path, source_tls: Any = None, kafka_security: Any = None,
                source_type: str = "postgres") -> Path:
    dsn = "postgresql://cv@127.0.0.1:1/db" if source_type == "postgres" else "mysql://cv@127.0.0.1:1/db"
    doc: dict[str, Any] = {
        "source": {"type": source_type, "dsn": dsn},
        "archive": {"url": (tmp / "archive").as_uri()},
        "encryption": {"recipients": [str(tmp / "archive.pub")]},
        "state_dir": str(tmp / "state"),
    }
    if source_tls is not None:
        doc["source"]["tls"] = source_tls
    if kafka_security is not None:
        doc["kafka"] = {"bootstrap_servers": ["127.0.0.1:1"], "security": kafka_security}
    path = tmp / "cv.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


BAD_SOURCE_TLS = [
    ({"mode": "disable", "ca_file": "/x/ca.pem"}, "mode disable uses no certificates"),
    ({"mode": "verify-ca"}, "mode verify-ca expected ca_file"),
    ({"mode": "verify-full", "key_file": "/x/k.pem"}, "expected cert_file and key_file together"),
    ({"mode": "require", "cert_file": "/x/c.pem"}, "expected cert_file and key_file together"),
    ({"mode": "verify-fully"}, "source.tls.mode"),
    ({"mode": "require", "sslmode": "require"}, "source.tls.sslmode: unknown key"),
]
BAD_KAFKA_SECURITY = [
    ({"protocol": "PLAINTEXT", "ca_file": "/x/ca.pem"}, "does not use TLS, found ca_file"),
    ({"protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "username": "u", "password": "p",
      "check_hostname": False}, "does not use TLS, found check_hostname"),
    ({"protocol": "SSL", "username": "u"}, "does not use username"),
    ({"protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "username": "u"}, "needs password_file"),
    ({"protocol": "SASL_SSL", "username": "u", "password": "p"}, "needs sasl_mechanism and username"),
    ({"protocol": "SSL", "cert_file": "/x/c.pem"}, "expected cert_file and key_file together"),
    ({"protocol": "TLS"}, "kafka.security.protocol"),
]


@pytest.mark.parametrize(("tls", "message"), BAD_SOURCE_TLS)
def test_bad_source_tls_is_one_line(tmp_path: Path, tls: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_settings(config_file(tmp_path, source_tls=tls), environ={})
    assert "\n" not in str(err.value) and "source.tls" in str(err.value)


@pytest.mark.parametrize(("security", "message"), BAD_KAFKA_SECURITY)
def test_bad_kafka_security_is_one_line(tmp_path: Path, security: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_settings(config_file(tmp_path, kafka_security=security), environ={})
    text = str(err.value)
    assert "\n" not in text and "kafka.security" in text and "'p'" not in text


def test_the_cli_exits_2_without_a_traceback(tmp_path: Path) -> None:
    proc = cli(["check", "-c", str(config_file(tmp_path, source_tls={"mode": "verify-ca"}))])
    assert proc.returncode == 2
    assert proc.stderr.count("\n") <= 1 and "Traceback" not in proc.stderr
    assert "verify-ca expected ca_file" in proc.stderr


@pytest.mark.parametrize("source_type", ["postgres", "mysql"])
def test_an_unreadable_tls_file_is_exit_2_naming_the_key(tmp_path: Path, source_type: str) -> None:
    src = SourceSettings(
        type=source_type,  # type: ignore[arg-type]
        dsn=("postgresql" if source_type == "postgres" else "mysql") + "://cv@127.0.0.1:1/db",
        tls=TlsSettings(mode="verify-full", ca_file=tmp_path / "missing-ca.pem"),
    )
    build = connection_params if source_type == "postgres" else connect_kwargs
    with pytest.raises(ConfigError, match=r"source\.tls\.ca_file: expected a readable PEM file"):
        build(src)


def test_a_ca_file_that_is_not_pem_is_exit_2_for_mysql(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate")
    src = SourceSettings(type="mysql", dsn="mysql://cv@h:1/db",
                         tls=TlsSettings(mode="verify-full", ca_file=junk))
    with pytest.raises(ConfigError, match=r"source\.tls\.ca_file: expected PEM CA certificates"):
        connect_kwargs(src)


# ------------------------------------------------------------- pass-through


def test_postgres_libpq_parameters(pem: TlsFiles) -> None:
    def params(**tls: Any) -> dict[str, Any]:
        p = connection_params(SourceSettings(type="postgres", dsn="postgresql://cv@h/db",
                                             tls=TlsSettings(**tls)))
        return {k: v for k, v in p.items() if k.startswith("ssl")}

    assert params(mode="verify-full", ca_file=pem.ca, cert_file=pem.server_cert,
                  key_file=pem.server_key) == {
        "sslmode": "verify-full", "sslrootcert": str(pem.ca),
        "sslcert": str(pem.server_cert), "sslkey": str(pem.server_key),
    }
    assert params(mode="verify-ca", ca_file=pem.ca) == {"sslmode": "verify-ca", "sslrootcert": str(pem.ca)}
    # No CA file: the system's trusted CAs (libpq >= 16), not ~/.postgresql/root.crt.
    assert params(mode="verify-full") == {"sslmode": "verify-full", "sslrootcert": "system"}
    assert params(mode="require") == {"sslmode": "require"}
    assert params(mode="disable") == {"sslmode": "disable"}
    no_tls = connection_params(SourceSettings(type="postgres", dsn="postgresql://cv@h/db"))
    assert not any(k.startswith("ssl") for k in no_tls)


def test_mysql_ssl_context_per_mode(pem: TlsFiles) -> None:
    def ctx(**tls: Any) -> Any:
        kwargs = connect_kwargs(SourceSettings(type="mysql", dsn="mysql://cv@h:1/db",
                                               tls=TlsSettings(**tls)))
        return kwargs.get("ssl"), kwargs.get("ssl_disabled")

    full, _ = ctx(mode="verify-full", ca_file=pem.ca)
    assert isinstance(full, ssl.SSLContext)
    assert full.check_hostname and full.verify_mode == ssl.CERT_REQUIRED
    assert [c["subject"] for c in full.get_ca_certs()] == [((("commonName", "changevault test CA"),),)]
    ca_only, _ = ctx(mode="verify-ca", ca_file=pem.ca, cert_file=pem.server_cert, key_file=pem.server_key)
    assert not ca_only.check_hostname and ca_only.verify_mode == ssl.CERT_REQUIRED
    req, _ = ctx(mode="require")
    assert not req.check_hostname and req.verify_mode == ssl.CERT_NONE
    assert ctx(mode="disable") == (None, True)
    assert "ssl" not in connect_kwargs(SourceSettings(type="mysql", dsn="mysql://cv@h:1/db"))


def test_kafka_both_backends_get_the_same_security() -> None:
    security = KafkaSecurity(protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256", username="cv",
                             password_file=Path("/run/secrets/kafka"), ca_file=Path("/etc/ca.pem"),
                             cert_file=Path("/etc/c.pem"), key_file=Path("/etc/k.pem"))
    settings = KafkaSettings(bootstrap_servers=["b:9093"], replication_factor=1, min_insync_replicas=1,
                             security=security)
    py = connection_kwargs(settings, "cv")
    assert {k: py[k] for k in ("security_protocol", "ssl_cafile", "ssl_certfile", "ssl_keyfile",
                               "ssl_check_hostname", "sasl_mechanism", "sasl_plain_username")} == {
        "security_protocol": "SASL_SSL", "ssl_cafile": "/etc/ca.pem", "ssl_certfile": "/etc/c.pem",
        "ssl_keyfile": "/etc/k.pem", "ssl_check_hostname": True, "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "cv",
    }
    conf = security_config(security)
    assert conf["ssl.endpoint.identification.algorithm"] == "https"
    assert (conf["ssl.ca.location"], conf["ssl.certificate.location"], conf["ssl.key.location"]) == (
        "/etc/ca.pem", "/etc/c.pem", "/etc/k.pem")
    assert conf["security.protocol"] == "SASL_SSL" and conf["sasl.mechanism"] == "SCRAM-SHA-256"
