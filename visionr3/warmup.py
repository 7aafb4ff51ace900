"""Supervised warm-up on synthetic tool-using trajectories — the cold start the papers use (VLM-R3, Vision-SR1).

A randomly initialised policy never emits a well-formed tool call, so RL on it would have nothing to reinforce. The
CPU demo therefore first fine-tunes the tiny model on trajectories built from the synthetic mark task: the user's image
and question, an assistant turn calling ``image_zoom_in_tool`` on the square (box in the frame the policy sees), the
tool's real response (produced by the same ``CropZoomTool`` and YAML the rollout uses, so the crop and text match
training exactly), and the answer. Everything is rendered by the checkpoint's own chat template and processor, the
loss covers assistant tokens only (system, user and tool turns, and every image pad, are context), and only
those positions go through the LM head — with the real 151,936-token vocabulary that is most of the cost.

The outputs are honest demonstrations, not scripted rollout text: after the warm-up, RL samples from the policy.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path
from typing import Any

from visionr3.data.synthetic import QUESTION, SR1_FORMAT, SR1_QUESTION, MarkSample, make_sample


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


def demonstration(sample: MarkSample, tool, seen_size: tuple[int, int], pad: int = 12) -> list[dict[str, Any]]:
    """The chat of one demonstration: question -> zoom call on the square -> the tool's real crop -> answer."""
    sx, sy = seen_size[0] / sample.image.width, seen_size[1] / sample.image.height
    x1, y1, x2, y2 = sample.box
    box = [max(0, round((x1 - pad) * sx)), max(0, round((y1 - pad) * sy)), round((x2 + pad) * sx), round((y2 + pad) * sy)]

    from visionr3.tools.image_tools import call_tool

    create_kwargs = {"source_images": [sample.image], "seen_sizes": [seen_size]}
    response, _, info = asyncio.run(call_tool(tool, {"bbox_2d": box}, create_kwargs))
    if not info.get("valid"):
        raise RuntimeError(f"the warm-up box {box} was rejected: {response.text}")
    return [
        {"role": "user", "content": [{"type": "image", "image": sample.image}, {"type": "text", "text": QUESTION}]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": tool.name, "arguments": {"bbox_2d": box}}}],
        },
        {"role": "tool", "content": [{"type": "image", "image": response.image[0]}, {"type": "text", "text": response.text}]},
        {"role": "assistant", "content": f"<answer>{sample.colour}</answer>"},
    ]


def sr1_demonstrations(sample: MarkSample) -> list[list[dict[str, Any]]]:
    """Vision-SR1's cold start, in miniature: the description/think/boxed answer from the image, and the text-only
    answer from that description (the second pass's prompt), so both passes of the recipe have a policy to sample."""
    from visionr3.agent.loop import SELF_REWARD_PROMPT

    description = f"A plain light canvas with one small {sample.colour} square on it."
    first = [
        {"role": "user", "content": [{"type": "text", "text": SR1_QUESTION}, {"type": "image", "image": sample.image}, {"type": "text", "text": SR1_FORMAT}]},
        {
            "role": "assistant",
            "content": f"<description>{description}</description> <think>The square is {sample.colour}.</think> \\boxed{{{sample.colour}}}",
        },
    ]
    second = [
        {"role": "user", "content": SELF_REWARD_PROMPT.format(description=description, question=SR1_QUESTION)},
        {"role": "assistant", "content": f"<think>The description says the square is {sample.colour}.</think> \\boxed{{{sample.colour}}}"},
    ]
    return [first, second]


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
    pool_batches: int = 8,
    log_every: int = 10,
    task: str = "zoom",
) -> dict[str, Any]:
    """Fine-tune ``model_dir`` on synthetic demonstrations and save a complete HF checkpoint to ``out_dir``.

    ``task``: ``zoom`` (zoom-then-answer, the default demo) or ``sr1`` (Vision-SR1's two passes, no tools).

    Returns ``{"losses": [...], "seconds": float, "out_dir": str}``.
    """
    import torch
    from transformers import AutoModelForImageTextToText
    from verl.tools.tool_registry import initialize_tools_from_config

    from visionr3.processing import fetch_image, load_processor, seen_size

    torch.manual_seed(seed)
    rng = random.Random(seed)
    processor = load_processor(model_dir)
    tokenizer = processor.tokenizer
    (tool,) = initialize_tools_from_config(str(tool_config))
    schemas = [tool.tool_schema.model_dump(exclude_unset=True, exclude_none=True)]
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    header = tokenizer.encode("assistant\n", add_special_tokens=False)
    patch = processor.image_processor.patch_size

    def batch_inputs():
        texts, images = [], []
        while task == "sr1" and len(texts) < batch_size:
            sample = make_sample(rng, image_size)
            shown = fetch_image(sample.image, patch_size=patch, max_pixels=data_max_pixels)
            first, second = sr1_demonstrations(sample)
            first[0]["content"][1]["image"] = shown
            texts += [processor.apply_chat_template(first, tokenize=False), processor.apply_chat_template(second, tokenize=False)]
            images.append(shown)
        for _ in range(batch_size if task == "zoom" else 0):
            sample = make_sample(rng, image_size)
            shown = fetch_image(sample.image, patch_size=patch, max_pixels=data_max_pixels)
            messages = demonstration(sample, tool, seen_size(processor, shown.size))
            messages[0]["content"][0]["image"] = shown  # the policy sees the dataset's view, crops come from the source
            texts.append(processor.apply_chat_template(messages, tools=schemas, tokenize=False))
            images.extend([shown, messages[2]["content"][0]["image"]])
        inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
        label_masks = [assistant_label_mask(row, im_start, im_end, header) for row in inputs["input_ids"].tolist()]
        targets = torch.tensor(label_masks)[:, 1:] & inputs["attention_mask"][:, 1:].bool()
        return inputs, targets

    tokenizer.padding_side = "right"
    start = time.perf_counter()
    # A fixed pool of demonstrations, rendered once and cycled: templating, cropping and pixel preprocessing are then
    # paid per pool entry, not per step.
    pool = [batch_inputs() for _ in range(max(1, min(steps, pool_batches)))]
    losses: list[float] = []
    for step in range(steps):
        inputs, targets = pool[step % len(pool)]
        hidden = model.model(**inputs).last_hidden_state[:, :-1]
        logits = model.lm_head(hidden[targets])  # only the positions that predict assistant tokens
        loss = torch.nn.functional.cross_entropy(logits.float(), inputs["input_ids"][:, 1:][targets])
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
