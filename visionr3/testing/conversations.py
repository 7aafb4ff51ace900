"""A worked tool-using conversation over a synthetic image, shared by the tests and the CPU demo.

The image is a large plain canvas with one small coloured square: the question is only answerable by looking closer,
which is the situation visionr3's crop/zoom tool exists for. Everything is deterministic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from PIL import Image, ImageDraw

CROP_TOOL_SCHEMA = {
    "type": "function",
    "function": {
        "name": "image_zoom_in_tool",
        "description": "Zoom in on a region of the image: crop the bounding box and return it enlarged.",
        "parameters": {
            "type": "object",
            "properties": {
                "bbox_2d": {"type": "array", "description": "[x1, y1, x2, y2] in pixels of the image you saw"},
                "label": {"type": "string", "description": "what is inside the box (optional)"},
            },
            "required": ["bbox_2d"],
        },
    },
}


@dataclass(frozen=True)
class MarkedCanvas:
    """A canvas with one small square. ``box`` is ``(x1, y1, x2, y2)`` in pixels of ``image``."""

    image: Image.Image
    box: tuple[int, int, int, int]
    colour: str


def marked_canvas(size: tuple[int, int] = (896, 672), box=(600, 420, 628, 448), colour: str = "red") -> MarkedCanvas:
    image = Image.new("RGB", size, (235, 235, 230))
    ImageDraw.Draw(image).rectangle(box, fill=colour)
    return MarkedCanvas(image=image, box=tuple(box), colour=colour)


def tool_conversation(canvas: MarkedCanvas) -> list[dict]:
    """user (image + question) -> assistant (crop call) -> tool (crop image) -> assistant (answer)."""
    x1, y1, x2, y2 = canvas.box
    pad = 28
    bbox = [x1 - pad, y1 - pad, x2 + pad, y2 + pad]
    crop = canvas.image.crop(tuple(bbox)).resize(((x2 - x1 + 2 * pad) * 2, (y2 - y1 + 2 * pad) * 2))
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": canvas.image},
                {"type": "text", "text": "What colour is the small square?"},
            ],
        },
        {
            "role": "assistant",
            "content": "<think>The square is tiny; zoom in.</think>",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "image_zoom_in_tool", "arguments": {"bbox_2d": bbox, "label": "square"}},
                }
            ],
        },
        {
            "role": "tool",
            "name": "image_zoom_in_tool",
            "content": [{"type": "image", "image": crop}, {"type": "text", "text": "Zoomed in on " + json.dumps(bbox)}],
        },
        {"role": "assistant", "content": f"<think>It is {canvas.colour}.</think><answer>{canvas.colour}</answer>"},
    ]


def images_of(messages: list[dict]) -> list[Image.Image]:
    """The PIL images of a conversation, in the order the chat template renders them."""
    return [
        item["image"]
        for message in messages
        if isinstance(message.get("content"), list)
        for item in message["content"]
        if item.get("type") == "image"
    ]
