"""Reports of a threshold sweep: a CSV/JSON table and a figure.

The only cascade module that writes files. The figure uses matplotlib's ``Agg`` backend
(no display needed) with fixed size, DPI and metadata, so the same rows give the same
picture.

Figure: cascade accuracy against escalation rate, one line per policy in ``rows``, with
the oracle and random bounds at the same escalation rate, horizontal lines for
edge-only and cloud-only accuracy, and the chosen row marked. Two panels: the full range
of escalation rates, and the low-rate region where a cascade is operated.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from coordinator.cascade.calibration import SweepRow

__all__ = ["plot", "write_table"]

FIELDS = [f.name for f in dataclasses.fields(SweepRow)]


def _clean(value: object) -> object:
    """JSON-ready: NaN/inf become null (empty in the CSV), NumPy scalars Python ones,
    recursively through dicts, lists and tuples."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_table(rows: Sequence[SweepRow], path_csv: str | Path, path_json: str | Path,
                summary: Mapping[str, object]) -> None:
    """Write ``rows`` as CSV (one line per row) and as JSON ``{"summary", "rows"}``."""
    records = [{k: _clean(v) for k, v in dataclasses.asdict(r).items()} for r in rows]
    with open(path_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for rec in records:
            writer.writerow({k: "" if v is None else v for k, v in rec.items()})
    document = {"summary": _clean(summary), "rows": records}
    Path(path_json).write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")


def _bounds(rows: Sequence[SweepRow], summary: Mapping[str, object] | None
            ) -> tuple[float | None, float | None]:
    """Edge-only and cloud-only accuracy: from ``summary``, else from the random bound.

    The random bound is exactly linear in the rate, ``edge + rate * (cloud - edge)``,
    so two distinct rates determine both ends.
    """
    if summary and "edge_only_accuracy" in summary and "cloud_only_accuracy" in summary:
        return float(summary["edge_only_accuracy"]), float(summary["cloud_only_accuracy"])
    by_rate = {r.escalation_rate: r.random_accuracy for r in rows}
    if len(by_rate) < 2:
        return None, None
    (r0, a0), (r1, a1) = min(by_rate.items()), max(by_rate.items())
    slope = (a1 - a0) / (r1 - r0)
    return a0 - slope * r0, a0 + slope * (1.0 - r0)


def _steps(rows: Sequence[SweepRow], attr: str) -> tuple[np.ndarray, np.ndarray]:
    """Points by escalation count, one per count (rows with equal counts agree)."""
    points = {r.escalated: (r.escalation_rate, getattr(r, attr)) for r in rows}
    xs, ys = zip(*(points[k] for k in sorted(points)), strict=True)
    return 100.0 * np.asarray(xs), 100.0 * np.asarray(ys)


def plot(rows: Sequence[SweepRow], path_png: str | Path, chosen: SweepRow | None = None,
         title: str = "Edge/cloud cascade", *, summary: Mapping[str, object] | None = None,
         zoom_rate: float | None = None) -> None:
    """Draw the sweep to ``path_png`` (see the module docstring).

    ``summary`` (from ``cascade_summary``) gives the edge-only / cloud-only lines; without
    it they are recovered from the random bound. ``zoom_rate`` is the right panel's
    largest escalation rate (default: twice the chosen rate, at least 20 %).
    """
    if not rows:
        raise ValueError("rows: nothing to plot")
    # Imported here: only report writers pay for matplotlib. A bare Figure with an Agg
    # canvas leaves pyplot's global state (and any interactive backend) alone.
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    edge_acc, cloud_acc = _bounds(rows, summary)
    policies = list(dict.fromkeys(r.policy for r in rows))
    if zoom_rate is None:
        zoom_rate = max(0.2, 2.0 * chosen.escalation_rate) if chosen else 0.2
    fig = Figure(figsize=(13, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    colors = colormaps["tab10"].colors
    for ax, right in zip(axes, (1.0, zoom_rate), strict=True):
        x, y = _steps(rows, "oracle_accuracy")
        ax.plot(x, y, color="black", lw=1.2, ls="--", label="oracle (same rate)")
        x, y = _steps(rows, "random_accuracy")
        ax.plot(x, y, color="gray", lw=1.2, ls=":", label="random (same rate)")
        for i, name in enumerate(policies):
            x, y = _steps([r for r in rows if r.policy == name], "cascade_accuracy")
            # Thinner lines for later policies, so identical curves (entropy and
            # normalized entropy rank items the same way) stay visible.
            ax.plot(x, y, color=colors[i % len(colors)], lw=max(0.8, 3.0 - 0.5 * i),
                    marker=".", ms=3, label=f"cascade: {name}")
        if edge_acc is not None:
            ax.axhline(100 * edge_acc, color="tab:red", lw=1, alpha=0.7,
                       label=f"edge only ({100 * edge_acc:.2f} %)")
        if cloud_acc is not None:
            ax.axhline(100 * cloud_acc, color="tab:green", lw=1, alpha=0.7,
                       label=f"cloud only ({100 * cloud_acc:.2f} %)")
        if chosen is not None:
            ax.plot([100 * chosen.escalation_rate], [100 * chosen.cascade_accuracy],
                    marker="*", ms=15, color="gold", markeredgecolor="black", ls="none",
                    label=f"chosen: {chosen.policy} @ {chosen.threshold:.4g} "
                          f"({100 * chosen.escalation_rate:.1f} %, "
                          f"{100 * chosen.cascade_accuracy:.2f} %)"
                    if chosen.threshold is not None else f"chosen: {chosen.policy}")
        visible = [r for r in rows if r.escalation_rate <= right + 1e-12]
        low = min(min(r.random_accuracy for r in visible or rows),
                  edge_acc if edge_acc is not None else 1.0)
        ax.set_xlim(0, 100 * right)
        ax.set_ylim(100 * low - 0.3, 100.15)
        ax.set_xlabel("escalation rate (% of items sent to the cloud)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(True, alpha=0.35)
    axes[0].set_title("all escalation rates")
    axes[1].set_title(f"zoom: 0-{100 * zoom_rate:.0f} %")
    axes[1].legend(loc="lower right", fontsize=8, framealpha=0.9)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path_png, metadata={"Software": None})
