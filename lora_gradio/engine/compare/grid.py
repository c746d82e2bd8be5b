"""The grid image: epoch labels along the top, weights down the left side, a cell per epoch and weight.
PIL is imported inside the functions."""

from __future__ import annotations

from typing import Any, Sequence

from lora_gradio.engine.compare.xyz import format_weight


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one small bitmap font
        return ImageFont.load_default()


def _text_size(draw: Any, text: str, font: Any) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _fitting_font(draw: Any, texts: Sequence[str], size: int, max_width: int):
    while size > 8:
        font = _font(size)
        if all(_text_size(draw, t, font)[0] <= max_width for t in texts):
            return font, size
        size -= 1
    return _font(8), 8


def build_grid(columns: Sequence[Sequence[Sequence[Any]]], epoch_labels: Sequence[str], weights: Sequence[float], base: "Sequence[Any] | None" = None):
    """One image: a label strip with the epoch names along the top, the weights down the left side,
    then a cell per epoch (column) and weight (row), each holding its images side by side.
    With `base`, a first 'no LoRA' column repeats those images in every row."""
    from PIL import Image, ImageDraw

    first = (base or columns[0][0])[0]
    image_w, image_h = first.size
    per_cell = len(base or columns[0][0])
    cell_w, cell_h = image_w * per_cell, image_h
    headers = (["no LoRA"] if base is not None else []) + list(epoch_labels)
    row_labels = [f"weight {format_weight(w)}" for w in weights]
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wanted = max(12, min(40, round(min(cell_w, cell_h) / 12)))
    top_font, top_size = _fitting_font(scratch, headers, wanted, cell_w - 4)
    side_font = _font(wanted)
    side_w = max(_text_size(scratch, t, side_font)[0] for t in row_labels) + wanted
    top_h = top_size * 2
    n_cols = len(headers)
    grid = Image.new("RGB", (side_w + n_cols * cell_w, top_h + len(weights) * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for col, text in enumerate(headers):
        tw, th = _text_size(draw, text, top_font)
        draw.text((side_w + col * cell_w + (cell_w - tw) // 2, (top_h - th) // 2), text, fill="black", font=top_font)
    for row, text in enumerate(row_labels):
        tw, th = _text_size(draw, text, side_font)
        draw.text(((side_w - tw) // 2, top_h + row * cell_h + (cell_h - th) // 2), text, fill="black", font=side_font)
    all_columns = ([[list(base)] * len(weights)] if base is not None else []) + [list(c) for c in columns]
    for col, column in enumerate(all_columns):
        for row, images in enumerate(column):
            for i, image in enumerate(images):
                grid.paste(image.convert("RGB"), (side_w + col * cell_w + i * image_w, top_h + row * cell_h))
    return grid


def grid_layout(grid_size: tuple[int, int], image_size: tuple[int, int], n_columns: int, n_rows: int, batch: int = 1) -> dict[str, int]:
    """Where the cells of a grid made by `build_grid` are: {'left', 'top', 'cell_w', 'cell_h'} (for tests and the UI)."""
    cell_w, cell_h = image_size[0] * batch, image_size[1]
    return {"left": grid_size[0] - n_columns * cell_w, "top": grid_size[1] - n_rows * cell_h, "cell_w": cell_w, "cell_h": cell_h}
