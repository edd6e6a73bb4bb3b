"""`make demo` is one of the README's two commands: it must keep working."""

from __future__ import annotations

import pytest

from demo.run import main


def test_demo_restores_the_balances_from_before_the_bad_update(capsys: pytest.CaptureFixture[str]) -> None:
    assert main() == 0
    out = capsys.readouterr().out
    assert "restored balances equal the balances just before the bad update: True" in out
    assert "checksum" in out and "ok" in out
