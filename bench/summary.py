"""From the workers' per-run results to medians, spreads and ratios against baselines.

Every ratio is taken within one worker, against the baseline that worker measured beside
the scenario (a proxy with no store, alone and with a busy core; the executemany ceiling;
one faster-fifo ``put_nowait``), and only then summarised over runs: on a shared machine a
baseline measured minutes apart would carry other load. Never compares a number with a
fixed threshold.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any, Final

__all__ = ["Spread", "Summary", "summarise"]

#: Derived ratios: name -> (metric, baseline metric), both from the same worker's results.
RATIOS: Final = {
    "gil_ratio": ("gil_rps", "base_gil_rps"),
    "gil_ratio_busy": ("gil_rps", "base_gil_busy_rps"),
    "control_ratio": ("base_gil_busy_rps", "base_gil_rps"),  # what a busy core costs (1)
    "sustained_ratio": ("sustained_per_s", "base_ceiling_per_s"),
    "backlog_ratio": ("backlog_per_s", "base_backlog_ceiling_per_s"),
    "capacity_ratio": ("capacity_per_s", "base_backlog_ceiling_per_s"),
    # the plain loop's CPU per row over the writer's per event: 1 = as cheap as the loop
    "backlog_cpu_ratio": ("base_backlog_ceiling_cpu_us", "backlog_writer_cpu_us"),
    "producer_vs_put": ("producer_total_us", "base_put_us"),
}


@dataclasses.dataclass(frozen=True)
class Spread:
    """The median of a metric over runs, with the lowest and highest run."""

    median: float
    low: float
    high: float
    runs: int


@dataclasses.dataclass
class Summary:
    """Per design: each metric's spread, the pooled latency samples, and failures."""

    metrics: dict[str, dict[str, Spread]]
    latency_samples_ms: dict[str, list[float]]
    failures: dict[str, list[str]]
    runs: int
    values: dict[str, dict[str, list[float]]]  # design -> metric -> one value per run

    def get(self, design: str, metric: str) -> Spread | None:
        return self.metrics.get(design, {}).get(metric)

    def pooled(self, metric: str) -> Spread | None:
        """A metric over every design's runs: for baselines, which every worker measures."""
        pool = [v for per_metric in self.values.values() for v in per_metric.get(metric, [])]
        return _spread(pool) if pool else None


def _spread(values: list[float]) -> Spread:
    return Spread(statistics.median(values), min(values), max(values), len(values))


def summarise(runs: list[dict[str, dict[str, Any]]],
              failures: dict[str, list[str]]) -> Summary:
    """``runs[i][design]`` is design's result in run ``i`` (absent when it failed)."""
    values: dict[str, dict[str, list[float]]] = {}
    samples: dict[str, list[float]] = {}
    for run in runs:
        for design, result in run.items():
            per_metric = values.setdefault(design, {})
            for metric, value in result.items():
                if metric == "latency_samples_ms":
                    samples.setdefault(design, []).extend(value)
                elif isinstance(value, int | float) and not isinstance(value, bool):
                    per_metric.setdefault(metric, []).append(float(value))
            for name, (metric, base_metric) in RATIOS.items():
                base = result.get(base_metric)
                if result.get(metric) is not None and base:
                    per_metric.setdefault(name, []).append(result[metric] / base)
    metrics = {design: {metric: _spread(v) for metric, v in per_metric.items()}
               for design, per_metric in values.items()}
    return Summary(metrics, {d: sorted(s) for d, s in samples.items()}, failures, len(runs),
                   values)
