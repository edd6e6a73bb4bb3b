"""Shared helpers for the MySQL source integration tests (no tests here; named to sit in
the test_mysql_* paths this connector owns)."""

from __future__ import annotations

import random
import time
from pathlib import Path

from agent.events import ChangeEvent, Heartbeat, Position, Transaction
from agent.settings import ArchiveSettings, EncryptionSettings, Settings, SourceSettings
from connectors.mysql import MySQLSource


def make_source(dsn: str, state_dir: Path, tables: list[str] | None = None,
                server_id: int | None = None) -> MySQLSource:
    settings = Settings(
        source=SourceSettings(type="mysql", dsn=dsn, tables=tables,
                              server_id=server_id or random.randint(1000, 2**31)),
        archive=ArchiveSettings(url=f"file://{state_dir}/archive"),
        encryption=EncryptionSettings(recipients=[state_dir / "archive.pub"]),
        state_dir=state_dir,
    )
    return MySQLSource(settings, state_dir, sleep=lambda s: time.sleep(min(s, 0.5)))


def collect(source: MySQLSource, count: int, timeout: float = 30.0,
            ) -> list[tuple[Transaction, list[ChangeEvent]]]:
    """The next `count` transactions from a fresh `stream()`."""
    out: list[tuple[Transaction, list[ChangeEvent]]] = []
    deadline = time.monotonic() + timeout
    stream = source.stream()
    try:
        for item in stream:
            if isinstance(item, Transaction):
                out.append((item, list(item.events)))
                if len(out) >= count:
                    break
            elif isinstance(item, Heartbeat):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} transactions in {timeout}s, got {len(out)}")
    finally:
        stream.close()
    return out


def last_position(txs: list[tuple[Transaction, list[ChangeEvent]]]) -> Position:
    return txs[-1][0].position
