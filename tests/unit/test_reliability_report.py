"""docs/reliability.md is what scripts/reliability_report.py renders from the recorded figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "reliability_report.py"
FIGURES = REPO / "docs" / "reliability" / "figures"


def render(figures: Path, out: Path) -> str:
    subprocess.run(
        [sys.executable, str(SCRIPT), "--figures", str(figures), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return out.read_text()


def test_docs_reliability_md_is_rendered_from_the_figures(tmp_path):
    rendered = render(FIGURES, tmp_path / "reliability.md")
    assert rendered == (REPO / "docs" / "reliability.md").read_text(), (
        "docs/reliability.md is stale: run `make soak` or python scripts/reliability_report.py"
    )


def test_every_figure_line_is_json_with_its_name():
    files = sorted(FIGURES.glob("*.json"))
    assert files, "no recorded figures"
    for path in files:
        for line in path.read_text().splitlines():
            assert json.loads(line)["figure"] == path.stem


def test_a_figure_not_measured_is_reported_as_such(tmp_path):
    empty = tmp_path / "figures"
    empty.mkdir()
    rendered = render(empty, tmp_path / "reliability.md")
    assert "not measured in this run" in rendered
    assert "crash" in rendered.lower()  # the sections are still there, each saying so
