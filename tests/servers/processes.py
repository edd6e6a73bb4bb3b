"""Process plumbing shared by the test servers: free ports, waiting, binaries.

Every server is a child of the pytest process (or xdist worker). Children are
started with a parent-death signal so a pytest killed with SIGKILL does not
leave databases running on a shared CI machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


class MissingServerBinary(RuntimeError):
    """A server binary the tests need is not installed; the message says what to install."""


class ServerStartError(RuntimeError):
    """A test server did not come up; the message names its log file."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    Binding port 0 lets the kernel pick; two xdist workers never get the same
    port while both sockets are open, and the servers retry on the rare race
    between closing this socket and the server binding it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_executable(path: Path, install_hint: str) -> Path:
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise MissingServerBinary(f"expected executable {path}, not found: {install_hint}")
    return path


def _die_with_parent(sig: int) -> Callable[[], None]:
    libc_name = ctypes.util.find_library("c")

    def preexec() -> None:
        if libc_name is not None:
            ctypes.CDLL(libc_name, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return preexec


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    log: IO[bytes],
    *,
    user: str | None = None,
    env: dict[str, str] | None = None,
    death_signal: int = signal.SIGKILL,
) -> subprocess.Popen[bytes]:
    """Start a server with stdout+stderr appended to `log`.

    `user` drops privileges (PostgreSQL refuses to run as root); the
    parent-death signal is set after the uid change, which would clear it.
    """
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        user=user,
        group=user,
        extra_groups=[] if user is not None else None,
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent(death_signal),
    )


def run_setup(
    argv: Sequence[str | os.PathLike[str]], *, user: str | None = None, timeout: float = 120
) -> tuple[int, str]:
    """Run a setup tool (initdb, mariadb-install-db) to completion: (exit code, output).

    Its own process group, killed whole on any interruption: these tools run
    a bootstrap server as a child, which would otherwise keep writing into a
    data dir we are deleting.
    """
    process = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        user=user,
        group=user,
        extra_groups=[] if user is not None else None,
        start_new_session=True,
        preexec_fn=_die_with_parent(signal.SIGKILL),
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    return process.returncode, output.decode(errors="replace").strip()


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    log_path: Path,
    process: subprocess.Popen[bytes] | None = None,
    interval: float = 0.05,
) -> None:
    """Poll `ready` until true; fail fast if `process` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return
        if process is not None and process.poll() is not None:
            raise ServerStartError(
                f"{what} exited with code {process.returncode} while starting; "
                f"log {log_path}:\n{tail(log_path)}"
            )
        if time.monotonic() > deadline:
            raise ServerStartError(
                f"{what} not ready after {timeout:.0f}s; log {log_path}:\n{tail(log_path)}"
            )
        time.sleep(interval)


def terminate(process: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """Send `sig`, wait up to `timeout`, then SIGKILL the process group."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    # Backends/workers left in the group (e.g. after an immediate stop) go too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def log_mentions(path: Path, needle: str) -> bool:
    try:
        return needle in path.read_text(errors="replace")
    except OSError:
        return False


def pause(process: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    """SIGSTOP the process and wait until every thread has stopped: kill()
    returns before a thread running on another CPU is actually frozen."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGSTOP)
    tasks = Path(f"/proc/{process.pid}/task")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            states = [
                (task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in tasks.iterdir()
            ]
        except OSError:
            return  # not Linux /proc, or the process is gone
        if all(state in ("T", "t") for state in states):
            return
        time.sleep(0.01)


def resume(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGCONT)
