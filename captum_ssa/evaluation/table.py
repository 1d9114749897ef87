"""The comparison table: methods × metrics, mean ± spread, with the raw values and the
reasons of the cells that failed."""

from __future__ import annotations

import csv
import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np


@dataclass
class ComparisonTable:
    r"""
    One row per method, one column per metric.

    Attributes:
        values (dict): ``values[method][metric]``, the raw values: one number per
                    example, ``(N,)``, or for a curve-valued metric (Quantus's
                    ``PixelFlipping``, ``RegionPerturbation``, ``Selectivity``) one
                    curve per example, ``(N, L)``; NaN where a metric does not
                    apply or failed.
        better (dict): ``better[metric]``: ``"lower"``, ``"higher"`` or ``""``
                    (unknown), shown as ↓/↑ beside the column name.
        notes (dict): ``notes[metric]``: how the metric was computed.
        errors (dict): ``errors[method][metric]``: why a cell failed (its values
                    are NaN), printed under the table.

    :meth:`per_example` gives the numbers a cell summarises (a curve counts as its
    area, see :func:`curve_auc`); ``mean`` and ``spread`` (their standard deviation,
    ignoring NaN) summarise each cell; ``str(table)``, :meth:`to_markdown`,
    :meth:`to_csv`, :meth:`to_dataframe` (pandas, optional) and :meth:`plot` show them.
    """

    values: dict[str, dict[str, np.ndarray]]
    better: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    errors: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return list(self.values)

    @property
    def metrics(self) -> list[str]:
        names: dict[str, None] = {}
        for row in self.values.values():
            names.update(dict.fromkeys(row))
        return list(names)

    def per_example(self, method: str, metric: str) -> np.ndarray:
        """``(N,)``: the cell's values, or the area under each example's curve."""
        cell = _as_cell(self.values[method].get(metric, np.array([np.nan])))
        return curve_auc(cell) if cell.ndim == 2 else cell

    def mean(self, method: str, metric: str) -> float:
        cell = self.per_example(method, metric)
        return math.nan if np.isnan(cell).all() else float(np.nanmean(cell))

    def spread(self, method: str, metric: str) -> float:
        cell = self.per_example(method, metric)
        return math.nan if np.isnan(cell).all() else float(np.nanstd(cell))

    def _header(self, metric: str) -> str:
        arrow = {"lower": " ↓", "higher": " ↑"}.get(self.better.get(metric, ""), "")
        return metric + arrow

    def _formatted(self, method: str, metric: str, digits: int) -> str:
        mean, spread = self.mean(method, metric), self.spread(method, metric)
        if math.isnan(mean):
            return "error" if metric in self.errors.get(method, {}) else "n/a"
        return f"{mean:.{digits}g} ± {spread:.2g}"

    def to_markdown(self, digits: int = 3) -> str:
        """A Markdown table: ``mean ± std`` per cell, ↓/↑ for which way is better."""
        header = ["method", *(self._header(metric) for metric in self.metrics)]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in self.methods:
            cells = [self._formatted(method, metric, digits) for metric in self.metrics]
            lines.append("| " + " | ".join([method, *cells]) + " |")
        if self.errors:
            lines += ["", *(f"- {line}" for line in self._error_lines())]
        return "\n".join(lines)

    def _error_lines(self) -> list[str]:
        return [
            f"{method} / {metric}: {reason}"
            for method, row in self.errors.items()
            for metric, reason in row.items()
        ]

    def __str__(self) -> str:
        rows = [["method", *(self._header(metric) for metric in self.metrics)]]
        rows += [
            [method, *(self._formatted(method, metric, 3) for metric in self.metrics)]
            for method in self.methods
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
        if self.errors:
            lines += ["errors:", *(f"  {line}" for line in self._error_lines())]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"ComparisonTable({len(self.methods)} methods × {len(self.metrics)} metrics)\n{self}"

    def summary(self) -> list[dict[str, Any]]:
        """One record per cell: method, metric, mean, std, n (non-NaN values)."""
        return [
            {
                "method": method,
                "metric": metric,
                "mean": self.mean(method, metric),
                "std": self.spread(method, metric),
                "n": int((~np.isnan(self.per_example(method, metric))).sum()),
            }
            for method in self.methods
            for metric in self.metrics
        ]

    def to_csv(self, path: Union[str, Path]) -> None:
        """Write :meth:`summary` as CSV (method, metric, mean, std, n)."""
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["method", "metric", "mean", "std", "n"])
            writer.writeheader()
            writer.writerows(self.summary())

    def to_dataframe(self) -> Any:
        """:meth:`summary` as a pandas DataFrame (needs pandas)."""
        try:
            pandas = importlib.import_module("pandas")
        except ImportError as error:
            raise ImportError("ComparisonTable.to_dataframe needs pandas") from error
        return pandas.DataFrame(self.summary())

    def plot(self, columns: int = 3) -> Any:
        """One bar panel per metric, mean with a ±std error bar per method;
        returns the matplotlib figure."""
        import matplotlib.pyplot as plt

        metrics = self.metrics
        rows = math.ceil(len(metrics) / columns)
        figure, axes = plt.subplots(
            rows,
            min(columns, len(metrics)),
            figsize=(4.2 * min(columns, len(metrics)), 3.2 * rows),
            squeeze=False,
        )
        positions = np.arange(len(self.methods))
        for axis, metric in zip(axes.flat, metrics):
            means = [self.mean(method, metric) for method in self.methods]
            spreads = [self.spread(method, metric) for method in self.methods]
            axis.bar(positions, means, yerr=spreads, capsize=3, color="tab:blue", alpha=0.8)
            axis.set_xticks(positions, self.methods, rotation=60, ha="right", fontsize=8)
            axis.set_title(self._header(metric), fontsize=10)
            axis.axhline(0, color="black", linewidth=0.5)
        for axis in list(axes.flat)[len(metrics) :]:
            axis.set_visible(False)
        figure.tight_layout()
        return figure


def curve_auc(curves: np.ndarray) -> np.ndarray:
    r"""
    The area under each row of ``curves`` ``(N, L)`` by the trapezoidal rule, with
    the curve's points spread evenly over [0, 1] (:math:`x_k = k / (L - 1)`): the
    curve's mean height (end points counted half), in the units of its scores, so
    it does not grow with the number of steps. Quantus's own ``calculate_auc``
    takes unit steps; it is this value times :math:`L - 1`.
    """
    return (curves[:, 1:] + curves[:, :-1]).sum(1) / (2 * (curves.shape[1] - 1))


def _as_cell(values: Any) -> np.ndarray:
    """Per-example values as ``(N,)``, or per-example curves as ``(N, L)``."""
    cell = np.asarray(values, dtype=float)
    if cell.ndim == 2 and cell.shape[1] > 1:
        return cell
    return cell.reshape(-1)


def table_from_values(
    values: Mapping[str, Mapping[str, Any]],
    better: Mapping[str, str],
    notes: Mapping[str, str],
    errors: Mapping[str, Mapping[str, str]],
) -> ComparisonTable:
    """A table from per-example values (or curves) given as arrays, tensors or lists."""
    return ComparisonTable(
        values={
            method: {metric: _as_cell(cell) for metric, cell in row.items()}
            for method, row in values.items()
        },
        better=dict(better),
        notes=dict(notes),
        errors={method: dict(row) for method, row in errors.items() if row},
    )
