"""The report's charts (PNG, matplotlib from the optional ``bench`` extra).

Three pictures, each with one message a reader takes in at a glance: how much of the
proxy's throughput each design leaves (and how much of its ceiling the writer reaches), what
each design costs the producer per event, and how long an event waits to be committed.
mcpr-store is drawn in the one strong colour; error bars span the lowest to the highest run.
Without matplotlib nothing is drawn and the report says so. Never measures anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .designs import DESIGNS, STORE, label
from .summary import Spread, Summary

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["draw"]

_HIGHLIGHT: Final = "#c0392b"
_OTHER: Final = "#7f8c9a"
_LIGHT: Final = "#c9d1d9"
_LIGHT_HIGHLIGHT: Final = "#f1b7ae"
_DPI: Final = 150



def _us(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _err(s: Spread) -> list[list[float]]:
    return [[s.median - s.low], [s.high - s.median]]


def draw(summary: Summary, keys: list[str], out: Path) -> list[str]:
    """Draw the charts into ``out``; return their file names (none without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.spines.top": False,
                         "axes.spines.right": False, "axes.titleweight": "bold",
                         "axes.titlesize": 11})
    drawn = []
    for name, painter in (("bench_throughput.png", _throughput),
                          ("bench_producer.png", _producer),
                          ("bench_latency.png", _latency)):
        fig = painter(plt, summary, keys)
        if fig is not None:
            fig.savefig(out / name, dpi=_DPI, bbox_inches="tight")
            plt.close(fig)
            drawn.append(name)
    return drawn


def _hbars(ax: Axes, spreads: list[Spread | None], colors: list[str],
           notes: list[str] | None = None) -> None:
    """Horizontal bars, first on top, each with its value (and note) written beside it."""
    notes = notes or [""] * len(spreads)
    for y, (s, color, note) in enumerate(zip(spreads, colors, notes, strict=True)):
        if s is None:
            ax.annotate("not measured", (0, y), xytext=(4, 0), textcoords="offset points",
                        va="center", fontsize=8, color="#777777")
            continue
        ax.barh(y, s.median, color=color, height=0.62, zorder=2)
        if s.runs > 1:
            ax.errorbar(s.median, y, xerr=_err(s), fmt="none", ecolor="#333333",
                        capsize=3, lw=1, zorder=3)
        ax.annotate(f"{s.median:.2f}", (s.high, y), xytext=(5, 0),
                    textcoords="offset points", va="center", fontsize=9)
        if note:  # in the gap under the bar, from the axis: it never runs off the panel
            ax.text(0.006, y + 0.46, note, transform=ax.get_yaxis_transform(), va="center",
                    fontsize=7.5, color=_HIGHLIGHT, fontweight="bold", zorder=6,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.6})
    ax.grid(axis="x", color="#e5e5e5", zorder=0)


def _throughput(plt: Any, summary: Summary, keys: list[str]) -> Any:
    stores = [k for k in keys if DESIGNS[k].stores]
    gil = [summary.get(k, "gil_ratio") for k in stores]
    # The writer's speed with a backlog (issue 16); results older than that scenario show
    # the capped sustained rate instead.
    backlog = any(summary.get(k, "backlog_ratio") for k in stores)
    sustained = [summary.get(k, "backlog_ratio" if backlog else "sustained_ratio")
                 for k in stores]
    if not any(gil) and not any(sustained):
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.55 * len(stores) + 2.4),
                                      sharey=True, gridspec_kw={"wspace": 0.08})
    colors = [_HIGHLIGHT if k == STORE else _OTHER for k in stores]
    ys = list(range(len(stores)))
    left.set_yticks(ys, [label(k) for k in stores])
    left.invert_yaxis()

    notes = []
    for k in stores:
        share = summary.get(k, "gil_committed_share")
        notes.append("" if share is None or share.low >= 0.9995 else
                     f"events committed: {share.median * 100:.1f} % (worst run "
                     f"{share.low * 100:.1f} %)")
    _hbars(left, gil, colors, notes)
    top = max([1.0] + [s.high for s in gil if s is not None])
    left.set_xlim(0, top * 1.3)
    left.axvline(1.0, color="#333333", lw=1.2, zorder=4, label="(1) no store")
    control = summary.pooled("control_ratio")
    if control is not None:
        left.axvline(control.median, color="#333333", lw=1.2, ls="--", zorder=4,
                     label="(1) no store, other core kept busy")
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=2, fontsize=8,
                frameon=False)
    left.set_title("GIL-heavy proxy: requests/s it serves,\nrelative to no store")
    left.set_xlabel("requests/s as a multiple of (1) no store (higher is better)")

    _hbars(right, sustained, colors)
    top = max([1.0] + [s.high for s in sustained if s is not None])
    right.set_xlim(0, top * 1.3)
    right.axvline(1.0, color="#333333", lw=1.2, zorder=4,
                  label="plain executemany, 500 rows per transaction")
    right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, frameon=False)
    right.set_title("Writer: committed events/s with a backlog,\nrelative to plain "
                    "executemany of the same rows" if backlog else
                    "Writer: committed events/s it sustains,\nrelative to plain executemany")
    right.set_xlabel("events/s as a multiple of a plain executemany loop (higher is better)")
    right.tick_params(axis="y", length=0)
    fig.text(0.5, -0.04, f"Bars: median of {summary.runs} runs; whiskers: lowest to highest "
             "run; each ratio against a baseline measured beside it by the same process.",
             ha="center", fontsize=8, color="#555555")
    return fig


def _producer(plt: Any, summary: Summary, keys: list[str]) -> Any:
    rows: list[tuple[str, Spread, Spread]] = []
    for k in keys:
        call, total = summary.get(k, "producer_call_us"), summary.get(k, "producer_total_us")
        if call is not None and total is not None:
            rows.append((k, call, total))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(rows) + 1.8))
    ys = list(range(len(rows)))
    for y, (k, call, total) in zip(ys, rows, strict=True):
        strong = k == STORE
        ax.barh(y, total.median, height=0.62, zorder=2,
                color=_LIGHT_HIGHLIGHT if strong else _LIGHT)
        ax.barh(y, call.median, height=0.62, zorder=3, color=_HIGHLIGHT if strong else _OTHER)
        text = f"{_us(call.median)} µs in record()"
        if k == "none":
            text += " (the harness's loop alone)"
        elif total.median > call.median * 1.05:
            text += f",  {_us(total.median)} µs with its threads"
        ax.annotate(text, (max(total.median, call.median), y), xytext=(6, 0),
                    textcoords="offset points", va="center", fontsize=9)
    ax.set_xscale("log")
    ax.set_yticks(ys, [label(k) for k, _, _ in rows])
    ax.invert_yaxis()
    ax.grid(axis="x", which="both", color="#eeeeee", zorder=0)
    lo = min(c.median for _, c, _ in rows)
    hi = max(t.median for _, _, t in rows)
    ax.set_xlim(lo / 2, hi * 40)
    ax.set_title("Producer cost: CPU per event in the proxy process (lower is better)")
    ax.set_xlabel("µs per event, log scale: dark = the record() call; light = plus the "
                  "proxy's sender, feeder or writer threads")
    return fig


def _latency(plt: Any, summary: Summary, keys: list[str]) -> Any:
    series = [(k, summary.latency_samples_ms.get(k, [])) for k in keys if DESIGNS[k].stores]
    series = [(k, v) for k, v in series if v]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(10, 5))
    cmap = plt.get_cmap("tab10")
    others = 0
    for k, values in series:
        n = len(values)
        ys = [(i + 1) / n for i in range(n)]
        if k == STORE:
            ax.step(values, ys, where="post", color=_HIGHLIGHT, lw=2.6, label=label(k),
                    zorder=5)
        else:
            color = cmap(others if others < 3 else others + 1)  # tab10's red is ours
            others += 1
            ax.step(values, ys, where="post", color=color, lw=1.4, label=label(k), alpha=0.9)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.axhline(0.5, color="#bbbbbb", lw=0.8, ls=":")
    ax.axhline(0.99, color="#bbbbbb", lw=0.8, ls=":")
    ax.text(1.0, 0.5, "p50 ", transform=ax.get_yaxis_transform(), ha="right", va="bottom",
            fontsize=8, color="#777777")
    ax.text(1.0, 0.99, "p99 ", transform=ax.get_yaxis_transform(), ha="right", va="bottom",
            fontsize=8, color="#777777")
    ax.grid(axis="x", which="major", color="#eeeeee")
    ax.set_xlabel("ms from record() until the row is visible to a reader (log scale)")
    ax.set_ylabel("share of events committed by then")
    ax.set_title("Latency to commit at 1,000 events/s: most designs batch for up to 200 ms")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncols=2, fontsize=8.5,
              frameon=False)
    return fig
