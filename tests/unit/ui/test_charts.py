"""Charts drawn on the server: text in them is escaped, and each says in words what it shows."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from protocoop.ui.charts import bars, line

SVG = "{http://www.w3.org/2000/svg}"


def parse(markup: str) -> ET.Element:
    return ET.fromstring(
        str(markup).replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1)
    )


def test_a_bar_chart_has_one_bar_per_value_and_describes_them() -> None:
    chart = parse(bars("v", "Volume", ["2026-10", "2026-11"], [10, 30], ["10 h", "30 h"]))

    rects = chart.findall(f"{SVG}rect")
    assert len(rects) == 2
    heights = [float(r.get("height", "0")) for r in rects]
    assert abs(heights[1] - 3 * heights[0]) < 0.5  # drawn to one decimal
    assert chart.findtext(f"{SVG}desc") == "2026-10: 10 h; 2026-11: 30 h"


def test_negative_bars_hang_below_the_base_line_and_missing_values_draw_nothing() -> None:
    chart = parse(bars("v", "Net", ["a", "b", "c"], [5, -5, None], ["5", "-5", "none"]))

    rects = chart.findall(f"{SVG}rect")
    assert [r.get("class") for r in rects] == ["bar", "bar negative"]


def test_text_from_the_ledger_is_escaped() -> None:
    markup = str(line("b", "Balance of <script>", [(1, 5), (2, -3)], "a & b"))

    assert "<script>" not in markup
    chart = parse(markup)
    assert chart.findtext(f"{SVG}title") == "Balance of <script>"
    assert chart.findtext(f"{SVG}desc") == "a & b"


def test_a_balance_line_steps_through_every_point() -> None:
    chart = parse(line("b", "Balance", [(1, 10), (4, -10), (9, 0)], "three"))

    points = chart.find(f"{SVG}polyline")
    assert points is not None
    assert len(points.get("points", "").split()) == 5  # each change, held until the next
