"""Charts as server-rendered SVG: no script, no library, readable by screen readers (each has a
title and a description, and the page gives its figures as a table too)."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 44


def _frame(chart_id: str, title: str, description: str, body: str) -> Markup:
    # Every text put into the markup is escaped here or in `_axis_label`; the rest is numbers.
    return Markup(  # noqa: S704
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{chart_id}-title {chart_id}-desc" preserveAspectRatio="xMidYMid meet">'
        f'<title id="{chart_id}-title">{escape(title)}</title>'
        f'<desc id="{chart_id}-desc">{escape(description)}</desc>{body}</svg>'
    )


def _axis_label(x: float, y: float, text: str, anchor: str = "middle") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" class="axis">{escape(text)}</text>'
    )


def bars(
    chart_id: str,
    title: str,
    labels: Sequence[str],
    values: Sequence[float | None],
    shown: Sequence[str],
    top_label: str | None = None,
) -> Markup:
    """A bar per label; `shown` is each value as the page writes it (for the description), and
    `top_label` the largest as the axis shows it (by default, as a number)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = max([v for v in values if v is not None] + [0])
    bottom = min([v for v in values if v is not None] + [0])
    span = (top - bottom) or 1
    zero_y = TOP + plot_h * top / span
    slot = plot_w / max(1, len(labels))
    parts = [
        f'<line x1="{LEFT}" y1="{zero_y:.1f}" x2="{WIDTH - RIGHT}" y2="{zero_y:.1f}" class="base"/>'
    ]
    for index, (label, value) in enumerate(zip(labels, values, strict=True)):
        x = LEFT + slot * index + slot * 0.15
        if value is not None:
            height = plot_h * abs(value) / span
            y = zero_y - height if value >= 0 else zero_y
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{height:.1f}" '
                f'class="{"bar" if value >= 0 else "bar negative"}"/>'
            )
        parts.append(_axis_label(x + slot * 0.35, HEIGHT - BOTTOM + 16, label))
    parts.append(_axis_label(LEFT - 6, TOP + 10, top_label or short(top), "end"))
    if bottom < 0:
        parts.append(_axis_label(LEFT - 6, HEIGHT - BOTTOM, short(bottom), "end"))
    description = "; ".join(f"{label}: {text}" for label, text in zip(labels, shown, strict=True))
    return _frame(chart_id, title, description, "".join(parts))


def line(chart_id: str, title: str, points: Sequence[tuple[int, int]], description: str) -> Markup:
    """A step line through (x, y) points, x increasing (ledger positions and balances)."""
    if not points:
        return _frame(chart_id, title, description, _axis_label(WIDTH / 2, HEIGHT / 2, "no data"))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    top, bottom = max([*ys, 0]), min([*ys, 0])
    span_x, span_y = (x1 - x0) or 1, (top - bottom) or 1

    def at(x: int, y: int) -> str:
        return f"{LEFT + plot_w * (x - x0) / span_x:.1f},{TOP + plot_h * (top - y) / span_y:.1f}"

    path: list[str] = []
    for index, (x, y) in enumerate(points):
        if index:
            path.append(at(x, points[index - 1][1]))
        path.append(at(x, y))
    zero_y = TOP + plot_h * top / span_y
    body = (
        f'<line x1="{LEFT}" y1="{zero_y:.1f}" x2="{WIDTH - RIGHT}" y2="{zero_y:.1f}" class="base"/>'
        f'<polyline points="{" ".join(path)}" class="trend"/>'
        + _axis_label(LEFT - 6, TOP + 10, short(top), "end")
        + _axis_label(LEFT - 6, HEIGHT - BOTTOM, short(bottom), "end")
        + _axis_label(LEFT, HEIGHT - BOTTOM + 16, f"#{x0}", "start")
        + _axis_label(WIDTH - RIGHT, HEIGHT - BOTTOM + 16, f"#{x1}", "end")
    )
    return _frame(chart_id, title, description, body)


def short(value: float) -> str:
    """An axis figure: 1.2k, 3.4M; fractions with two decimals."""
    if isinstance(value, float) and abs(value) < 10 and value != int(value):
        return f"{value:.2f}"
    for size, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if abs(value) >= size:
            return f"{value / size:.1f}{suffix}"
    return f"{value:g}"
