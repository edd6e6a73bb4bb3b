"""The configuration of CONTRACT.md as strict pydantic models.

Unknown keys are rejected (they are usually typos), every error names the file
and the key, secrets are `SecretStr` and DSN passwords are redacted from every
repr. `load_settings` is the only entry point: YAML file, then
`CHANGEVAULT_<SECTION>__<KEY>` environment overrides, then `*_file` secrets.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.errors import ConfigError

ENV_PREFIX = "CHANGEVAULT_"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")


def parse_duration(value: object) -> timedelta:
    """`90s`, `30m`, `24h`, `35d`, `1w`; a bare number means seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"expected a duration like 90s, 30m, 24h or 35d, found {value!r}")
    if seconds <= 0:
        raise ValueError(f"expected a positive duration, found {value!r}")
    return timedelta(seconds=seconds)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def redact_url(url: str) -> str:
    """The URL with any password replaced by `***` (safe for logs and errors)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _identifier_parts(text: str) -> list[str]:
    """Split on unquoted dots; a part is `"..."` (`""` inside is one `"`) or plain text."""
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            out: list[str] = []
            i += 1
            while True:
                end = text.find('"', i)
                if end < 0:
                    raise ValueError("a quoted name is not closed")
                out.append(text[i:end])
                if text.startswith('""', end):
                    out.append('"')
                    i = end + 2
                    continue
                i = end + 1
                break
            part = "".join(out)
            if i < n and text[i] != ".":
                raise ValueError(f"expected . or the end after a quoted name, found {text[i]!r}")
        else:
            end = text.find(".", i)
            end = n if end < 0 else end
            part = text[i:end]
            if '"' in part:
                raise ValueError('a " inside an unquoted name (quote the name, doubling the ")')
            if part != part.strip():
                raise ValueError("spaces around an unquoted name (quote it to keep them)")
            i = end
        if not part:
            raise ValueError("an empty name")
        if "\x00" in part:
            raise ValueError("a NUL character")
        parts.append(part)
        if i >= n:
            return parts
        i += 1  # the separating dot
        if i >= n:
            raise ValueError("an empty name after the last dot")


def parse_table_name(text: str) -> tuple[str | None, str]:
    """`table` or `schema.table` (MySQL: `database.table`) -> (schema or None, table).

    Names are taken exactly as written: no case folding, no SQL parsing. A part
    that contains `.` or `"` or starts/ends with a space is double-quoted, with
    `""` standing for one `"`: `"Kunden Übersicht"."order""s"`. More than one
    unquoted dot is an error rather than a guess.
    """
    try:
        parts = _identifier_parts(text)
    except ValueError as exc:
        raise ValueError(
            f'expected table or schema.table (quote a name with . or " as "a.b", '
            f'doubling " inside), found {text!r}: {exc}'
        ) from None
    if len(parts) > 2:
        raise ValueError(
            f"expected table or schema.table, found {len(parts)} dot-separated names in "
            f'{text!r} (quote a name that contains a dot: schema."a.b")'
        )
    return (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def format_table_name(schema: str | None, table: str) -> str:
    """The inverse of `parse_table_name`: quotes only the parts that need it."""

    def one(part: str) -> str:
        if "." in part or '"' in part or part != part.strip() or not part:
            return '"' + part.replace('"', '""') + '"'
        return part

    return one(table) if schema is None else f"{one(schema)}.{one(table)}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


def _client_cert_pair(cert_file: Path | None, key_file: Path | None) -> None:
    if (cert_file is None) != (key_file is None):
        raise ValueError(
            "expected cert_file and key_file together (a client certificate and its key), "
            f"found only {'cert_file' if cert_file is not None else 'key_file'}"
        )


class TlsSettings(_Strict):
    """The database connection's TLS (docs/security.md).

    `require` encrypts without checking the server; `verify-ca` checks the chain
    against `ca_file`; `verify-full` also checks the host name, against `ca_file`
    or the system's trusted CAs.
    """

    mode: Literal["disable", "require", "verify-ca", "verify-full"] = "verify-full"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TlsSettings:
        files = [n for n in ("ca_file", "cert_file", "key_file") if getattr(self, n) is not None]
        if self.mode == "disable" and files:
            raise ValueError(
                f"mode disable uses no certificates, found {', '.join(files)}; "
                f"remove them or choose require, verify-ca or verify-full"
            )
        if self.mode == "verify-ca" and self.ca_file is None:
            raise ValueError(
                "mode verify-ca expected ca_file (the private CA to check against), found none; "
                "for a publicly trusted server certificate use verify-full"
            )
        _client_cert_pair(self.cert_file, self.key_file)
        return self

    def require_readable_files(self, where: str) -> None:
        """ConfigError (exit 2) naming the key of a TLS file that cannot be read."""
        for name in ("ca_file", "cert_file", "key_file"):
            path: Path | None = getattr(self, name)
            if path is None:
                continue
            try:
                with path.open("rb"):
                    pass
            except OSError as exc:
                raise ConfigError(
                    f"{where}.{name}: expected a readable PEM file, found {path}: {exc.strerror}"
                ) from None


class SourceSettings(_Strict):
    type: Literal["postgres", "mysql"]
    dsn: str = Field(repr=False)
    password_file: Path | None = None
    password: SecretStr | None = None  # from CHANGEVAULT_SOURCE__PASSWORD or password_file
    tables: list[str] | None = None
    slot: str = "changevault"
    publication: str = "changevault"
    server_id: int = Field(default=5400, ge=1, le=2**32 - 1)
    tls: TlsSettings | None = None
    heartbeat_interval: Duration = timedelta(seconds=10)

    @field_validator("dsn")
    @classmethod
    def _dsn_scheme(cls, v: str) -> str:
        scheme = urlsplit(v).scheme
        if scheme not in ("postgresql", "postgres", "mysql", "mariadb"):
            raise ValueError(
                "expected a URL like postgresql://user@host:5432/db or mysql://user@host:3306/db"
            )
        return v

    @field_validator("slot", "publication")
    @classmethod
    def _pg_name(cls, v: str) -> str:
        if not _SLOT_NAME.match(v):
            raise ValueError(f"expected lower-case letters, digits and _ (max 63), found {v!r}")
        return v

    @field_validator("tables")
    @classmethod
    def _tables(cls, v: list[str] | None) -> list[str] | None:
        for name in v or []:
            parse_table_name(name)
        return v

    @property
    def table_names(self) -> list[tuple[str | None, str]] | None:
        """`tables` parsed: (schema or None, table), names exactly as the catalog has them."""
        return None if self.tables is None else [parse_table_name(t) for t in self.tables]

    @model_validator(mode="after")
    def _scheme_matches_type(self) -> SourceSettings:
        scheme = urlsplit(self.dsn).scheme
        want = ("postgresql", "postgres") if self.type == "postgres" else ("mysql", "mariadb")
        if scheme not in want:
            raise ValueError(f"source.type is {self.type} but the dsn scheme is {scheme}")
        return self

    @property
    def redacted_dsn(self) -> str:
        return redact_url(self.dsn)

    @property
    def database(self) -> str:
        return urlsplit(self.dsn).path.lstrip("/")

    def __repr_args__(self) -> Any:
        yield "dsn", self.redacted_dsn
        yield from super().__repr_args__()


class EntityLink(_Strict):
    """`from` column refers to `to` column where the schema has no foreign key."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    from_: str = Field(alias="from")
    to: str

    @field_validator("from_", "to")
    @classmethod
    def _qualified(cls, v: str) -> str:
        if v.count(".") not in (1, 2) or any(not p for p in v.split(".")):
            raise ValueError(f"expected [schema.]table.column, found {v!r}")
        return v


class KafkaSecurity(_Strict):
    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    check_hostname: bool = True

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSecurity:
        sasl = self.protocol.startswith("SASL")
        if sasl and (self.sasl_mechanism is None or self.username is None):
            raise ValueError(f"{self.protocol} needs sasl_mechanism and username")
        if sasl and self.password is None and self.password_file is None:
            raise ValueError(
                f"{self.protocol} needs password_file (or CHANGEVAULT_KAFKA__SECURITY__PASSWORD)"
            )
        given = self.model_fields_set
        sasl_keys = [k for k in ("sasl_mechanism", "username", "password", "password_file")
                     if k in given and getattr(self, k) is not None]
        if not sasl and sasl_keys:
            raise ValueError(
                f"protocol {self.protocol} does not use {', '.join(sasl_keys)}; "
                f"choose SASL_SSL (or SASL_PLAINTEXT) or remove them"
            )
        tls_keys = [k for k in ("ca_file", "cert_file", "key_file", "check_hostname")
                    if k in given and getattr(self, k) is not None]
        if self.protocol not in ("SSL", "SASL_SSL") and tls_keys:
            raise ValueError(
                f"protocol {self.protocol} does not use TLS, found {', '.join(tls_keys)}; "
                f"choose SSL or SASL_SSL or remove them"
            )
        _client_cert_pair(self.cert_file, self.key_file)
        return self


class KafkaSettings(_Strict):
    bootstrap_servers: list[str] = Field(min_length=1)
    topic_prefix: str = Field(default="changevault", pattern=r"^[A-Za-z0-9._-]{1,100}$")
    replication_factor: int = Field(default=3, ge=1)
    min_insync_replicas: int = Field(default=2, ge=1)
    partitions: int = Field(default=1, ge=1)
    # zstd: ~3x the throughput of gzip on the same broker, smaller too.
    compression: Literal["gzip", "zstd", "none"] = "zstd"
    security: KafkaSecurity | None = None
    # kafka-python is pure Python (~6k msg/s here); confluent-kafka (librdkafka,
    # the `kafka-fast` extra) is ~15x faster. Same sink, same guarantees.
    producer: Literal["kafka-python", "confluent-kafka"] = "kafka-python"

    @model_validator(mode="after")
    def _isr(self) -> KafkaSettings:
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError("min_insync_replicas must not exceed replication_factor")
        return self


class ArchiveSettings(_Strict):
    url: str
    s3_endpoint_url: str | None = None
    segment_max_bytes: int = Field(default=8 * 1024 * 1024, ge=4096)
    segment_max_age: Duration = timedelta(seconds=10)

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme == "file" and parts.path.startswith("/"):
            return v
        if parts.scheme == "s3" and parts.netloc:
            return v
        raise ValueError(f"expected file:///absolute/path or s3://bucket/prefix, found {v!r}")


class EncryptionSettings(_Strict):
    recipients: list[Path] = Field(min_length=1)
    signing_key_file: Path | None = None
    trusted_signing_keys: list[Path] = Field(default_factory=list)
    keyhash_key_file: Path | None = None
    private_key_file: Path | None = None
    data_key_max_age: Duration = timedelta(hours=1)
    data_key_max_messages: int = Field(default=1_000_000, ge=1)


class Settings(_Strict):
    source: SourceSettings
    entity_links: list[EntityLink] = Field(default_factory=list)
    kafka: KafkaSettings | None = None
    archive: ArchiveSettings
    encryption: EncryptionSettings
    state_dir: Path
    snapshot_interval: Duration = timedelta(hours=24)
    retention: Duration = timedelta(days=35)
    metrics_listen: str = Field(default="127.0.0.1:9187", pattern=r"^[^:\s]*:\d{1,5}$")
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Where this settings object was read from, for error messages.
    origin: str = Field(default="<settings>", exclude=True)


# ------------------------------------------------------------------- loading


def _env_overrides(environ: Mapping[str, str]) -> dict[str, tuple[str, Any]]:
    """`CHANGEVAULT_SOURCE__DSN=...` -> {"source.dsn": (var, value)}; values are YAML."""
    out: dict[str, tuple[str, Any]] = {}
    for var, raw in environ.items():
        if not var.startswith(ENV_PREFIX):
            continue
        path = ".".join(p.lower() for p in var[len(ENV_PREFIX) :].split("__"))
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        # Scalars stay strings where the YAML reading would change them
        # (a DSN or password that looks like a number or a date).
        if not isinstance(value, list | dict):
            value = raw
        out[path] = (var, value)
    return out


def _set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    node = doc
    parts = path.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _read_secret(path: Path, where: str) -> str:
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None


def _describe(err: Mapping[str, Any], env_keys: Mapping[str, str]) -> str:
    loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, int) or True)
    loc = loc.replace("from_", "from")
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; see CONTRACT.md)"
    elif err["type"] == "missing":
        msg = "required key is missing"
    src = env_keys.get(loc)
    return f"{loc}: {msg}" + (f" (from {src})" if src else "")


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, override and validate; raise ConfigError with one line on any fault."""
    environ = os.environ if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: configuration is not UTF-8 text") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: malformed YAML: {problem}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")

    overrides = _env_overrides(environ)
    for key, (_var, value) in overrides.items():
        _set_path(doc, key, value)
    env_keys = {key: var for key, (var, _value) in overrides.items()}

    try:
        settings = Settings.model_validate({**doc, "origin": str(path)})
    except ValidationError as exc:
        first = exc.errors()[0]
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more)" if more else ""
        raise ConfigError(f"{path}: {_describe(first, env_keys)}{suffix}") from None

    return _with_file_secrets(settings, path)


def _with_file_secrets(settings: Settings, path: Path) -> Settings:
    source = settings.source
    if source.password is None and source.password_file is not None:
        secret = _read_secret(source.password_file, f"{path}: source.password_file")
        source = source.model_copy(update={"password": SecretStr(secret)})
    kafka = settings.kafka
    if kafka and kafka.security and kafka.security.password_file and not kafka.security.password:
        secret = _read_secret(
            kafka.security.password_file, f"{path}: kafka.security.password_file"
        )
        security = kafka.security.model_copy(update={"password": SecretStr(secret)})
        kafka = kafka.model_copy(update={"security": security})
    return settings.model_copy(update={"source": source, "kafka": kafka})
