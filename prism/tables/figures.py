"""The report's charts as plain SVG (no plotting library in any environment): our scores beside the
paper's per benchmark, and each training stage's curves read from the metrics.csv beside its artifact."""

from __future__ import annotations

from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
OURS, PAPER = "#1f77b4", "#bbbbbb"


def svg(width: int, height: int, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">\n' + "\n".join(body) + "\n</svg>\n"
    )


def text(x: float, y: float, label: str, anchor: str = "middle", size: int = 11, rotate: int = 0) -> str:
    turn = f' transform="rotate({rotate} {x:.1f} {y:.1f})"' if rotate else ""
    place = f'x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}"'
    return f"<text {place}{turn}>{escape(label)}</text>"


def legend(x: float, y: float, entries: list[tuple[str, str]]) -> list[str]:
    items = []
    for i, (label, colour) in enumerate(entries):
        items.append(f'<rect x="{x:.1f}" y="{y + 14 * i - 8:.1f}" width="10" height="10" fill="{colour}"/>')
        items.append(text(x + 14, y + 14 * i, label, anchor="start"))
    return items


def comparison_chart(title: str, variants: list[str], ours: dict, paper: dict, benchmarks: list[str]) -> str:
    """One panel per benchmark (and Avg), four to a row: a pair of bars per variant, ours beside the
    paper's, on 0-100. `ours[(variant, benchmark)]` and `paper[...]` are scores or None (no bar)."""
    panel_w, panel_h, row_h, left, per_row = 30 + 26 * len(variants), 170, 290, 36, 4
    width = left + panel_w * per_row + 110
    body = [text(width / 2, 18, title, size=13)]
    for p, benchmark in enumerate(benchmarks):
        x0, top = left + (p % per_row) * panel_w, 40 + (p // per_row) * row_h
        body.append(
            f'<rect x="{x0}" y="{top}" width="{panel_w - 8}" height="{panel_h}" fill="none" stroke="#ddd"/>'
        )
        body.append(text(x0 + (panel_w - 8) / 2, top - 6, benchmark))
        for v, variant in enumerate(variants):
            bx = x0 + 8 + 26 * v
            for offset, (source, colour) in enumerate(((ours, OURS), (paper, PAPER))):
                score = source.get((variant, benchmark))
                if score is not None:
                    h = panel_h * max(0.0, min(score, 100.0)) / 100
                    bar = f'x="{bx + 11 * offset}" y="{top + panel_h - h:.1f}" width="10" height="{h:.1f}"'
                    tip = f"{variant} {benchmark}: {score:.1f} ({'ours' if offset == 0 else 'paper'})"
                    body.append(f'<rect {bar} fill="{colour}"><title>{escape(tip)}</title></rect>')
            body.append(text(bx + 10, top + panel_h + 8, variant, anchor="end", size=9, rotate=-60))
        for tick in (0, 50, 100):
            y = top + panel_h * (1 - tick / 100)
            body.append(text(x0 - 4, y + 4, str(tick), anchor="end", size=9))
    body += legend(width - 100, 50, [("ours", OURS), ("paper", PAPER)])
    rows = -(-len(benchmarks) // per_row)
    return svg(width, 40 + rows * row_h, body)


def line_chart(title: str, metric: str, runs: dict[str, list[tuple[float, float]]]) -> list[str]:
    """One panel: `metric` against step for each run. Returns SVG elements, placed at the origin."""
    w, h, left, top = 420, 180, 46, 26
    body = [text(w / 2, 14, f"{title}: {metric}", size=12)]
    points = [p for run in runs.values() for p in run]
    if not points:
        return [*body, text(w / 2, top + h / 2, "no curve recorded")]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y_lo, y_hi = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def scale(x, y):
        return left + (w - left - 10) * (x - x_lo) / (x_hi - x_lo), top + h * (1 - (y - y_lo) / (y_hi - y_lo))

    body.append(
        f'<rect x="{left}" y="{top}" width="{w - left - 10}" height="{h}" fill="none" stroke="#ddd"/>'
    )
    body += [text(left - 4, top + 8, f"{y_hi:.3g}", anchor="end", size=9)]
    body += [text(left - 4, top + h, f"{y_lo:.3g}", anchor="end", size=9)]
    body += [text(left, top + h + 12, f"step {x_lo:g}", anchor="start", size=9)]
    body += [text(w - 10, top + h + 12, f"{x_hi:g}", anchor="end", size=9)]
    for i, run in enumerate(runs.values()):
        colour = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (scale(*p) for p in run))
        body.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
    body += legend(w + 6, top + 8, [(name, PALETTE[i % len(PALETTE)]) for i, name in enumerate(runs)])
    return body


def curves_chart(title: str, metrics: list[str], runs: dict[str, list[dict]]) -> str:
    """A panel per metric, each with one line per run (rows as read from metrics.csv)."""
    panels = []
    for metric in metrics:
        series = {
            name: [(float(r["step"]), float(r[metric])) for r in rows if r.get(metric) not in (None, "")]
            for name, rows in runs.items()
        }
        panels.append(line_chart(title, metric, {k: v for k, v in series.items() if v}))
    body = []
    for i, panel in enumerate(panels):
        body.append(f'<g transform="translate(0 {i * 230})">' + "".join(panel) + "</g>")
    return svg(620, max(1, len(panels)) * 230, body)
