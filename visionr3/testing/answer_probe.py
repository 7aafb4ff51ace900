"""The policy's probability of each colour answer on a fixed zoom trajectory, read from a checkpoint with transformers.

A trainer's sampled answers are few and noisy; this reads the distribution itself. The trajectory is the zoom
warm-up's demonstration for one synthetic sample (:func:`visionr3.demo.warmup.demonstration`: the prompt image at
the CPU preset's budget, the call on the square's quadrant, the crop tool's real response), rendered by the
checkpoint's own chat template, up to ``<answer>``; the probability of a colour is the product of its tokens'
probabilities after that prefix (then normalised over :data:`~visionr3.demo.synthetic.COLOURS`, so the numbers
compare across checkpoints whatever mass the policy puts elsewhere).

Used by the gradient-sign check (tests/e2e/test_gradient_sign.py), which compares a policy before and after GRPO.
"""

from __future__ import annotations

import os
from typing import Any

ANSWER_PREFIX = "<answer>"


def colour_probabilities(
    model_dir: str | os.PathLike, sample: Any, *, data_max_pixels: int | None = None
) -> dict[str, float]:
    """``{colour: probability}`` of the answer after the zoom trajectory of ``sample`` (a
    :class:`~visionr3.demo.synthetic.MarkSample`), normalised over the four colours."""
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModelForImageTextToText
    from verl.tools.tool_registry import initialize_tools_from_config

    from visionr3.config import config_path
    from visionr3.demo.synthetic import COLOURS
    from visionr3.demo.warmup import demonstration
    from visionr3.processing import fetch_image, load_processor, seen_size

    processor = load_processor(model_dir)
    tokenizer = processor.tokenizer
    if data_max_pixels is None:
        data_max_pixels = int(OmegaConf.load(config_path("cluster", "cpu.yaml")).data.max_pixels)
    (tool,) = initialize_tools_from_config(str(config_path("tools", "crop_zoom.yaml")))
    shown = fetch_image(sample.image, patch_size=processor.image_processor.patch_size, max_pixels=data_max_pixels)
    messages = demonstration(sample, tool, seen_size(processor, shown.size))[:3]  # up to the tool's crop
    messages[0]["content"][0]["image"] = shown
    schemas = [tool.tool_schema.model_dump(exclude_unset=True, exclude_none=True)]
    prefix = processor.apply_chat_template(messages, tools=schemas, tokenize=False, add_generation_prompt=True)
    prefix += ANSWER_PREFIX
    images = [shown, messages[2]["content"][0]["image"]]

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    context = processor(text=[prefix], images=images, return_tensors="pt")  # the same for every colour
    scores: dict[str, float] = {}
    with torch.no_grad():
        for colour in sorted(COLOURS):
            answer = tokenizer.encode(colour, add_special_tokens=False)
            inputs = dict(context)
            ids = torch.cat([inputs["input_ids"], torch.tensor([answer])], dim=1)
            inputs["input_ids"] = ids
            inputs["attention_mask"] = torch.ones_like(ids)
            if "mm_token_type_ids" in inputs:
                pad = torch.zeros((1, len(answer)), dtype=inputs["mm_token_type_ids"].dtype)
                inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], pad], dim=1)
            logits = model(**inputs).logits[0, -len(answer) - 1 : -1].float()
            logp = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(answer)[:, None]).sum()
            scores[colour] = float(logp)
    total = torch.logsumexp(torch.tensor(list(scores.values()), dtype=torch.float64), dim=0)
    return {colour: float(torch.exp(torch.tensor(value, dtype=torch.float64) - total)) for colour, value in scores.items()}
