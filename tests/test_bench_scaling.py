"""The B1 scaling section of bench/bench_sdft.py, from measured-shaped summaries (no model run):
a table row per (batch, max_tokens) point with the evsys/TRL ratio of its medians, and the plot."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def summary(seconds: list[float], tokens: int, rss: float) -> dict:
    return {"seconds": seconds, "tok_s": [tokens / s for s in seconds], "rss_mb": rss}


def test_the_scaling_section_has_a_row_per_point_and_a_plot(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_sdft

    rows = [(1, 32, summary([2.0, 2.5], 30, 900.0), summary([3.0, 3.5], 31, 950.0)),
            (8, 32, summary([6.0], 240, 1500.0), None)]
    plot = tmp_path / "scaling.png"
    text = bench_sdft.scaling_section(rows, 2, 1, [3.0, 4.0], True, True, plot=plot)
    lines = text.splitlines()
    assert lines[0] == f"## {bench_sdft.SCALING_TITLE}"
    first = next(line for line in lines if line.startswith("| 1 | 32 |"))
    ratio = ((30 / 2.0 + 30 / 2.5) / 2) / ((31 / 3.0 + 31 / 3.5) / 2)  # medians of tok/s, evsys over TRL
    assert f"| {ratio:.2f}x |" in first and "| 950 MB |" in first
    second = next(line for line in lines if line.startswith("| 8 | 32 |"))
    assert second.count("—") == 4 and "| 6.00 |" in second
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"![B1 scaling]({plot})" in text
