"""The figures the notebooks and the report show; each function returns a matplotlib figure (report, notebook 07).

Plotting lives here, not in notebook cells, so a figure is drawn the same way in JupyterLab, in an executed
notebook and in ``report.html``. Every function closes nothing and shows nothing: the caller decides (a notebook
displays the returned figure once; the report turns it into an inline PNG with :func:`png_base64`).
"""

from __future__ import annotations

import base64
import io

import pandas as pd

COLORS = ["#3b6ea8", "#d9822b", "#4c9a6a", "#b5475b", "#7d5fa8", "#8c7a5b", "#4aa3b5", "#999999"]


def save_png(fig, path, dpi: int = 110):
    """Write the figure to ``path`` as a PNG, atomically (a stage's plot beside its results); return the figure."""
    from tulu_kit.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return fig


def png_base64(fig, dpi: int = 100) -> str:
    """The figure as a base64 PNG, for ``<img src="data:image/png;base64,...">`` (a self-contained page)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def training_curves(curves: dict[str, pd.DataFrame]):
    """One panel per training stage: its logged training loss over optimizer steps."""
    import matplotlib.pyplot as plt

    n = max(1, len(curves))
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 2.8), squeeze=False)
    for i, (ax, (stage, frame)) in enumerate(zip(axes[0], curves.items())):
        ax.plot(frame["step"], frame["loss"], marker=".", color=COLORS[i % len(COLORS)])
        ax.set(title=stage, xlabel="step", ylabel="training loss")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def score_bars(table: pd.DataFrame):
    """Grouped horizontal bars: one group per row of ``table`` (a benchmark · metric), one bar per column (a run
    or a model), so long benchmark names stay readable. Scores in percent; a missing one leaves a gap, not a 0."""
    import matplotlib.pyplot as plt

    labels = [" · ".join(str(x) for x in (i if isinstance(i, tuple) else (i,))) for i in table.index]
    columns = list(table.columns)
    height = 0.8 / max(1, len(columns))
    fig, ax = plt.subplots(figsize=(7.5, 0.8 + 0.22 * len(labels) * max(1, len(columns)) ** 0.6))
    for j, column in enumerate(columns):
        ys = [i + (j - (len(columns) - 1) / 2) * height for i in range(len(labels))]
        ax.barh(
            ys, table[column].astype(float), height=height, label=str(column), color=COLORS[j % len(COLORS)]
        )
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="score (%)", xlim=(0, 100))
    ax.grid(axis="x", alpha=0.3)
    if len(columns) > 1:
        ax.legend(fontsize=7, frameon=False, loc="lower right")
    fig.tight_layout()
    return fig
