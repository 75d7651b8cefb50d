"""Charts rendered on the server as inline SVG: no script, no CDN, readable without JavaScript.

Every value and label is escaped; each point carries a ``<title>`` so hovering shows its value.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup, escape

PALETTE = ("#2563eb", "#f59e0b", "#dc2626", "#059669", "#7c3aed", "#db2777", "#0891b2", "#65a30d")


@dataclass(frozen=True)
class Line:
    label: str
    values: Sequence[float | None]  # one per x position; None leaves a gap


def nice_max(value: float) -> float:
    """A round number (1, 2, 2.5 or 5 times a power of ten) at or above ``value``."""
    if value <= 0:
        return 1.0
    base = 10.0 ** math.floor(math.log10(value))
    return next(step * base for step in (1, 2, 2.5, 5, 10) if step * base >= value)


def _whole_steps() -> Iterator[int]:
    """1, 2, 5, 10, 20, 25, 50, 100, 200, 250, ...: round steps that are whole numbers."""
    for exponent in itertools.count():
        base = 10**exponent
        yield from (base, 2 * base, *((5 * base // 2,) if exponent else ()), 5 * base)


def y_ticks(peak: float, *, integer: bool = False) -> list[float]:
    """The value axis's ticks, from 0 to a round top at or above ``peak``.

    Four equal steps up to ``nice_max(peak)``; for counts (``integer``) a whole-number step and
    as many steps (at most four) as reach the peak, so no tick reads 2.5 requests.
    """
    if not integer:
        top = nice_max(peak)
        return [top * k / 4 for k in range(5)]
    step = next(s for s in _whole_steps() if s * 4 >= peak)
    return [float(step * k) for k in range(max(1, math.ceil(peak / step)) + 1)]


def line_chart(
    title: str,
    xs: Sequence[datetime],
    lines: Sequence[Line],
    *,
    y_format: Callable[[float], str] = lambda v: f"{v:,.0f}",
    x_format: str = "%m-%d",
    integer: bool = False,
    width: int = 560,
    height: int = 220,
) -> Markup:
    """A line chart of one or more series over time buckets (``integer``: the values count)."""
    left, right, top, bottom = 64, 22, 28, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((v for line in lines for v in line.values if v is not None), default=0.0)
    ticks_y = y_ticks(peak, integer=integer)
    y_max = ticks_y[-1]
    n = len(xs)

    def x_at(i: int) -> float:
        return left + (plot_w * (i / (n - 1)) if n > 1 else plot_w / 2)

    def y_at(v: float) -> float:
        return top + plot_h - plot_h * (v / y_max)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}">',
        f'<text x="8" y="16" class="chart-title">{escape(title)}</text>',
    ]
    for v in ticks_y:
        y = y_at(v)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">'
            f"{escape(y_format(v))}</text>"
        )
    ticks = max(1, n // 6)
    for i in range(0, n, ticks):
        parts.append(
            f'<text x="{x_at(i):.1f}" y="{height - bottom + 16}" class="tick" '
            f'text-anchor="middle">{escape(xs[i].strftime(x_format))}</text>'
        )
    for index, line in enumerate(lines):
        color = PALETTE[index % len(PALETTE)]
        segments: list[list[str]] = [[]]
        for i, value in enumerate(line.values):
            if value is None:
                segments.append([])
                continue
            segments[-1].append(f"{x_at(i):.1f},{y_at(value):.1f}")
        for seg in segments:
            if len(seg) > 1:
                parts.append(
                    f'<polyline points="{" ".join(seg)}" fill="none" stroke="{color}" '
                    f'stroke-width="2"/>'
                )
        for i, value in enumerate(line.values):
            if value is not None:
                label = f"{line.label} {xs[i].strftime(x_format)}: {y_format(value)}"
                parts.append(
                    f'<circle cx="{x_at(i):.1f}" cy="{y_at(value):.1f}" r="2.5" fill="{color}">'
                    f"<title>{escape(label)}</title></circle>"
                )
        # The legend sits at the top right, one slot per line, clear of the title.
        lx = width - right - (len(lines) - index) * 80
        parts.append(f'<rect x="{lx}" y="9" width="10" height="3" fill="{color}"/>')
        parts.append(f'<text x="{lx + 14}" y="14" class="legend">{escape(line.label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704  (every value above is escaped)


def bar_chart(
    title: str,
    items: Sequence[tuple[str, float]],
    *,
    value_format: Callable[[float], str] = lambda v: f"{v:,.0f}",
    width: int = 360,
    bar_height: int = 18,
) -> Markup:
    """Horizontal bars, largest first (a mix: models, endpoints)."""
    items = sorted(items, key=lambda item: -item[1])[:10]
    label_w, top = 130, 28
    height = top + len(items) * (bar_height + 6) + 8
    peak = max((v for _, v in items), default=0.0) or 1.0
    plot_w = width - label_w - 70
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}">',
        f'<text x="4" y="16" class="chart-title">{escape(title)}</text>',
    ]
    for i, (label, value) in enumerate(items):
        y = top + i * (bar_height + 6)
        w = max(1.0, plot_w * value / peak)
        color = PALETTE[i % len(PALETTE)]
        parts.append(
            f'<text x="{label_w - 6}" y="{y + bar_height - 5}" class="tick" text-anchor="end">'
            f"{escape(label[:20])}</text>"
        )
        parts.append(
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_height}" fill="{color}">'
            f"<title>{escape(label)}: {escape(value_format(value))}</title></rect>"
        )
        parts.append(
            f'<text x="{label_w + w + 4:.1f}" y="{y + bar_height - 5}" class="tick">'
            f"{escape(value_format(value))}</text>"
        )
    if not items:
        parts.append(f'<text x="4" y="{top + 12}" class="tick">No requests in this window.</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704  (every value above is escaped)
