"""A scripted policy for the synthetic square task that answers from the pixels it is sent: a chat "model" for
:class:`~visionr3.testing.openai_server.OpenAIStubServer` (its ``reply``), reached through the eval's ``openai``
backend over real loopback HTTP.

Why it exists: the eval tests are about plumbing — records, the protocol in them, resume, option shuffling, tool-call
records, judge scoring, lmms-eval's harness. A trained tiny policy says whatever one floating-point history taught it
(the greedy warm-up emitted a valid zoom call on one machine and malformed JSON on another), so a test built on it
checks a machine, not the code. This policy decides what it says from the question's colour and reads everything
else from the images it receives, so its answers are right only if the question's image reached the model, verl's
agent loop parsed the call, the zoom tool cropped the right region and sent it back, and the recipe's extractor and
scorer read the ``<answer>``. Only the model is replaced; the agent loop, tools, reward and records are the real ones.

Per question, the square's colour (found in the question's image) picks the first turn (``plans``; default ``zoom``):

* ``zoom``: a valid ``image_zoom_in_tool`` call, the box around the square (pixels of the image the model was sent,
  padded by ``pad``); the second turn must see the tool's crop and answers the colour read from it;
* ``malformed``: a ``<tool_call>`` whose JSON is cut short (one closing brace missing); the second turn answers from
  the question's image;
* ``outside``: a well-formed call whose box lies outside the image, which the tool refuses; then as ``malformed``;
* ``answer``: the answer at once, no tool.

The answer is ``<answer>X</answer>`` with X the option's letter when the question lists ``X. colour`` options (the
eval's prompt styles and lmms-eval's V* task write them so), else the colour word; a colour in ``wrong`` is answered
with the next colour instead (so a test has wrong answers to grade too). Anything unexpected — no image, the crop
missing after a valid call, a turn more than scripted — raises :class:`PolicyError`; the stub server answers that
request with a 500 carrying the message, so the eval record's ``error`` says what went wrong.

    with OpenAIStubServer(reply=SquarePolicy({"blue": "malformed"})) as policy:
        ...  # visionr3 eval --backend openai --base-url {policy.base_url} ...
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image, ImageChops, ImageStat

from visionr3.demo.synthetic import COLOURS

Plan = Literal["zoom", "malformed", "outside", "answer"]
PLANS: tuple[Plan, ...] = ("zoom", "malformed", "outside", "answer")
BACKGROUND = (236, 236, 230)  # the canvas of visionr3.demo.synthetic.make_sample
ZOOM_TOOL = "image_zoom_in_tool"  # configs/tools/crop_zoom.yaml


class PolicyError(AssertionError):
    """The conversation is not one the script can continue (the message says why)."""


def images_in(message: Mapping[str, Any]) -> list[Image.Image]:
    """The images of an OpenAI chat message (``image_url`` parts holding ``data:`` URLs), decoded."""
    content = message.get("content")
    if not isinstance(content, list):
        return []
    urls = [part["image_url"]["url"] for part in content if part.get("type") == "image_url"]
    return [Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB") for url in urls]


def text_of(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [] if part.get("type") == "text")


def square_box(image: Image.Image) -> tuple[int, int, int, int]:
    """The bounding box of everything that is not background: the square, in pixels of ``image``."""
    difference = ImageChops.difference(image, Image.new("RGB", image.size, BACKGROUND)).convert("L")
    box = difference.point(lambda v: 255 if v > 40 else 0).getbbox()
    if box is None:
        raise PolicyError(f"no square in the {image.width}x{image.height} image the model was sent")
    return box


def square_colour(image: Image.Image) -> str:
    """The colour (a key of ``COLOURS``) nearest the mean of the square's inner half."""
    x1, y1, x2, y2 = square_box(image)
    inner = image.crop((x1 + (x2 - x1) // 4, y1 + (y2 - y1) // 4, x2 - (x2 - x1) // 4, y2 - (y2 - y1) // 4))
    mean = ImageStat.Stat(inner).mean
    return min(COLOURS, key=lambda c: sum((u - v) ** 2 for u, v in zip(COLOURS[c], mean)))


@dataclass(frozen=True)
class SquarePolicy:
    """``reply(messages, model) -> text`` (an OpenAIStubServer ``ReplyFn``); see the module docstring."""

    plans: Mapping[str, Plan] = field(default_factory=dict)  # colour -> first turn; unnamed colours zoom
    wrong: Collection[str] = ()  # colours answered with the next colour
    pad: int = 40  # pixels around the square in a zoom box

    def __post_init__(self) -> None:
        unknown = {c: p for c, p in self.plans.items() if c not in COLOURS or p not in PLANS}
        if unknown or set(self.wrong) - set(COLOURS):
            raise ValueError(
                f"plans {unknown} / wrong {sorted(self.wrong)}: colours are {sorted(COLOURS)}, plans {PLANS}"
            )

    def plan(self, colour: str) -> Plan:
        return self.plans.get(colour, "zoom")

    def answer_for(self, colour: str) -> str:
        """The colour this policy answers for a square of ``colour``."""
        if colour not in self.wrong:
            return colour
        names = sorted(COLOURS)
        return names[(names.index(colour) + 1) % len(names)]

    def __call__(self, messages: list[dict[str, Any]], model: str) -> str:
        images = [image for message in messages for image in images_in(message)]
        if not images:
            raise PolicyError("the request holds no image: the question's image did not reach the model")
        question = next((text_of(m) for m in messages if m.get("role") == "user"), "")
        colour = square_colour(images[0])
        plan = self.plan(colour)
        turn = sum(1 for m in messages if m.get("role") == "assistant")
        if turn == 0 and plan != "answer":
            return self.call(plan, images[0])
        if turn == (0 if plan == "answer" else 1):
            expected = 2 if plan == "zoom" else 1
            if len(images) != expected:
                raise PolicyError(
                    f"{colour} square, plan {plan!r}: the answer turn should see {expected} image(s) (the question's"
                    f"{' and the crop of the valid zoom call' if plan == 'zoom' else ''}), got {len(images)}"
                )
            return self.answer(square_colour(images[-1]), question)
        raise PolicyError(f"{colour} square, plan {plan!r}: asked for assistant turn {turn + 1}, beyond the script")

    def call(self, plan: Plan, image: Image.Image) -> str:
        if plan == "outside":
            box = [image.width + 10, image.height + 10, image.width + 60, image.height + 60]
        else:
            x1, y1, x2, y2 = square_box(image)
            box = [max(0, x1 - self.pad), max(0, y1 - self.pad), min(image.width, x2 + self.pad),
                   min(image.height, y2 + self.pad)]
        body = json.dumps({"name": ZOOM_TOOL, "arguments": {"bbox_2d": box, "label": "square"}})
        if plan == "malformed":
            body = body[:-1]  # the call's closing brace is missing
        return f"<think>The square is small; zoom in.</think>\n<tool_call>\n{body}\n</tool_call>"

    def answer(self, seen: str, question: str) -> str:
        said = self.answer_for(seen)
        letter = re.search(rf"\b([A-Z])\. {re.escape(said)}\b", question)
        return f"<think>The square is {seen}.</think>\n<answer>{letter.group(1) if letter else said}</answer>"


__all__ = ["PLANS", "Plan", "PolicyError", "SquarePolicy", "images_in", "square_box", "square_colour"]
