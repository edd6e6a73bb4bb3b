"""config/changevault.service, checked by Debian's systemd tools.

`systemd-analyze verify` refuses a unit whose ExecStart binary does not exist,
and /opt/changevault/bin/changevault (the documented venv) is not installed on
a test machine. The test therefore verifies a temporary copy whose ExecStart
points at this checkout's own `changevault` console script (same arguments);
every other line is verified as shipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "config" / "changevault.service"
SHIPPED_EXEC = "/opt/changevault/bin/changevault"
# Keys newer than the systemd of Debian 12 (252): RestartSteps and
# RestartMaxDelaySec (systemd 254) give the restart backoff; older systemd
# ignores them with a notice and restarts every RestartSec.
NEWER_KEYS = ("RestartSteps", "RestartMaxDelaySec")


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze not found: install Debian's systemd package")
    return path


def systemd_version() -> int:
    out = subprocess.run(
        [systemd_analyze(), "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"systemd (\d+)", out)
    assert match, out
    return int(match.group(1))


def directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.fixture
def testable_unit(tmp_path: Path) -> Path:
    executable = Path(sys.executable).parent / "changevault"
    assert executable.exists(), f"{executable} missing: pip install -e . into the venv"
    text = UNIT.read_text()
    assert f"ExecStart={SHIPPED_EXEC} " in text
    unit = tmp_path / "changevault.service"
    unit.write_text(text.replace(f"ExecStart={SHIPPED_EXEC} ", f"ExecStart={executable} "))
    return unit


def test_systemd_analyze_verify_passes(testable_unit: Path) -> None:
    result = subprocess.run(
        [systemd_analyze(), "verify", str(testable_unit)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    notices = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    allowed = [
        f"Unknown key '{key}' in section [Service], ignoring." for key in NEWER_KEYS
    ] if systemd_version() < 254 else []
    unexpected = [n for n in notices if not any(n.endswith(a) for a in allowed)]
    assert unexpected == [], "\n".join(unexpected)


def test_shipped_unit_differs_only_in_exec_start(testable_unit: Path) -> None:
    shipped = UNIT.read_text().splitlines()
    tested = testable_unit.read_text().splitlines()
    differing = [(a, b) for a, b in zip(shipped, tested, strict=True) if a != b]
    assert len(differing) == 1 and differing[0][0].startswith("ExecStart=")


def test_security_exposure_is_low(testable_unit: Path) -> None:
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--no-pager", str(testable_unit)],
        capture_output=True, text=True, timeout=60,
    )
    out = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert match, out
    assert float(match.group(1)) <= 2.0, out


def test_unit_has_the_required_settings() -> None:
    d = directives()

    def one(key: str) -> str:
        assert key in d, f"{key}= missing"
        return d[key][-1]

    assert one("Type") == "notify"
    assert one("User") == "changevault" and one("Group") == "changevault"
    assert one("StateDirectory") == "changevault"
    assert one("Restart") == "on-failure"
    assert one("RestartSec")
    assert all(key in d for key in NEWER_KEYS)
    assert one("WatchdogSec")
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("NoNewPrivileges") == "yes"
    assert one("ProtectSystem") == "strict"
    assert "/var/lib/changevault" in one("ReadWritePaths").split()
    for key in ("ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert one(key) == "yes", key
    assert one("CapabilityBoundingSet") == ""
    assert one("RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert "@system-service" in d["SystemCallFilter"]


def test_the_example_configuration_is_valid() -> None:
    """The unit starts with /etc/changevault/changevault.yaml, installed from
    config/changevault.example.yaml: every key of it must validate."""
    doc = yaml.safe_load((ROOT / "config" / "changevault.example.yaml").read_text())
    settings = Settings.model_validate(doc)
    assert str(settings.state_dir).startswith("/var/lib/changevault/")
    assert settings.encryption.private_key_file is None
    assert set(doc) == set(Settings.model_fields) - {"origin"}, "example misses a section"
