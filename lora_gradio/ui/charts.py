"""Small inline SVG line charts (loss, learning rate): the same picture under every Gradio version,
inside the WebUI too, and no plotting library to load."""

from __future__ import annotations

from lora_gradio.ui.common import escape

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 460, 180, 58, 22, 24
COLOURS = ("#f97316", "#2563eb", "#16a34a", "#9333ea")
MAX_POINTS = 400  # more points than pixels only slows the browser


def _thin(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    if len(xs) <= MAX_POINTS:
        return xs, ys
    stride = len(xs) / MAX_POINTS
    picked = sorted({int(i * stride) for i in range(MAX_POINTS)} | {len(xs) - 1})
    return [xs[i] for i in picked], [ys[i] for i in picked]


def _tick(value: float) -> str:
    if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4):
        return f"{value:.1e}"
    return f"{value:.3g}"


def line_chart(title: str, xs: list[float], series: dict[str, list[float]], elem_id: str, x_label: str = "step") -> str:
    """One chart with a line per series (all sharing `xs`); an empty frame with a note when no data yet."""
    points = {name: ys for name, ys in series.items() if ys}
    head = f"<div id='{escape(elem_id)}' data-points='{len(xs)}' style='display:inline-block'>"
    if not xs or not points:
        return head + f"<div style='width:{WIDTH}px;height:{HEIGHT}px;display:flex;align-items:center;justify-content:center;opacity:.6;border:1px dashed rgba(128,128,128,.4);border-radius:6px'>{escape(title)}: no steps yet</div></div>"
    all_y = [y for ys in points.values() for y in ys]
    low, high = min(all_y), max(all_y)
    if high == low:
        low, high = low - (abs(low) * 0.1 or 1), high + (abs(high) * 0.1 or 1)
    x_low, x_high = min(xs), max(xs)
    x_span = (x_high - x_low) or 1
    plot_w, plot_h = WIDTH - PAD_LEFT - 10, HEIGHT - PAD_BOTTOM - PAD_TOP

    def px(x: float) -> float:
        return PAD_LEFT + (x - x_low) / x_span * plot_w

    def py(y: float) -> float:
        return PAD_TOP + (high - y) / (high - low) * plot_h

    parts = [
        f"<svg width='{WIDTH}' height='{HEIGHT}' viewBox='0 0 {WIDTH} {HEIGHT}' xmlns='http://www.w3.org/2000/svg' style='font:11px sans-serif'>",
        f"<text x='{PAD_LEFT}' y='14' fill='currentColor' font-weight='bold'>{escape(title)}</text>",
        f"<rect x='{PAD_LEFT}' y='{PAD_TOP}' width='{plot_w}' height='{plot_h}' fill='none' stroke='rgba(128,128,128,.4)'/>",
    ]
    for value in (high, (high + low) / 2, low):
        parts.append(f"<text x='{PAD_LEFT - 4}' y='{py(value) + 4:.1f}' text-anchor='end' fill='currentColor'>{_tick(value)}</text>")
    parts.append(f"<text x='{PAD_LEFT}' y='{HEIGHT - 6}' fill='currentColor'>{_tick(x_low)}</text>")
    parts.append(f"<text x='{WIDTH - 10}' y='{HEIGHT - 6}' text-anchor='end' fill='currentColor'>{_tick(x_high)} {escape(x_label)}</text>")
    legend_x = WIDTH - 10
    for index, (name, ys) in enumerate(points.items()):
        colour = COLOURS[index % len(COLOURS)]
        tx, ty = _thin(xs[: len(ys)], ys)
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(tx, ty))
        parts.append(f"<polyline fill='none' stroke='{colour}' stroke-width='1.6' points='{path}'/>")
        if len(points) > 1:
            parts.append(f"<text x='{legend_x}' y='{14 + 12 * index}' text-anchor='end' fill='{colour}'>{escape(name)}</text>")
    parts.append("</svg>")
    return head + "".join(parts) + "</div>"
