"""Entity restore of the golden archive (format v1, made before `continues`,
`last_txid`, 1 KiB index chunks and snapshot-part indexes): every customer
at both recorded points comes back exactly as the whole restore has it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agent_process import cli
from tests.golden.make_golden import table_text
from tests.integration.test_golden_archive import MANIFEST, golden_copy


@pytest.mark.parametrize("point", ["mid", "end"])
def test_entity_restore_of_the_golden_archive(point: str, pg_database: Any, tmp_path: Path) -> None:
    config = golden_copy(tmp_path)
    expected = MANIFEST["restore"][point]
    customers = expected["tables"]["customers"]
    orders = expected["tables"]["orders"]
    for customer in ("1", "2", "3", "4", "5"):
        schema = f"golden_e_{point}_{customer}"
        proc = cli(["restore", "-c", str(config), "--to-position", expected["position"],
                    "--target-dsn", pg_database.dsn, "--target-schema", schema,
                    "--entity", f"customers.id={customer}",
                    "--private-key", str(tmp_path / "keys" / "archive.key")], timeout=180)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert table_text(pg_database.dsn, schema, "customers") == {
            "columns": customers["columns"],
            "rows": [r for r in customers["rows"] if r[0] == customer],
        }, (customer, proc.stdout)
        assert table_text(pg_database.dsn, schema, "orders") == {
            "columns": orders["columns"],
            "rows": [r for r in orders["rows"] if r[1] == customer],
        }, (customer, proc.stdout)
