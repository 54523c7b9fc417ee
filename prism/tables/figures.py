"""The report's charts, drawn with matplotlib as SVG: our scores beside the paper's per benchmark (with
95% bootstrap intervals where the records hold their samples), and each training stage's curves read from
the metrics.csv beside its artifact. Every bar, error bar and line carries an id naming what it shows."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

OURS, PAPER = "#1f77b4", "#bbbbbb"
# Same input, same bytes: no timestamp, fixed ids.
SVG_SETTINGS = {"svg.hashsalt": "prism-tables", "svg.fonttype": "none"}
PER_ROW = 4


def svg_text(figure) -> str:
    buffer = io.StringIO()
    with matplotlib.rc_context(SVG_SETTINGS):
        figure.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def comparison_chart(
    title: str,
    variants: list[str],
    ours: dict,
    paper: dict,
    benchmarks: list[str],
    intervals: dict | None = None,
) -> str:
    """One panel per benchmark (and Avg), four to a row: a pair of bars per variant, ours beside the
    paper's, on 0-100. `ours[(variant, benchmark)]` and `paper[...]` are scores or None (no bar);
    `intervals[(variant, benchmark)]` a (low, high) drawn as an error bar on ours."""
    intervals = intervals or {}
    rows = -(-len(benchmarks) // PER_ROW)
    width = max(3.0, 0.45 * len(variants) + 0.8)
    figure, axes = plt.subplots(rows, PER_ROW, figsize=(width * PER_ROW, 3.2 * rows), squeeze=False)
    figure.suptitle(title)
    for ax in axes.flat[len(benchmarks) :]:
        ax.set_visible(False)
    for ax, benchmark in zip(axes.flat, benchmarks, strict=False):
        ax.set_title(benchmark, fontsize=10)
        ax.set_ylim(0, 100)
        ax.set_xticks(range(len(variants)), variants, rotation=60, ha="right", fontsize=8)
        for v, variant in enumerate(variants):
            for offset, source, colour, name in ((-0.2, ours, OURS, "ours"), (0.2, paper, PAPER, "paper")):
                score = source.get((variant, benchmark))
                if score is None:
                    continue
                bar = ax.bar(v + offset, score, width=0.4, color=colour, label=name)
                bar.patches[0].set_gid(f"{name} {variant} {benchmark} {score:.1f}")
            interval = intervals.get((variant, benchmark))
            if interval is not None and ours.get((variant, benchmark)) is not None:
                score, (low, high) = ours[variant, benchmark], interval
                error = ax.errorbar(
                    v - 0.2, score, yerr=[[score - low], [high - score]], fmt="none", ecolor="black"
                )
                error.lines[2][0].set_gid(f"ci {variant} {benchmark} {low:.1f}-{high:.1f}")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in (OURS, PAPER)]
    figure.legend(handles, ["ours (95% CI)", "paper"], loc="upper right")
    figure.tight_layout()
    return svg_text(figure)


def curves_chart(title: str, metrics: list[str], runs: dict[str, list[dict]]) -> str:
    """A panel per metric, each with one line per run (rows as read from metrics.csv)."""
    figure, axes = plt.subplots(len(metrics), 1, figsize=(7, 2.6 * len(metrics)), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        ax.set_title(f"{title}: {metric}", fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        drawn = 0
        for name, rows in runs.items():
            points = [(float(r["step"]), float(r[metric])) for r in rows if r.get(metric) not in (None, "")]
            if points:
                (line,) = ax.plot(*zip(*points, strict=True), label=name, linewidth=1.2)
                line.set_gid(f"curve {name} {metric}")
                drawn += 1
        if drawn:
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        else:
            ax.text(0.5, 0.5, "no curve recorded", ha="center", va="center", transform=ax.transAxes)
    figure.tight_layout()
    return svg_text(figure)
