"""What every benchmark shares: where the data is, what machine ran it, how results are written.

The benchmark scripts import this module by name: run as ``python benchmarks/NAME.py``,
Python puts ``benchmarks/`` first on ``sys.path``; the smoke tests add it themselves.

Layout by role: paths, synthetic data, timing, reporting.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import platform
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
QUICK_RESULTS_DIR = RESULTS_DIR / "quick"  # git-ignored: quick runs never overwrite real results
IMG_DIR = REPO_ROOT / "docs" / "img"


# ---------------------------------------------------------------------------
# paths


def data_dir() -> Path:
    """``$STREAMGMM_DATA`` if set, else ``../shared/data`` next to the repository."""
    env = os.environ.get("STREAMGMM_DATA")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "data")


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=Path, default=None, help="default: $STREAMGMM_DATA or ../shared/data"
    )


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small inputs, a few seconds to a minute; results go to benchmarks/results/quick/",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory for NAME.md (default: benchmarks/results, or results/quick with --quick)",
    )
    parser.add_argument(
        "--img-dir",
        type=Path,
        default=None,
        help="directory for pictures (default: docs/img, or results/quick with --quick)",
    )


def output_dirs(args: argparse.Namespace, partial: bool = False) -> tuple[Path, Path]:
    """(results directory, image directory), created.

    Quick and ``partial`` runs (a subset of the inputs) go to ``results/quick/``
    unless ``--out`` says otherwise: only full runs replace the committed results.
    """
    small = args.quick or partial
    out = args.out or (QUICK_RESULTS_DIR if small else RESULTS_DIR)
    img = args.img_dir or (out if small or args.out else IMG_DIR)
    out.mkdir(parents=True, exist_ok=True)
    img.mkdir(parents=True, exist_ok=True)
    return out, img


# ---------------------------------------------------------------------------
# synthetic data


@dataclass
class Mixture:
    """A Gaussian mixture to sample from: the ground truth of a synthetic benchmark.

    Attributes
    ----------
    weights : array of shape (K,)
    means : array of shape (K, d)
    covariances : array of shape (K, d, d)
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray

    @property
    def n_features(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Rows of shape (n, d) in random order, and their component labels."""
        labels = rng.choice(len(self.weights), size=n, p=self.weights)
        chol = np.linalg.cholesky(self.covariances)
        noise = rng.standard_normal((n, self.n_features))
        X = self.means[labels] + np.einsum("nij,nj->ni", chol[labels], noise)
        return X, labels

    def log_likelihood(self, X: np.ndarray) -> np.ndarray:
        """True log-density of each row: the oracle a fitted model can only approach."""
        from scipy.special import logsumexp
        from scipy.stats import multivariate_normal

        per_component = np.column_stack(
            [
                np.log(w) + multivariate_normal(m, c).logpdf(X)
                for w, m, c in zip(self.weights, self.means, self.covariances, strict=True)
            ]
        )
        return logsumexp(per_component, axis=1)


def random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def rotated_ellipses(
    d: int,
    n_components: int,
    rng: np.random.Generator,
    mean_spread: str = "wide",
    axis_sd: tuple[float, float] = (0.2, 1.5),
) -> Mixture:
    """Random mixture of rotated ellipses.

    Each component has a random orientation and axis standard deviations drawn
    uniformly from ``axis_sd`` (aspect ratios up to 7.5 with the default).
    Weights are Dirichlet(5): unequal, none negligible.

    mean_spread : {"wide", "tight"}
        ``wide``: means uniform in [-6, 6]^d (mostly separated clusters);
        ``tight``: means normal with an expected pairwise distance of about 4,
        whatever d (clusters overlap, EM has several basins).
    """
    weights = rng.dirichlet(np.full(n_components, 5.0))
    if mean_spread == "wide":
        means = rng.uniform(-6.0, 6.0, size=(n_components, d))
    elif mean_spread == "tight":
        means = rng.standard_normal((n_components, d)) * 4.0 / np.sqrt(2.0 * d)
    else:
        raise ValueError(f"mean_spread must be 'wide' or 'tight', got {mean_spread!r}")
    covariances = np.empty((n_components, d, d))
    for k in range(n_components):
        rotation = random_rotation(d, rng)
        sd = rng.uniform(*axis_sd, size=d)
        covariances[k] = (rotation * sd**2) @ rotation.T
    return Mixture(weights, means, covariances)


# ---------------------------------------------------------------------------
# timing


BLAS_MODES = (("default", None), ("1 thread", 1))


@contextlib.contextmanager
def blas_threads(limit: int | None) -> Iterator[None]:
    """Limit BLAS (OpenBLAS, MKL...) to ``limit`` threads; None leaves the default."""
    if limit is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=limit, user_api="blas"):
        yield


def median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


# ---------------------------------------------------------------------------
# reporting


def fmt(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def fmt_rate(events_per_s: float) -> str:
    return f"{events_per_s:,.0f}"


def _cell(cell: object) -> str:
    return str(cell).replace("|", "\\|")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; columns whose cells all look numeric are right-aligned."""

    def numeric(cell: object) -> bool:
        text = str(cell).replace(",", "").replace("%", "").replace("x", "").strip()
        text = text.lstrip("+-−")
        return text.replace(".", "", 1).isdigit() or text in ("n/a", "")

    align = [
        "---:" if rows and all(numeric(row[i]) for row in rows) else "---"
        for i in range(len(headers))
    ]
    lines = ["| " + " | ".join(map(_cell, headers)) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" (with uncommitted changes)" if dirty else "")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _blas_description() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl missing)"
    seen = []
    for pool in threadpool_info():
        if pool.get("user_api") != "blas":
            continue
        text = (
            f"{pool.get('internal_api')} {pool.get('version')} "
            f"({pool.get('architecture')}, {pool.get('num_threads')} threads by default, "
            f"{pool.get('prefix')})"
        )
        if text not in seen:
            seen.append(text)
    return "; ".join(seen) or "none found"


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except (ImportError, AttributeError):
        return "not installed"


def machine_info() -> str:
    """Markdown lines: date, machine, BLAS, versions, source revision."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    versions = ", ".join(
        f"{name} {_version(name)}"
        for name in ("streamgmm", "numpy", "scipy", "sklearn", "river", "matplotlib")
    )
    return "\n".join(
        [
            f"- Date: {now}",
            f"- Machine: {platform.machine()}, {_cpu_model()}, "
            f"{os.cpu_count()} CPUs ({affinity} usable), load average at start {load} "
            "(shared machine: timings are noisy)",
            f"- BLAS: {_blas_description()}",
            f"- Python {platform.python_version()}; {versions}",
            f"- streamgmm source: git {_git_revision()}",
        ]
    )


@dataclass
class Target:
    """One goal from DESIGN.md section 5 and whether this run met it."""

    name: str
    met: bool | None  # None: not measured in this run (data missing, quick mode...)
    detail: str

    def row(self) -> list[str]:
        status = {True: "met", False: "NOT met", None: "not measured"}[self.met]
        return [self.name, status, self.detail]


@dataclass
class Report:
    """What a benchmark returns: its Markdown body and its targets."""

    name: str
    title: str
    body: str
    targets: list[Target] = field(default_factory=list)

    def targets_table(self) -> str:
        return markdown_table(["target", "status", "measured"], [t.row() for t in self.targets])

    def markdown(self, header: bool = True) -> str:
        parts = [f"# {self.title}", ""]
        if header:
            parts += [machine_info(), ""]
        if self.targets:
            parts += ["## Targets", "", self.targets_table(), ""]
        parts += [self.body.rstrip(), ""]
        return "\n".join(parts)

    def write(self, out_dir: Path) -> Path:
        path = out_dir / f"{self.name}.md"
        tmp = path.with_suffix(f".md.{os.getpid()}.tmp")  # runs in parallel: one each
        tmp.write_text(self.markdown())
        tmp.replace(path)
        return path


def display_path(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def finish(report: Report, out_dir: Path) -> Report:
    """Print the report and write it to ``out_dir/NAME.md``."""
    path = report.write(out_dir)
    print(report.markdown(header=False))
    print(f"[written to {path}]", file=sys.stderr)
    return report


def missing_data_report(name: str, title: str, what: str) -> Report:
    message = (
        f"Data not found: {what}. Set $STREAMGMM_DATA or put the shared data in "
        f"{data_dir()} (see ../shared/data/MANIFEST.md); nothing was measured."
    )
    print(message, file=sys.stderr)
    return Report(name, title, message, [])
