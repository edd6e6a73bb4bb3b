"""state_dir full or read-only while the agent captures: a clear error, the
checkpoint never half-written (the last good one stays), and once space or
write access returns the agent continues from it with nothing lost.

state_dir is a small tmpfs of its own (mounting needs root; without root the
read-only case is simulated with chmod, and the full case cannot be)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agent_process import AgentProcess, cli, make_keys, wait_for, write_config
from tests.e2e.fault_tools import (
    Workload,
    assert_exactly,
    change_ops,
    checkpoint_doc,
    checkpoint_lsn,
    create_schema,
    drain_and_stop,
    fold_items,
    lsn_int,
    one_error_line,
    read_events,
    table_state,
)

FS_SIZE = "2m"


class StateFs:
    """A size-limited tmpfs mounted on `path`, which the test can fill or make read-only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        if os.geteuid() != 0:
            pytest.fail("mounting a size-limited state_dir needs root (mount -t tmpfs); run the suite as root")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE},mode=0700", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"mount -t tmpfs failed (the sandbox must allow tmpfs mounts): {proc.stderr.strip()}")
        self.filler = path / "filler"

    def fill(self) -> None:
        """Write until ENOSPC: nothing more fits."""
        with self.filler.open("wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def read_only(self, on: bool) -> None:
        mode = "ro" if on else "rw"
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True)

    def unmount(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["umount", "-l", str(self.path)], check=True, capture_output=True)


@pytest.fixture
def state_fs(tmp_path: Path) -> Iterator[StateFs]:
    fs = StateFs(tmp_path / "state")
    try:
        yield fs
    finally:
        fs.unmount()


def _checkpoint_intact(state: Path) -> dict[str, Any]:
    doc = json.loads((state / "checkpoint.json").read_text())  # whole JSON, never half
    leftovers = [p.name for p in state.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == [], f"temp files left behind: {leftovers}"
    assert isinstance(doc, dict)
    return doc


@pytest.mark.timeout(200)
@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_state_dir_fault_keeps_the_last_checkpoint_and_recovers(
    fault: str, pg_database: Any, state_fs: StateFs, tmp_path: Path
) -> None:
    dsn = pg_database.dsn
    create_schema(dsn)
    keys = make_keys(tmp_path / "keys")
    state = state_fs.path
    config = write_config(
        tmp_path / "cv.yaml",
        source={"type": "postgres", "dsn": dsn, "slot": "cv_state", "publication": "cv_state"},
        archive_url=(tmp_path / "archive").as_uri(), keys=keys, state_dir=state,
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    workload = Workload(dsn, pause=0.05)
    try:
        wait_for(lambda: checkpoint_lsn(state) is not None, 60, "initial snapshot")
        workload.start()
        workload.run_for(2.0)
        before = checkpoint_lsn(state) or 0
        wait_for(lambda: (checkpoint_lsn(state) or 0) > before, 30, "checkpoint advancing")
        if fault == "full":
            state_fs.fill()
        else:
            state_fs.read_only(True)
        expected_error = "No space left on device" if fault == "full" else "Read-only file system"
        # Clear error, naming the file and the cause.
        wait_for(lambda: f"checkpoint.json: {expected_error}" in agent.log(), 30, "the write error logged")
        held = _checkpoint_intact(state)
        workload.run_for(3.0)
        # Nothing half-written, nothing moved while the disk refuses writes.
        assert _checkpoint_intact(state) == held
        assert "Traceback" not in agent.log()
        if fault == "full":
            # Space returns while the agent retries: it goes on by itself.
            state_fs.free()
            wait_for(lambda: (checkpoint_lsn(state) or 0) > lsn_int(held["position"]["text"]), 60,
                     "checkpoint advancing again")
            assert agent.alive(), agent.log()[-3000:]
        else:
            # A crash while the disk refuses writes: the next start has the
            # last good checkpoint.
            agent.kill()
            state_fs.read_only(False)
            assert _checkpoint_intact(state) == held
            agent = AgentProcess(config, tmp_path / "agent-after.log")
        workload.run_for(2.0)
        committed = workload.stop()
        assert drain_and_stop(agent, dsn, state) == 0, agent.log()[-3000:]
    finally:
        workload._stop.set()
        if agent.alive():
            agent.kill()
        if fault == "read-only":
            with contextlib.suppress(subprocess.CalledProcessError):
                state_fs.read_only(False)
    _checkpoint_intact(state)
    assert checkpoint_doc(state) is not None
    archive = read_events(config, keys)
    assert_exactly(committed, change_ops(archive), "archive")
    assert fold_items(archive) == table_state(dsn)


@pytest.mark.timeout(60)
def test_read_only_state_dir_at_start_is_exit_3_naming_the_file(state_fs: StateFs, tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    config = write_config(
        tmp_path / "cv.yaml",
        source={"type": "postgres", "dsn": "postgresql://cv@127.0.0.1:1/db"},
        archive_url=(tmp_path / "archive").as_uri(), keys=keys, state_dir=state_fs.path,
    )
    state_fs.read_only(True)
    try:
        line = one_error_line(cli(["run", "-c", str(config)], timeout=50), 3)
    finally:
        state_fs.read_only(False)
    assert str(state_fs.path) in line and "Read-only file system" in line, line
    assert list(state_fs.path.iterdir()) == []
