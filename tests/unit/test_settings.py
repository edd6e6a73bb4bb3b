"""Settings: every error is one line naming the file and key, exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from agent.cli import main
from agent.errors import ConfigError
from agent.settings import load_settings, parse_duration

VALID = """\
source:
  type: postgres
  dsn: postgresql://changevault:s3cr3t-in-dsn@127.0.0.1:5432/shop
  tables: [public.customers, public.accounts]
archive:
  url: file:///var/lib/changevault/archive
encryption:
  recipients: [/etc/changevault/archive.pub]
  signing_key_file: /etc/changevault/signing.key
  keyhash_key_file: /etc/changevault/keyhash.key
state_dir: /var/lib/changevault/state
snapshot_interval: 24h
retention: 35d
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "changevault.yaml"
    path.write_text(text)
    return path


def test_valid_file_loads_with_defaults(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, VALID), environ={})
    assert s.source.type == "postgres"
    assert s.source.database == "shop"
    assert s.snapshot_interval == timedelta(hours=24)
    assert s.retention == timedelta(days=35)
    assert s.kafka is None
    assert s.metrics_listen == "127.0.0.1:9187"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (VALID + "colour: blue\n", "colour: unknown key"),
        (VALID.replace("  tables:", "  tabels:"), "source.tabels: unknown key"),
        (VALID.replace("retention: 35d", "retention: 35 days"), "retention: Value error, expected a duration"),
        (VALID.replace("snapshot_interval: 24h", "snapshot_interval: -1h"), "snapshot_interval"),
        (VALID.replace("type: postgres", "type: oracle"), "source.type"),
        (VALID.replace("state_dir: /var/lib/changevault/state\n", ""), "state_dir: required key is missing"),
        (VALID.replace("url: file:///var/lib/changevault/archive", "url: ftp://x"), "archive.url"),
        (VALID + "kafka:\n  bootstrap_servers: []\n", "kafka.bootstrap_servers"),
        (VALID + "kafka:\n  bootstrap_servers: [a:1]\n  replication_factor: one\n", "kafka.replication_factor"),
        (VALID.replace("slot", "slot") + "metrics_listen: nowhere\n", "metrics_listen"),
    ],
)
def test_each_error_names_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    message = str(info.value)
    assert message.startswith(str(path))
    assert expected in message
    assert "\n" not in message


def test_malformed_yaml_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "source:\n  type: postgres\n  dsn: [unclosed\nstate_dir: x\n")
    with pytest.raises(ConfigError, match=r"line \d+, column \d+: malformed YAML"):
        load_settings(path, environ={})


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_settings(tmp_path / "nope.yaml", environ={})
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_settings(write(tmp_path, "- a\n- b\n"), environ={})


def test_env_overrides_nested_and_lists(tmp_path: Path) -> None:
    env = {
        "CHANGEVAULT_SOURCE__DSN": "postgresql://other@db.example:6432/shop2",
        "CHANGEVAULT_SOURCE__TABLES": "[public.orders]",
        "CHANGEVAULT_RETENTION": "7d",
        "CHANGEVAULT_KAFKA__BOOTSTRAP_SERVERS": '["k1:9092", "k2:9092"]',
    }
    s = load_settings(write(tmp_path, VALID), environ=env)
    assert s.source.dsn == "postgresql://other@db.example:6432/shop2"
    assert s.source.tables == ["public.orders"]
    assert s.retention == timedelta(days=7)
    assert s.kafka is not None and s.kafka.bootstrap_servers == ["k1:9092", "k2:9092"]


def test_env_override_with_unknown_key_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"source\.dssn: unknown key.*CHANGEVAULT_SOURCE__DSSN"):
        load_settings(write(tmp_path, VALID), environ={"CHANGEVAULT_SOURCE__DSSN": "x"})


def test_password_file_is_read_and_never_printed(tmp_path: Path) -> None:
    secret = tmp_path / "db-password"
    secret.write_text("hunter2-very-secret\n")
    text = VALID.replace("  tables:", f"  password_file: {secret}\n  tables:")
    s = load_settings(write(tmp_path, text), environ={})
    assert s.source.password is not None
    assert s.source.password.get_secret_value() == "hunter2-very-secret"
    for rendering in (repr(s), str(s), repr(s.source), str(s.source)):
        assert "hunter2" not in rendering
        assert "s3cr3t-in-dsn" not in rendering
    assert "***" in repr(s.source)


def test_secret_from_environment_is_redacted(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, VALID), environ={"CHANGEVAULT_SOURCE__PASSWORD": "pw-from-env"})
    assert s.source.password is not None
    assert s.source.password.get_secret_value() == "pw-from-env"
    assert "pw-from-env" not in repr(s)


def test_invalid_secret_value_is_not_echoed(tmp_path: Path) -> None:
    # A wrong type for a secret must not print the value in the error.
    path = write(tmp_path, VALID)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={"CHANGEVAULT_SOURCE__PASSWORD": "[not-a-string-secret]"})
    assert "not-a-string-secret" not in str(info.value)


def test_unreadable_password_file(tmp_path: Path) -> None:
    text = VALID.replace("  tables:", f"  password_file: {tmp_path / 'missing'}\n  tables:")
    with pytest.raises(ConfigError, match="source.password_file: cannot read"):
        load_settings(write(tmp_path, text), environ={})


@pytest.mark.parametrize(("raw", "seconds"), [("90s", 90), ("30m", 1800), ("24h", 86400), ("35d", 35 * 86400), ("1w", 604800), (15, 15)])
def test_durations(raw: object, seconds: float) -> None:
    assert parse_duration(raw).total_seconds() == seconds


def test_cli_config_error_is_exit_2_one_line_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, VALID + "colour: blue\n")
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "check", "-c", str(path)],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
    )
    # check is wired to settings loading once capture lands; until then it
    # refuses as not available: either way exit 2, one line.
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr


def test_cli_usage_errors_are_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["restore", "-c", "x.yaml"]) == 2  # missing --to/--target-dsn
    assert main(["nonsense"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
