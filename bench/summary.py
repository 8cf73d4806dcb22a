"""From the workers' per-run results to medians, spreads and ratios against baselines.

Every ratio is taken within one run, against that run's baseline (design 1's requests/s
with and without a busy core, the executemany ceiling, faster-fifo's ``put_nowait``), and
only then summarised over runs: on a shared machine a baseline measured minutes apart
would carry other load. Never compares a number with a fixed threshold.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any, Final

__all__ = ["Spread", "Summary", "summarise"]

#: Derived per-run ratios: name -> (numerator metric, baseline design, baseline metric).
RATIOS: Final = {
    "gil_ratio": ("gil_rps", "none", "gil_rps"),
    "gil_ratio_busy": ("gil_rps", "none", "gil_busy_rps"),
    "control_ratio": ("gil_busy_rps", "none", "gil_rps"),  # what a busy core costs (1)
    "sustained_ratio": ("sustained_per_s", "none", "ceiling_per_s"),
    "producer_vs_put": ("producer_total_us", "fifo-per-event", "producer_call_us"),
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

    def get(self, design: str, metric: str) -> Spread | None:
        return self.metrics.get(design, {}).get(metric)


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
            for name, (metric, base_design, base_metric) in RATIOS.items():
                base = run.get(base_design, {}).get(base_metric)
                if result.get(metric) is not None and base:
                    per_metric.setdefault(name, []).append(result[metric] / base)
    metrics = {design: {metric: Spread(statistics.median(v), min(v), max(v), len(v))
                        for metric, v in per_metric.items()}
               for design, per_metric in values.items()}
    return Summary(metrics, {d: sorted(s) for d, s in samples.items()}, failures, len(runs))
