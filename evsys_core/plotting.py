"""Learning curves as images: the one place evsys draws (a run's learning_curve.png,
`evsys plot`, the MCP plot_metrics tool). matplotlib is imported only when drawing."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


@dataclass
class Panel:
    title: str
    series: list[tuple[str, Sequence[Sequence[Any]]]] = field(default_factory=list)  # (label, [(step, value)])
    ylabel: str | None = None
    xlabel: str = "step"  # the series' first coordinate: a step, or e.g. another score (a trade-off)
    logx: bool = False


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def draw(panels: Sequence[Panel], out: Path | None = None, *, size: tuple[float, float] = (8, 4.5),
         dpi: int = 120) -> bytes | None:
    """Draw one axis per panel side by side; write `out` (its suffix picks the format) or
    return PNG bytes. Points without a number are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=size, dpi=dpi, squeeze=False)
    try:
        for ax, panel in zip(axes[0], panels):
            for label, points in panel.series:
                pts = [(p[0], p[1]) for p in points
                       if p[0] is not None and isinstance(p[1], (int, float)) and not isinstance(p[1], bool)]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None,
                            markersize=3, label=label)
            ax.set_title(panel.title)
            ax.set_xlabel(panel.xlabel)
            if panel.logx:
                ax.set_xscale("log")
            if panel.ylabel:
                ax.set_ylabel(panel.ylabel)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
        fig.tight_layout()
        if out is not None:
            fig.savefig(out)
            return None
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)
