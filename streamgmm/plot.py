"""``streamgmm plot``: the mixture's ellipses over two fields, with the outliers.

Needs matplotlib (``pip install 'streamgmm[plot]'``). Ellipses are drawn at
1 and 2 standard deviations of each component, in the units of the data
(standardisation undone), with an opacity that follows the component's
weight.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .checkpoint import load_state, read_fingerprint
from .detector import Detector


def _detector_from_file(path: str) -> tuple[Detector, list[str] | None]:
    header = read_fingerprint(path)
    state = load_state(path, kind=header["kind"])
    if header["kind"] == "Detector":
        return Detector.from_state(state), header.get("fields")
    if "detector" in state:
        return Detector.from_state(state["detector"]), header.get("fields")
    raise ValueError(f"{path} holds a {header['kind']} state; plot needs a detector checkpoint")


def component_ellipses(detector: Detector, i: int, j: int) -> list[dict[str, Any]]:
    """Centre, 2x2 covariance and weight of every component on fields i and j, in data units."""
    model = detector.model
    if not model.is_fitted:
        return []
    std = detector.standardizer
    scale = std.scale[[i, j]] if std is not None else np.ones(2)
    shift = std.mean[[i, j]] if std is not None else np.zeros(2)
    ellipses = []
    for k in range(model.n_components_):
        cov = model.covariances_[k]
        if model.covariance_type == "full":
            block = cov[np.ix_([i, j], [i, j])]
        elif model.covariance_type == "diag":
            block = np.diag(cov[[i, j]])
        else:
            block = np.eye(2) * cov
        ellipses.append({
            "mean": model.means_[k][[i, j]] * scale + shift,
            "cov": block * np.outer(scale, scale),
            "weight": float(model.weights_[k]),
        })  # fmt: skip
    return ellipses


def _draw(ax, ellipses: list[dict[str, Any]]) -> None:
    from matplotlib.patches import Ellipse

    for e in ellipses:
        values, vectors = np.linalg.eigh(e["cov"])
        angle = np.degrees(np.arctan2(vectors[1, -1], vectors[0, -1]))
        for n_std in (1, 2):
            width, height = 2 * n_std * np.sqrt(np.maximum(values[::-1], 0))
            ax.add_patch(Ellipse(
                e["mean"], width, height, angle=angle, fill=False, lw=1.5,
                color="tab:blue", alpha=max(0.25, min(1.0, 0.3 + 2 * e["weight"])),
            ))  # fmt: skip
        ax.plot(*e["mean"], "+", color="tab:blue")


def _axes(fields: list[str], x: str | None, y: str | None) -> tuple[int, int]:
    if len(fields) < 2:
        raise ValueError("plot needs at least two fields")
    x = x or fields[0]
    y = y or fields[1 if fields[0] == x else 0]
    for name in (x, y):
        if name not in fields:
            raise ValueError(f"{name!r} is not one of the fields {fields}")
    return fields.index(x), fields.index(y)


def _save(fig, ax, output: str, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.autoscale_view()
    fig.tight_layout()
    fig.savefig(output, dpi=110)


def plot_checkpoint(path: str, output: str, x: str | None = None, y: str | None = None) -> None:
    """The ellipses of a daemon or detector checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    detector, fields = _detector_from_file(path)
    fields = list(fields or [f"x{k}" for k in range(detector.n_features or 0)])
    i, j = _axes(fields, x, y)
    fig, ax = plt.subplots(figsize=(6, 5))
    _draw(ax, component_ellipses(detector, i, j))
    _save(
        fig,
        ax,
        output,
        f"{detector.model.n_components_} components, {detector.n_seen:,} events",
        fields[i],
        fields[j],
    )
    plt.close(fig)


def plot_scored_file(
    config: Any, path: str, output: str, x: str | None = None, y: str | None = None
) -> None:
    """Score a JSONL file with ``config`` and draw its events, outliers and final ellipses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .daemon import build_detector
    from .events import decode_batch

    fields = list(config.features.fields)
    i, j = _axes(fields, x, y)
    detector = build_detector(config)
    points, flags = [], []
    with open(path, "rb") as handle:
        lines = handle.read().splitlines()
    for start in range(0, len(lines), 2000):
        decoded = decode_batch(lines[start : start + 2000], fields)
        if len(decoded.X):
            result = detector.process(decoded.X)
            points.append(decoded.X[:, [i, j]])
            flags.append(result.is_outlier)
    if not points:
        raise ValueError(f"{path} has no usable event with the fields {fields}")
    xy, outlier = np.concatenate(points), np.concatenate(flags)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(*xy[~outlier].T, s=3, color="0.6", alpha=0.4, label="events")
    ax.scatter(*xy[outlier].T, s=18, color="tab:red", label=f"outliers ({outlier.sum()})")
    _draw(ax, component_ellipses(detector, i, j))
    ax.legend(loc="best")
    _save(fig, ax, output, json.dumps(path)[1:-1], fields[i], fields[j])
    plt.close(fig)
