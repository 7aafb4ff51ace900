"""Supervised warm-up on synthetic tool-using trajectories — the cold start the papers use (VLM-R3, Vision-SR1).

A randomly initialised policy never emits a well-formed tool call, so RL on it would have nothing to reinforce. The
CPU demo and the recipes' CPU steps therefore first fine-tune the tiny model on demonstrations built from the
synthetic mark task, one format per ``task`` — each exactly what that recipe's agent loop parses and renders:

- ``zoom`` (the demo, the zoom recipe; ``visionr3_agent``): the user's image and question, an assistant turn calling
  ``image_zoom_in_tool`` on the square's quadrant (box in the frame the policy sees, see :func:`quadrant_box`), the
  tool's real response, the answer;
- ``direct`` (``visionr3_agent`` with no tool: the learning benchmark's no-tool arm): the user's image and question,
  the answer;
- ``visionthink`` (``visionr3_visionthink``): the image at the loop's low-resolution first view, ``<think>`` and a
  ``resize_image`` call, the resize tool's real full-resolution image, ``<think>`` and the answer;
- ``vlm_r3`` (``visionr3_vlm_r3``): one assistant turn that writes a bare ``{"bbox_2d": [...]}``, then the crop inline
  (as the loop inserts it: image tokens inside the same turn, context only), then the answer;
- ``sr1`` (``visionr3_vision_sr1``, no tools): the description/think/boxed answer from the image, and the text-only
  answer from that description (the second pass's prompt), so both passes of the recipe have a policy to sample.

Tool responses come from the same tool classes and YAMLs the rollout uses, so crops and texts match training exactly.
Everything is rendered by the checkpoint's own chat template and processor; the loss covers the assistant's own
tokens only (system, user and tool turns, and every image token, are context), and only those positions go through
the LM head — with the real 151,936-token vocabulary that is most of the cost.

The outputs are honest demonstrations, not scripted rollout text: after the warm-up, RL samples from the policy.
Nothing here draws from a global random generator (samples come from a private ``random.Random``; the training loop
itself draws nothing: no dropout in the tiny models, AdamW is deterministic).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionr3.data.prompts import SR1_FORMAT
from visionr3.demo.synthetic import MarkSample, make_sample, quarter_box

TASKS = ("zoom", "direct", "visionthink", "vlm_r3", "sr1")
"""The demonstration formats :func:`supervised_warmup` trains (see the module docstring)."""

VISION_TOKENS = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")


def assistant_label_mask(input_ids: list[int], im_start: int, im_end: int, assistant_header: list[int]) -> list[bool]:
    """True on the tokens of assistant turns (after ``<|im_start|>assistant\\n`` up to and including ``<|im_end|>``).

    Everything else — system, user and tool turns, and image pads inside them — is context, not a training target.
    """
    mask = [False] * len(input_ids)
    i, n, h = 0, len(input_ids), len(assistant_header)
    while i < n:
        if input_ids[i] == im_start and input_ids[i + 1 : i + 1 + h] == assistant_header:
            j = i + 1 + h
            while j < n and input_ids[j] != im_end:
                mask[j] = True
                j += 1
            if j < n:
                mask[j] = True
            i = j
        i += 1
    return mask


def last_turn_mask(mask: list[bool]) -> list[bool]:
    """The last contiguous run of ``mask`` (the final assistant turn: the answer, in every format here)."""
    out = [False] * len(mask)
    end = len(mask)
    while end and not mask[end - 1]:
        end -= 1
    start = end
    while start and mask[start - 1]:
        start -= 1
    out[start:end] = [True] * (end - start)
    return out


def quadrant_box(sample: MarkSample, seen_size: tuple[int, int]) -> list[int]:
    """The quarter the question names (it holds the whole square), in pixels of the image the policy sees.

    Coarse on purpose: the question says where to look, so the call is learnable by a tiny model (trained on exact
    16-pixel boxes it sampled digit soup); the colour is left to the pixels of the crop.
    """
    return quarter_box(sample.quarter, seen_size)


def _call(tool, arguments: dict, create_kwargs: dict):
    """The tool's real response to ``arguments`` (create -> execute -> release, as verl's loop calls it)."""
    from visionr3.tools.image_tools import call_tool

    response, _, info = asyncio.run(call_tool(tool, arguments, create_kwargs))
    if not info.get("valid"):
        raise RuntimeError(f"the warm-up call {arguments} was rejected: {response.text}")
    return response


def demonstration(sample: MarkSample, tool, seen_size: tuple[int, int]) -> list[dict[str, Any]]:
    """The chat of one ``zoom`` demonstration: question -> zoom call on the square's quadrant -> the tool's real crop ->
    answer."""
    box = quadrant_box(sample, seen_size)
    response = _call(tool, {"bbox_2d": box}, {"source_images": [sample.image], "seen_sizes": [seen_size]})
    return [
        {"role": "user", "content": [{"type": "image", "image": sample.image}, {"type": "text", "text": sample.question()}]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": tool.name, "arguments": {"bbox_2d": box}}}],
        },
        {"role": "tool", "content": [{"type": "image", "image": response.image[0]}, {"type": "text", "text": response.text}]},
        {"role": "assistant", "content": f"<answer>{sample.colour}</answer>"},
    ]


def visionthink_demonstration(sample: MarkSample, tool, low: Any, seen_size: tuple[int, int], full_size: tuple[int, int]) -> list[dict[str, Any]]:
    """VisionThink's tool track: the low-resolution view -> ``<think>`` + ``resize_image`` -> the resize tool's real
    full-resolution image -> ``<think>`` + answer (the ``visionthink`` format check passes on both turns)."""
    create_kwargs = {"source_images": [sample.image], "seen_sizes": [seen_size], "full_sizes": [full_size]}
    response = _call(tool, {"action": "resize"}, create_kwargs)
    return [
        {"role": "user", "content": [{"type": "image", "image": low}, {"type": "text", "text": sample.question()}]},
        {
            "role": "assistant",
            "content": "<think>Too small to see.</think>",
            "tool_calls": [{"type": "function", "function": {"name": tool.name, "arguments": {"action": "resize"}}}],
        },
        {"role": "tool", "content": [{"type": "image", "image": response.image[0]}, {"type": "text", "text": response.text}]},
        {"role": "assistant", "content": f"<think>Now it is clear.</think><answer>{sample.colour}</answer>"},
    ]


def vlm_r3_demonstration(sample: MarkSample, tool, shown: Any, seen_size: tuple[int, int]) -> list[dict[str, Any]]:
    """VLM-R3's inline region: one assistant turn ``<think>…</think> {"bbox_2d": [...]}``, the crop inserted right
    there (image tokens, context only, as ``visionr3_vlm_r3`` inserts them after ``\\n``), then the answer."""
    import json

    box = quadrant_box(sample, seen_size)
    response = _call(tool, {"bbox_2d": box}, {"source_images": [sample.image], "seen_sizes": [seen_size]})
    call = json.dumps({"bbox_2d": box})
    return [
        {"role": "user", "content": [{"type": "image", "image": shown}, {"type": "text", "text": sample.question()}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": f"<think>Look closer.</think> {call}\n"},
                {"type": "image", "image": response.image[0]},
                {"type": "text", "text": f"<answer>{sample.colour}</answer>"},
            ],
        },
    ]


def sr1_demonstrations(sample: MarkSample) -> list[list[dict[str, Any]]]:
    """Vision-SR1's cold start, in miniature: the description/think/boxed answer from the image, and the text-only
    answer from that description (the second pass's prompt), so both passes of the recipe have a policy to sample."""
    from visionr3.agent.loop import SELF_REWARD_PROMPT

    description = f"A plain light canvas with one small {sample.colour} square on it."
    first = [
        {"role": "user", "content": [{"type": "text", "text": sample.question("sr1")}, {"type": "image", "image": sample.image}, {"type": "text", "text": SR1_FORMAT}]},
        {
            "role": "assistant",
            "content": f"<description>{description}</description> <think>The square is {sample.colour}.</think> \\boxed{{{sample.colour}}}",
        },
    ]
    second = [
        {"role": "user", "content": SELF_REWARD_PROMPT.format(description=description, question=sample.question("sr1"))},
        {"role": "assistant", "content": f"<think>The description says the square is {sample.colour}.</think> \\boxed{{{sample.colour}}}"},
    ]
    return [first, second]


def agent_loop_entry(name: str) -> dict[str, Any]:
    """The entry ``name`` of configs/agent_loop.yaml (what the recipe's loop is built with)."""
    import yaml

    from visionr3.config import config_path

    entries = yaml.safe_load(config_path("agent_loop.yaml").read_text())
    (entry,) = [e for e in entries if e["name"] == name]
    return entry


@dataclass
class _Kit:
    """What every task's renderer needs: the processor, the tools, the dataset's pixel budget."""

    processor: Any
    crop_tool: Any
    data_max_pixels: int
    resize_tool: Any = None
    low_res_factor: float = 0.5

    @property
    def patch(self) -> int:
        return self.processor.image_processor.patch_size

    def shown(self, sample: MarkSample):
        """The prompt image as the dataset hands it to the loop (resized to ``data.max_pixels``)."""
        from visionr3.processing import fetch_image

        return fetch_image(sample.image, patch_size=self.patch, max_pixels=self.data_max_pixels)

    def schemas(self, tool) -> list[dict]:
        return [tool.tool_schema.model_dump(exclude_unset=True, exclude_none=True)]

    def render(self, messages: list[dict], tools=None) -> str:
        return self.processor.apply_chat_template(messages, tools=tools, tokenize=False)


Example = tuple[list[str], list[Any]]
"""Rendered texts and their images, in order."""


def _zoom_example(kit: _Kit, rng: random.Random, image_size: tuple[int, int]) -> Example:
    from visionr3.processing import seen_size

    sample = make_sample(rng, image_size)
    shown = kit.shown(sample)
    messages = demonstration(sample, kit.crop_tool, seen_size(kit.processor, shown.size))
    messages[0]["content"][0]["image"] = shown  # the policy sees the dataset's view, crops come from the source
    return [kit.render(messages, kit.schemas(kit.crop_tool))], [shown, messages[2]["content"][0]["image"]]


def _direct_example(kit: _Kit, rng: random.Random, image_size: tuple[int, int], tools: list[dict] | None = None) -> Example:
    """The answer from the full view; ``tools``: the schemas the prompt offers (a ``zoom`` policy that does not call)."""
    sample = make_sample(rng, image_size)
    shown = kit.shown(sample)
    messages = [
        {"role": "user", "content": [{"type": "image", "image": shown}, {"type": "text", "text": sample.question()}]},
        {"role": "assistant", "content": f"<answer>{sample.colour}</answer>"},
    ]
    return [kit.render(messages, tools)], [shown]


def _visionthink_example(kit: _Kit, rng: random.Random, image_size: tuple[int, int]) -> Example:
    from PIL import Image

    from visionr3.processing import seen_size
    from visionr3.tools.geometry import downsampled_size

    sample = make_sample(rng, image_size)
    shown = kit.shown(sample)
    # the loop's first view: the dataset's image downsampled per side, as VisionAgentLoop.process_multi_modal_info does
    low = shown.resize(downsampled_size(*shown.size, kit.low_res_factor), resample=Image.Resampling.LANCZOS)
    messages = visionthink_demonstration(sample, kit.resize_tool, low, seen_size(kit.processor, low.size), shown.size)
    return [kit.render(messages, kit.schemas(kit.resize_tool))], [low, messages[2]["content"][0]["image"]]


def _vlm_r3_example(kit: _Kit, rng: random.Random, image_size: tuple[int, int]) -> Example:
    from visionr3.processing import seen_size

    sample = make_sample(rng, image_size)
    shown = kit.shown(sample)
    messages = vlm_r3_demonstration(sample, kit.crop_tool, shown, seen_size(kit.processor, shown.size))
    return [kit.render(messages)], [shown, messages[1]["content"][1]["image"]]  # no tools block (render_tool_schemas: false)


def _sr1_example(kit: _Kit, rng: random.Random, image_size: tuple[int, int]) -> Example:
    sample = make_sample(rng, image_size)
    shown = kit.shown(sample)
    first, second = sr1_demonstrations(sample)
    first[0]["content"][1]["image"] = shown
    return [kit.render(first), kit.render(second)], [shown]


EXAMPLES: dict[str, Callable[[_Kit, random.Random, tuple[int, int]], Example]] = {
    "zoom": _zoom_example,
    "direct": _direct_example,
    "visionthink": _visionthink_example,
    "vlm_r3": _vlm_r3_example,
    "sr1": _sr1_example,
}


def draw_example(kit: _Kit, rng: random.Random, image_size: tuple[int, int], task: str, direct: bool = False) -> Example:
    """One demonstration of ``task``, or with ``direct`` (``zoom`` only) one that answers from the full view with the
    tool offered (see ``direct_share`` in :func:`supervised_warmup`)."""
    if direct:
        return _direct_example(kit, rng, image_size, tools=kit.schemas(kit.crop_tool))
    return EXAMPLES[task](kit, rng, image_size)


def supervised_warmup(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    tool_config: str | os.PathLike,
    data_max_pixels: int,
    steps: int = 60,
    batch_size: int = 4,
    lr: float = 2e-3,
    seed: int = 0,
    image_size: tuple[int, int] = (448, 448),
    pool_batches: int | None = 8,
    log_every: int = 10,
    task: str = "zoom",
    answer_weight: float = 1.0,
    direct_share: float = 0.0,
) -> dict[str, Any]:
    """Fine-tune ``model_dir`` on synthetic demonstrations and save a complete HF checkpoint to ``out_dir``.

    ``task``: one of :data:`TASKS` (see the module docstring). ``tool_config`` is the crop tool's YAML (``zoom``,
    ``vlm_r3``); ``visionthink`` uses configs/tools/resize.yaml and the ``visionr3_visionthink`` loop's
    ``low_res_factor``, as its recipe does. ``batch_size`` counts rendered conversations (``sr1``: two per sample).
    ``answer_weight``: the loss weight of the final assistant turn's tokens against 1 for the others (the call's
    thirty-odd tokens otherwise drown the one colour word that needs the pixels).
    ``direct_share`` (``zoom`` only): the share of each batch (``round(direct_share * batch_size)`` demonstrations, the
    same in every batch) that answers from the full view without calling the tool, with the tool offered in the
    prompt. The policy then calls first on about ``1 - direct_share`` of its samples, whatever the image, and answers
    the rest at chance, so RL has a choice to learn: whether zooming pays (the learning benchmark's start). The same
    count in every batch, not a share drawn per demonstration: a drawn mix steered the first token wherever the last
    batches happened to lean (NOTE.md, "The learning benchmark").

    Returns ``{"losses": [...], "seconds": float, "out_dir": str}``.
    """
    if task not in TASKS:
        raise ValueError(f"unknown warm-up task {task!r}; expected one of {TASKS}")
    directs = round(direct_share * batch_size)
    if direct_share and (task != "zoom" or not 0 < directs < batch_size):
        raise ValueError(f"direct_share={direct_share!r} needs task 'zoom' and between 1 and batch_size - 1 direct "
                         f"demonstrations in a batch of {batch_size}, got task {task!r} and {directs}")
    import torch
    from transformers import AutoModelForImageTextToText
    from verl.tools.tool_registry import initialize_tools_from_config

    from visionr3.config import config_path
    from visionr3.processing import load_processor

    rng = random.Random(seed)
    processor = load_processor(model_dir)
    tokenizer = processor.tokenizer
    (crop_tool,) = initialize_tools_from_config(str(tool_config))
    kit = _Kit(processor, crop_tool, data_max_pixels)
    if task == "visionthink":
        (kit.resize_tool,) = initialize_tools_from_config(str(config_path("tools", "resize.yaml")))
        kit.low_res_factor = float(agent_loop_entry("visionr3_visionthink")["low_res_factor"])
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    header = tokenizer.encode("assistant\n", add_special_tokens=False)
    vision_ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(VISION_TOKENS)))

    def batch_inputs():
        texts, images = [], []
        while len(texts) < batch_size:
            more_texts, more_images = draw_example(kit, rng, image_size, task, direct=len(texts) < directs)
            texts += more_texts
            images += more_images
        inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
        label_masks = [assistant_label_mask(row, im_start, im_end, header) for row in inputs["input_ids"].tolist()]
        # an image inside an assistant turn (VLM-R3's inline crop) is the loop's insertion, never a target
        trained = torch.tensor(label_masks) & ~torch.isin(inputs["input_ids"], vision_ids)
        targets = trained[:, 1:] & inputs["attention_mask"][:, 1:].bool()
        answers = torch.tensor([last_turn_mask(m) for m in label_masks])[:, 1:]
        weights = torch.where(answers, answer_weight, 1.0)[targets]
        return inputs, targets, weights / weights.sum()

    tokenizer.padding_side = "right"
    start = time.perf_counter()
    # A fixed pool of ``pool_batches`` batches, rendered once and cycled (templating, cropping and pixel preprocessing
    # are then paid per pool entry), enough to learn a format; None renders new demonstrations every step, which
    # reading the crop needs (on a pool of 32 the tiny model memorises instead: NOTE.md, "Can a tiny policy learn").
    pool = [batch_inputs() for _ in range(max(1, min(steps, pool_batches)))] if pool_batches else None
    losses: list[float] = []
    for step in range(steps):
        inputs, targets, weights = pool[step % len(pool)] if pool else batch_inputs()
        hidden = model.model(**inputs).last_hidden_state[:, :-1]
        logits = model.lm_head(hidden[targets])  # only the positions that predict assistant tokens
        token_loss = torch.nn.functional.cross_entropy(logits.float(), inputs["input_ids"][:, 1:][targets], reduction="none")
        loss = (token_loss * weights).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"  warm-up step {step + 1}/{steps}: loss {losses[-1]:.3f}", flush=True)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    return {"losses": losses, "seconds": time.perf_counter() - start, "out_dir": str(out)}
