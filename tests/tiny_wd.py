"""A tiny WD tagger with the real file formats, built offline with the `onnx` helper API.

`model.onnx` takes float32 NHWC `[N, 32, 32, 3]` (BGR, 0..255) and gives `[N, K]` probabilities;
`selected_tags.csv` has the real header and row order (4 ratings, then general, then character).
Each output is `sigmoid(scale * (mean(channel) / 255 - centre))` for one colour channel, or a
constant, so the tags depend on the image's colours per channel: a red image gets the red tags,
a small image padded or composited on white gets the "white" tag (green channel), and a tagger
that feeds RGB instead of BGR, pads with black or skips alpha compositing gets the wrong tags.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

B, G, R = 0, 1, 2  # channel index in the model's BGR input


@dataclass(frozen=True)
class TinyTag:
    name: str
    category: int  # 9 rating, 0 general, 4 character
    channel: int | None = None  # None: a constant probability `value`
    value: float = 0.5  # the constant probability, or the channel mean (0..1) where p = 0.5


def _c(name: str, category: int, p: float) -> TinyTag:
    return TinyTag(name, category, None, p)


def _ch(name: str, channel: int, centre: float = 0.5) -> TinyTag:
    return TinyTag(name, 0, channel, centre)


# The default tag set. General tags in CSV order: red_theme, blue_theme, white_background, ^_^,
# long_hair, solo, virtual_youtuber, alternate_costume.
DEFAULT_TAGS: tuple[TinyTag, ...] = (
    _c("general", 9, 0.95),
    _c("sensitive", 9, 0.3),
    _c("questionable", 9, 0.1),
    _c("explicit", 9, 0.05),
    _ch("red_theme", R),  # mean red > 0.5
    _ch("blue_theme", B),  # mean blue > 0.5
    _ch("white_background", G),  # mean green > 0.5: white areas (red and blue have none)
    TinyTag("^_^", 0, R, 0.5),  # a kaomoji, on for red images
    _c("long_hair", 0, 0.3),  # off at 0.35, on at 0.25
    _c("solo", 0, 0.9),
    _c("virtual_youtuber", 0, 0.9),  # in the default blacklist
    _c("alternate_costume", 0, 0.9),  # in the default blacklist
    _c("hatsune_miku", 4, 0.9),  # character: on at 0.85 when character tags are on
    _c("kaname_madoka", 4, 0.5),  # character: off at 0.85
)

# A second tagger for merge tests: shares some tags, adds `smile` and `red_eyes`.
SECOND_TAGS: tuple[TinyTag, ...] = (
    _c("general", 9, 0.95),
    _c("sensitive", 9, 0.3),
    _c("questionable", 9, 0.1),
    _c("explicit", 9, 0.05),
    _c("smile", 0, 0.9),
    _c("solo", 0, 0.9),
    _ch("red_theme", R),
    TinyTag("red_eyes", 0, R, 0.5),
)

SCALE = 20.0  # steepness: p > 0.95 at 0.15 above the centre, < 0.05 at 0.15 below


def build_tiny_wd(
    folder: Path,
    tags: tuple[TinyTag, ...] | list[TinyTag] = DEFAULT_TAGS,
    fixed_batch: int | None = None,
    input_name: str = "input",
    size: int = 32,
    csv_rows: int | None = None,
) -> Path:
    """Write `model.onnx` + `selected_tags.csv` into `folder` and return it.

    `fixed_batch=1, input_name="input_1:0"` gives a v2-style model fixed at batch 1; `csv_rows`
    writes only the first rows of the CSV (a CSV that does not match the model).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    k = len(tags)
    weight = np.zeros((3, k), dtype=np.float32)
    bias = np.zeros((k,), dtype=np.float32)
    for j, tag in enumerate(tags):
        if tag.channel is None:
            p = min(max(tag.value, 1e-6), 1 - 1e-6)
            bias[j] = math.log(p / (1 - p))
        else:
            weight[tag.channel, j] = SCALE / 255.0
            bias[j] = -SCALE * tag.value
    batch = fixed_batch if fixed_batch else "batch"
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", [input_name], ["means"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["means", "W"], ["logits0"]),
            helper.make_node("Add", ["logits0", "b"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["output"]),
        ],
        "tiny_wd",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, size, size, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, k])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    write_tags_csv(folder / "selected_tags.csv", tags[:csv_rows] if csv_rows is not None else tags)
    return folder


def write_tags_csv(path: Path, tags) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i, tag in enumerate(tags):
            writer.writerow([100000 + i, tag.name, tag.category, 1000 - i])
