"""An offline synthetic task where looking closer matters: name the colour of a small square on a large canvas.

Used by the CPU demo, the learning benchmark and the end-to-end tests. Each image is a plain 448-pixel canvas with one
32-pixel coloured square somewhere inside one of its four quarters; the question names the quarter and asks for the
colour, so the ground truth is known exactly, the policy knows where to look, and only the pixels hold the answer.
The sizes are measured, not picked (NOTE.md, "Can a tiny policy learn the square task from pixels?"): at the CPU
preset's 224-pixel view the square is 16 pixels and the tiny model reads its colour at chance, while the quarter's
crop (zoomed by the tool) shows it at 52 pixels and the same model learns to read it. Rows follow verl's RLHF parquet schema (see :class:`~visionr3.data.rows.VisionRow`) and select
``visionr3_agent``. Deterministic for a given seed.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from visionr3.data.prompts import SR1_FORMAT
from visionr3.data.rows import VisionRow

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (235, 200, 20)}
QUARTERS = ("top-left", "top-right", "bottom-left", "bottom-right")
SR1_QUESTION = "What colour is the small square in the {quarter} quarter of the image?"
QUESTION = SR1_QUESTION + " Zoom in if you need to, then answer with one word inside <answer></answer>."
DATA_SOURCE = "visionr3/synthetic_marks"


@dataclass(frozen=True)
class MarkSample:
    image: Image.Image
    colour: str
    box: tuple[int, int, int, int]  # (x1, y1, x2, y2) of the square, pixels of ``image``
    quarter: str  # one of QUARTERS: the square lies wholly inside it

    def question(self, task: str = "zoom") -> str:
        return (QUESTION if task == "zoom" else SR1_QUESTION).format(quarter=self.quarter)


def quarter_box(quarter: str, size: tuple[int, int]) -> list[int]:
    """``[x1, y1, x2, y2]`` of ``quarter`` (one of :data:`QUARTERS`) in an image of ``size``."""
    width, height = size
    x1 = 0 if quarter.endswith("left") else width // 2
    y1 = 0 if quarter.startswith("top") else height // 2
    return [x1, y1, x1 + width // 2, y1 + height // 2]


def make_sample(rng: random.Random, size: tuple[int, int] = (448, 448), side: int = 32) -> MarkSample:
    width, height = size
    colour = rng.choice(sorted(COLOURS))
    quarter = rng.choice(QUARTERS)
    left, top, _, _ = quarter_box(quarter, size)
    x1 = left + rng.randrange(0, width // 2 - side + 1)
    y1 = top + rng.randrange(0, height // 2 - side + 1)
    image = Image.new("RGB", size, (236, 236, 230))
    draw = ImageDraw.Draw(image)
    draw.rectangle((x1, y1, x1 + side - 1, y1 + side - 1), fill=COLOURS[colour])
    return MarkSample(image=image, colour=colour, box=(x1, y1, x1 + side, y1 + side), quarter=quarter)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


TASKS = ("zoom", "sr1")
"""``zoom``: answer in ``<answer>`` after zooming in (``visionr3_agent``, or any loop given to ``make_row``); ``sr1``:
Vision-SR1's description/think/``\\boxed{}`` format with the text-only self-reward pass (``visionr3_vision_sr1``)."""


def make_row(sample: MarkSample, index: int, agent_name: str | None = None, task: str = "zoom") -> VisionRow:
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; expected one of {TASKS}")
    question = sample.question(task)
    prompt = "<image>" + question if task == "zoom" else question + "<image>" + SR1_FORMAT
    return VisionRow(
        data_source=DATA_SOURCE,
        agent_name=agent_name or ("visionr3_agent" if task == "zoom" else "visionr3_vision_sr1"),
        prompt=[{"role": "user", "content": prompt}],
        images=[{"bytes": png_bytes(sample.image), "path": None}],
        reward_model={"style": "rule", "ground_truth": sample.colour},
        extra_info={"index": index, "question": question, "box": list(sample.box), "quarter": sample.quarter},
    )


def write_parquet(path: str | Path, count: int, seed: int, size: tuple[int, int] = (448, 448), task: str = "zoom") -> Path:
    """Write ``count`` rows of ``task`` to ``path`` (parquet); returns the path."""
    import pandas as pd

    rng = random.Random(seed)
    rows = [make_row(make_sample(rng, size), index=i, task=task) for i in range(count)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)
    return path
