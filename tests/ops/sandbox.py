"""Run a command under the seccomp rules a systemd unit would impose on it.

``systemd-analyze verify`` checks that a unit parses; it cannot tell whether
the program survives the unit's sandbox. A blocked system call only shows in
production: a dead daemon (SIGSYS) or an odd EPERM deep inside a library.
This module rebuilds, with libseccomp through ctypes, the three filters of
the unit that a Python/numpy process can trip over, loads them, then
``exec``\\ s the command, so they hold from the interpreter's first
instruction, as under systemd:

- ``SystemCallFilter=`` (groups expanded by ``systemd-analyze
  syscall-filter``, allow and deny lines combined the way systemd combines
  them) with ``SystemCallErrorNumber=`` or, when unset, process kill, and
  ``SystemCallArchitectures=native`` (other ABIs killed);
- ``MemoryDenyWriteExecute=yes``: mmap with PROT_WRITE|PROT_EXEC, mprotect
  and pkey_mprotect with PROT_EXEC, shmat with SHM_EXEC fail with EPERM
  (the rules of systemd's seccomp_memory_deny_write_execute);
- ``RestrictAddressFamilies=``: socket() of any other family fails with
  EAFNOSUPPORT;

plus ``NoNewPrivileges``. Mount namespaces, users and capabilities
(ProtectSystem=, DynamicUser=, ...) are not reproduced here.

Use it as a command prefix::

    argv = sandboxed(["streamgmm", "run", "-c", cfg], unit="systemd/streamgmm.service")
    subprocess.run(argv)

:func:`available` says whether libseccomp and systemd-analyze are present; the
launcher exits with ``EX_NO_SECCOMP`` when the kernel refuses the filters.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

LIBSECCOMP = "libseccomp.so.2"

# libseccomp's ABI (seccomp.h, stable since 2.x)
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_LT = 2
SCMP_CMP_EQ = 4
SCMP_CMP_GT = 6
SCMP_CMP_MASKED_EQ = 7
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000


def SCMP_ACT_ERRNO(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


# ---------------------------------------------------------------------------
# reading the unit


def read_unit(path: str | os.PathLike, section: str = "Service") -> list[tuple[str, str]]:
    """The ``(key, value)`` assignments of one section, in order (repeats kept)."""
    entries: list[tuple[str, str]] = []
    current = None
    pending = ""
    for raw in Path(path).read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            continue
        if current == section and "=" in line:
            key, _, value = line.partition("=")
            entries.append((key.strip(), value.strip()))
    return entries


def unit_values(path: str | os.PathLike, key: str, section: str = "Service") -> list[str]:
    """Every value assigned to ``key``; an empty assignment resets the list, as in systemd."""
    values: list[str] = []
    for k, v in read_unit(path, section):
        if k == key:
            values = [] if v == "" else [*values, v]
    return values


def syscall_groups() -> dict[str, list[str]]:
    """``@group -> members`` as this machine's systemd defines them."""
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    """System call names behind a list of names and ``@groups``."""
    result: set[str] = set()
    stack = list(names)
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name.startswith("@"):
            if name not in groups:
                raise ValueError(f"unknown system call group {name}")
            stack.extend(groups[name])
        else:
            result.add(name)
    return result


def policy_from_unit(path: str | os.PathLike) -> dict:
    """The unit's seccomp-relevant settings as a JSON-able policy."""
    groups = syscall_groups()
    allow_mode = None
    listed: set[str] = set()
    for line in unit_values(path, "SystemCallFilter"):
        deny = line.startswith("~")
        names = expand(line.lstrip("~").split(), groups)
        if allow_mode is None:
            allow_mode = not deny
            listed = set(names)
        elif allow_mode != deny:  # same kind as the first line: extend the list
            listed |= names
        else:  # the other kind: take these out of the list
            listed -= names
    error = (unit_values(path, "SystemCallErrorNumber") or [None])[-1]
    families = " ".join(unit_values(path, "RestrictAddressFamilies")).split()
    mdwe = (unit_values(path, "MemoryDenyWriteExecute") or ["no"])[-1]
    return {
        "syscall_mode": {None: "none", True: "allow", False: "deny"}[allow_mode],
        "syscalls": sorted(listed),
        "syscall_errno": error,
        "memory_deny_write_execute": mdwe.lower() in ("yes", "true", "1", "on"),
        "address_families": families,
    }


# ---------------------------------------------------------------------------
# building and loading the filters (runs in the child, just before exec)


class _Seccomp:
    def __init__(self) -> None:
        lib = ctypes.CDLL(LIBSECCOMP, use_errno=True)
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(_ArgCmp),
        ]
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        self.lib = lib

    def resolve(self, name: str) -> int:
        return self.lib.seccomp_syscall_resolve_name(name.encode())

    def load(self, default: int, rules: list[tuple[int, str, list[tuple[int, int, int, int]]]]):
        ctx = self.lib.seccomp_init(default)
        if not ctx:
            raise OSError("seccomp_init failed")
        try:
            for action, name, conditions in rules:
                number = self.resolve(name)
                if number < 0:  # not a system call on this architecture
                    continue
                array = (_ArgCmp * max(1, len(conditions)))(*[_ArgCmp(*c) for c in conditions])
                rc = self.lib.seccomp_rule_add_array(ctx, action, number, len(conditions), array)
                if rc < 0:
                    raise OSError(-rc, f"seccomp_rule_add({name}): {os.strerror(-rc)}")
            rc = self.lib.seccomp_load(ctx)
            if rc < 0:
                raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")
        finally:
            self.lib.seccomp_release(ctx)


def _errno_number(name: str | None) -> int | None:
    if not name:
        return None
    return int(name) if name.isdigit() else getattr(errno, name)


def install(policy: dict) -> None:
    """Load the policy's filters into this process (inherited across exec)."""
    seccomp = _Seccomp()
    if policy["memory_deny_write_execute"]:
        eperm = SCMP_ACT_ERRNO(errno.EPERM)
        wx = PROT_WRITE | PROT_EXEC
        seccomp.load(
            SCMP_ACT_ALLOW,
            [
                (eperm, "mmap", [(2, SCMP_CMP_MASKED_EQ, wx, wx)]),
                (eperm, "mprotect", [(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC)]),
                (eperm, "pkey_mprotect", [(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC)]),
                (eperm, "shmat", [(2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC)]),
            ],
        )
    if policy["address_families"]:
        allowed = sorted(int(getattr(socket, name)) for name in policy["address_families"])
        refuse = SCMP_ACT_ERRNO(errno.EAFNOSUPPORT)
        rules = [
            (refuse, "socket", [(0, SCMP_CMP_LT, allowed[0], 0)]),
            (refuse, "socket", [(0, SCMP_CMP_GT, allowed[-1], 0)]),
        ]
        rules += [
            (refuse, "socket", [(0, SCMP_CMP_EQ, family, 0)])
            for family in range(allowed[0] + 1, allowed[-1])
            if family not in allowed
        ]
        seccomp.load(SCMP_ACT_ALLOW, rules)
    # Last: loading a filter needs prctl() and seccomp(), which the list may not allow.
    if policy["syscall_mode"] != "none":
        number = _errno_number(policy["syscall_errno"])
        refuse = SCMP_ACT_KILL_PROCESS if number is None else SCMP_ACT_ERRNO(number)
        if policy["syscall_mode"] == "allow":
            seccomp.load(refuse, [(SCMP_ACT_ALLOW, name, []) for name in policy["syscalls"]])
        else:
            seccomp.load(SCMP_ACT_ALLOW, [(refuse, name, []) for name in policy["syscalls"]])


# ---------------------------------------------------------------------------
# the command prefix


def available() -> str | None:
    """None when sandboxing works here, else the reason it cannot."""
    if sys.platform != "linux":
        return "seccomp is Linux only"
    if shutil.which("systemd-analyze") is None:
        return "systemd-analyze is missing (Debian package: systemd)"
    try:
        ctypes.CDLL(LIBSECCOMP)
    except OSError:
        return f"{LIBSECCOMP} is missing (Debian package: libseccomp2)"
    return None


def sandboxed(argv: list[str], *, unit: str | os.PathLike) -> list[str]:
    """``argv`` prefixed so that it runs under ``unit``'s seccomp filters."""
    policy = json.dumps(policy_from_unit(unit))
    return [sys.executable, os.path.abspath(__file__), policy, "--", *argv]


#: Exit status when the filters cannot be loaded here (a container without seccomp, say):
#: callers skip rather than fail.
EX_NO_SECCOMP = 75


def main(args: list[str]) -> None:
    policy, separator, *argv = args
    if separator != "--" or not argv:
        raise SystemExit("usage: sandbox.py POLICY_JSON -- COMMAND [ARG...]")
    try:
        install(json.loads(policy))
    except OSError as exc:
        print(f"sandbox: cannot load seccomp filters here: {exc}", file=sys.stderr)
        raise SystemExit(EX_NO_SECCOMP) from exc
    executable = shutil.which(argv[0]) or argv[0]
    os.execv(executable, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
