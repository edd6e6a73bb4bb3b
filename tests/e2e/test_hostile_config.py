"""Broken or hostile configuration through the real CLI: exit code of CONTRACT.md,
one line on stderr naming the problem, no traceback, the password never echoed."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.agent_process import cli, make_keys, write_config
from tests.e2e.fault_tools import require_password
from tests.servers.postgres import PostgresServer

WRONG = "Wr0ng-pa55word-9d1f"
RIGHT = "R1ght-pa55word-77ab"


@pytest.fixture(scope="module")
def scram_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PostgresServer, str]]:
    server = PostgresServer(log_dir=tmp_path_factory.mktemp("pg-scram-logs"), name="pg-scram")
    try:
        server.start()
        yield server, require_password(server, RIGHT)
    finally:
        server.cleanup()


@pytest.fixture
def base(tmp_path: Path) -> dict[str, Any]:
    keys = make_keys(tmp_path / "keys")
    path = write_config(
        tmp_path / "base.yaml",
        source={"type": "postgres", "dsn": "postgresql://cv@127.0.0.1:1/db"},
        archive_url=(tmp_path / "archive").as_uri(), keys=keys, state_dir=tmp_path / "state",
    )
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


def assert_one_line(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


def _write(tmp_path: Path, doc: dict[str, Any] | str) -> Path:
    path = tmp_path / "cv.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


def _edit(fn: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def apply(doc: dict[str, Any]) -> dict[str, Any]:
        fn(doc)
        return doc

    return apply


CASES: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], str]] = {
    "unknown key": (_edit(lambda d: d["source"].update(slott="x")), "source.slott"),
    "unknown section": (_edit(lambda d: d.update(kafak={"a": 1})), "kafak"),
    "wrong type": (_edit(lambda d: d["archive"].update(segment_max_bytes="lots")), "archive.segment_max_bytes"),
    "wrong enum": (_edit(lambda d: d["source"].update(type="oracle")), "source.type"),
    "bad duration": (_edit(lambda d: d.update(retention="forever")), "retention"),
    "missing section": (_edit(lambda d: d.pop("encryption")), "encryption"),
    "missing password file": (_edit(lambda d: d["source"].update(password_file="/nonexistent/pw")),
                              "/nonexistent/pw"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_invalid_configuration_is_exit_2(name: str, base: dict[str, Any], tmp_path: Path) -> None:
    change, needle = CASES[name]
    config = _write(tmp_path, change(base))
    # Every command loads settings the same way; one of them per case is enough
    # except for the first case, which checks them all.
    commands = ("run", "check", "events", "verify") if name == "unknown key" else ("run",)
    for command in commands:
        assert_one_line(cli([command, "-c", str(config)]), 2, needle, str(config))


def test_malformed_yaml(tmp_path: Path) -> None:
    config = _write(tmp_path, "source: {type: postgres\n  dsn: [unclosed\n")
    assert_one_line(cli(["run", "-c", str(config)]), 2, "malformed YAML", str(config))


def test_missing_configuration_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert_one_line(cli(["run", "-c", str(missing)]), 2, str(missing))


def test_missing_key_file(base: dict[str, Any], tmp_path: Path) -> None:
    base["encryption"]["signing_key_file"] = str(tmp_path / "gone.key")
    config = _write(tmp_path, base)
    assert_one_line(cli(["run", "-c", str(config)]), 2, "gone.key")


def test_wrong_password_is_refused_without_echo(
    scram_pg: tuple[PostgresServer, str], base: dict[str, Any], tmp_path: Path
) -> None:
    _server, dsn = scram_pg
    (tmp_path / "pw").write_text(WRONG + "\n")
    base["source"] = {"type": "postgres", "dsn": dsn, "password_file": str(tmp_path / "pw")}
    config = _write(tmp_path, base)
    proc = cli(["check", "-c", str(config)])
    # The database refused us: a service error (CONTRACT.md exit 3), not a
    # configuration error.
    assert_one_line(proc, 3, "password authentication failed")
    assert WRONG not in proc.stderr + proc.stdout

    # `run` stops with exit 3 instead of retrying a refusal forever.
    proc = cli(["run", "-c", str(config)], timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "password authentication failed" in proc.stderr
    assert WRONG not in proc.stderr + proc.stdout

    # The same password inline in the DSN is redacted too.
    base["source"] = {"type": "postgres", "dsn": dsn.replace("@", f":{WRONG}@")}
    config = _write(tmp_path, base)
    proc = cli(["check", "-c", str(config)])
    assert_one_line(proc, 3)
    assert WRONG not in proc.stderr + proc.stdout
