"""What every part of the report shares: escaping model text, percentages, and plots as embedded PNGs."""

from __future__ import annotations

import base64
import html
import io
from typing import Any


def esc(value: Any) -> str:
    return html.escape(str(value))


def pct(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "–"


def figure(draw, xlabel: str = "iteration", integer_x: bool = True) -> str:
    """Run `draw(ax)` on a new figure and return it as an <img> with a PNG data URI.

    The x axis is labelled `xlabel` and ticks whole numbers unless `integer_x` is off.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    title = draw(ax)
    ax.set_title(title, fontsize=11)
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="{esc(title)}" src="data:image/png;base64,{data}">'
