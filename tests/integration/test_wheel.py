"""`python -m build` makes an sdist and a wheel that install into a fresh venv and run.

One test on purpose: building and installing with dependencies (from the
machine's pip configuration) takes about a minute.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from agent import __version__

ROOT = Path(__file__).resolve().parents[2]
# Only what the distribution is built from: the shared working tree is never
# written to (setuptools leaves build/ and *.egg-info next to the sources).
PROJECT_FILES = ("pyproject.toml", "README.md", "agent", "connectors")


def run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.timeout(900)
def test_wheel_and_sdist_build_install_and_run(tmp_path: Path) -> None:
    try:
        import build  # noqa: F401
    except ImportError:
        pytest.fail("the `build` package is missing: pip install build (it is in the test extras)")
    src = tmp_path / "src"
    src.mkdir()
    for name in PROJECT_FILES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    dist = tmp_path / "dist"
    # Default `build`: the sdist first, then the wheel built from the sdist, so
    # an incomplete sdist fails here too.
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(src)], cwd=tmp_path)
    wheels = list(dist.glob("changevault-*.whl"))
    sdists = list(dist.glob("changevault-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(dist.iterdir())

    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "agent/cli.py" in names and "connectors/base.py" in names
    assert "agent/py.typed" in names and "connectors/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "changevault = agent.cli:main" in zipfile.ZipFile(wheels[0]).read(entry_points).decode()
    with tarfile.open(sdists[0]) as tar:
        members = tar.getnames()
    assert any(m.endswith("/pyproject.toml") for m in members)
    assert any(m.endswith("/agent/app.py") for m in members)

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheels[0])], cwd=tmp_path)

    changevault = str(venv / "bin" / "changevault")
    help_text = run([changevault, "--help"], cwd=tmp_path).stdout
    for command in ("keys", "check", "run", "restore", "events", "verify", "expire", "teardown"):
        assert command in help_text
    assert run([changevault, "--version"], cwd=tmp_path).stdout.strip() == f"changevault {__version__}"
    where = run([str(venv / "bin" / "python"), "-c", "import agent; print(agent.__file__)"],
                cwd=tmp_path).stdout.strip()
    assert where.startswith(str(venv)), f"agent imported from {where}, not the fresh venv"

    keys = tmp_path / "keys"
    run([changevault, "keys", "generate", "--out", str(keys)], cwd=tmp_path)
    for name in ("archive.pub", "archive.key", "signing.key", "signing.pub", "keyhash.key"):
        assert (keys / name).is_file(), name
    for private in ("archive.key", "signing.key", "keyhash.key"):
        assert stat.S_IMODE((keys / private).stat().st_mode) == 0o600, private
