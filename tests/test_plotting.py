"""plotting.draw: the one place evsys draws; axis labels are checked in the SVG it writes."""

from __future__ import annotations

import pytest

from evsys_core.plotting import Panel, draw


def test_panels_carry_their_axis_labels(tmp_path):
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "none"}):  # keep text as text in the SVG
        out = tmp_path / "plot.svg"
        draw([Panel("curve", [("sft", [(0, 0.1), (10, 0.5)])], ylabel="pass@1"),
              Panel("trade-off", [("sdft", [(0.1, 0.9), (0.4, 0.8)])], ylabel="prior pass@1",
                    xlabel="new-skill pass@1")], out=out)
    svg = out.read_text()
    assert ">step<" in svg and ">new-skill pass@1<" in svg and ">prior pass@1<" in svg
    assert svg.count(">step<") == 1  # the trade-off panel's x axis is not a step


def test_draw_returns_png_bytes_without_a_path():
    png = draw([Panel("p", [("a", [(0, 1.0), (1, 2.0)])])])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(TypeError):
        Panel("p", [], "y", "x", False, "extra")  # the fields: title, series, ylabel, xlabel, logx
