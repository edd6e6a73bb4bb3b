"""py-spy on the running agent: the hottest frames of the real capture path.

cProfile sees only the main thread of the process it runs in; the agent's
work happens in its pipeline threads, so a sampling profiler attached from
outside is the honest view. Only samples of the thread holding the GIL count
(`--gil`): waits (librdkafka poll, select, queues) are left out. py-spy is
optional (PyPI `py-spy`); without it the profile is skipped with a note.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class AgentProfile:
    """`py-spy record` attached to `pid` until stop(); raw (collapsed) stacks."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        self._proc: subprocess.Popen[bytes] | None = None
        binary = py_spy()
        if binary is not None:
            self._proc = subprocess.Popen(
                [binary, "record", "--pid", str(pid), "--format", "raw", "--output", str(out),
                 "--rate", "100", "--threads", "--gil", "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> str | None:
        """Top frames by own samples and by inclusive samples, or None without py-spy."""
        if self._proc is None:
            return None
        self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            return None
        return summarize(self.out) if self.out.exists() else None


def _name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    return f"{m['func']} ({Path(m['file']).name})"


def summarize(raw: Path, limit: int = 15) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_name(f) for f in stack.split(";") if not f.startswith("thread ")
                  and not f.startswith("process ")]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for name in set(frames):
            inclusive[name] += n
    if not total:
        return "no samples"
    lines = [f"{total} samples (100/s, only the thread holding the GIL: the pipeline's"
             " threads share one interpreter, so this is what serializes them)", "",
             "own %  function"]
    lines += [f"{100 * n / total:5.1f}  {name}" for name, n in own.most_common(limit)]
    lines += ["", "incl % function"]
    lines += [f"{100 * n / total:5.1f}  {name}" for name, n in inclusive.most_common(limit)]
    return "\n".join(lines)
