"""systemd/streamgmm.service: parses cleanly, is well hardened, and the runtime survives it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.ops import sandbox
from tests.support.sandboxes import run_workload, systemd_analyze

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "streamgmm.service"
OPS = ROOT / "tests" / "ops"
EXEC_START = "/usr/bin/streamgmm run -c /etc/streamgmm/streamgmm.yaml"
MAX_EXPOSURE = 3.0


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)


def service(key: str) -> list[str]:
    return sandbox.unit_values(UNIT, key)


def unit_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ExecStart pointing at an executable that exists here.

    `verify` checks that the ExecStart binary exists and is executable;
    /usr/bin/streamgmm exists only where the package is installed.
    """
    program = tmp_path / "bin" / "streamgmm"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    text = UNIT.read_text() if text is None else text
    assert EXEC_START in text
    copy = tmp_path / "streamgmm.service"
    copy.write_text(text.replace("/usr/bin/streamgmm", str(program)))
    return copy


# ---------------------------------------------------------------------------
# systemd's own checks


def test_systemd_analyze_verify_prints_nothing(tmp_path):
    tool = systemd_analyze()
    result = run([tool, "verify", "--man=no", str(unit_copy(tmp_path))], cwd=tmp_path)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and output == "", f"systemd-analyze verify:\n{output}"


def test_verify_check_does_catch_a_bad_value(tmp_path):
    """Bad values only warn, with exit status 0: the check above relies on the output."""
    tool = systemd_analyze()
    text = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystem=stricter")
    result = run([tool, "verify", "--man=no", str(unit_copy(tmp_path, text))], cwd=tmp_path)
    assert result.returncode == 0
    assert "stricter" in result.stdout + result.stderr


def test_security_exposure_is_at_most_3(tmp_path):
    tool = systemd_analyze()
    result = run([tool, "security", "--offline=true", "--no-pager", str(UNIT)], cwd=tmp_path)
    report = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for streamgmm\.service: (\d+(?:\.\d+)?)", report)
    assert match, f"no exposure level in:\n{report}"
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}:\n{report}"


# ---------------------------------------------------------------------------
# the contract the daemon and the docs rely on


def test_runs_the_daemon_as_a_notify_service_with_a_watchdog():
    assert service("ExecStart") == [EXEC_START]
    assert service("Type") == ["notify"]
    assert service("NotifyAccess") == ["main"]
    assert service("WatchdogSec") == ["30"]
    assert service("Restart") == ["on-failure"]
    assert service("RestartSec")
    assert service("KillSignal") == ["SIGTERM"]
    assert service("TimeoutStopSec")
    assert "PYTHONUNBUFFERED=1" in service("Environment")


def test_state_and_config_live_where_the_daemon_looks_for_them():
    # checkpoint.path defaults under /var/lib/streamgmm; the config is /etc/streamgmm/...
    assert service("DynamicUser") == ["yes"]
    assert service("StateDirectory") == ["streamgmm"]
    assert service("ConfigurationDirectory") == ["streamgmm"]
    assert service("UMask") == ["0077"]


@pytest.mark.parametrize(
    "key, value",
    [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallArchitectures", "native"),
        ("MemoryDenyWriteExecute", "yes"),
        ("LockPersonality", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        # Without it a refused mbind() from OpenBLAS would kill the daemon (SIGSYS).
        ("SystemCallErrorNumber", "EPERM"),
    ],
)
def test_hardening_setting(key, value):
    assert service(key)[-1:] == [value]


def test_no_capabilities_and_system_service_calls_only():
    assert sandbox.read_unit(UNIT).count(("CapabilityBoundingSet", "")) == 1
    assert service("CapabilityBoundingSet") == []
    assert service("SystemCallFilter")[0] == "@system-service"


# ---------------------------------------------------------------------------
# the runtime under the unit's seccomp filters


def test_the_sandbox_emulation_has_teeth(tmp_path):
    """Without a system call the stack needs, the same workload dies: the runtime test
    (tests/integration/test_systemd_sandbox_daemon.py) passes because the filters allow
    enough, not because they were never loaded."""
    systemd_analyze()
    text = UNIT.read_text().replace(
        "SystemCallFilter=@system-service", "SystemCallFilter=@default @basic-io @file-system"
    )
    result = run_workload(unit_copy(tmp_path, text))
    assert result.returncode != 0
    assert "ALL OK" not in result.stdout
