"""The policy's probability of each colour answer on a given zoom trajectory, read from a checkpoint with transformers.

A trainer's sampled answers are few and noisy; this reads the distribution itself. A trajectory is rendered by the
checkpoint's own chat template up to ``<answer>`` (the prompt image at the CPU preset's budget, each zoom call, the
crop tool's real response); the probability of a colour is the product of its tokens' probabilities after that prefix,
normalised over :data:`~visionr3.demo.synthetic.COLOURS`, so the numbers compare across checkpoints whatever mass the
policy puts elsewhere. Two trajectories:

- :meth:`AnswerProbe.demonstration`: the zoom warm-up's demonstration (:func:`visionr3.demo.warmup.demonstration`,
  the call on the square's quarter) — what the policy answers after the right crop;
- :meth:`AnswerProbe.trajectory`: one the engine sampled, from its assistant turns as written (verl's rollout dump)
  — what the policy answers where a trainer's reward actually reached it.

Used by the gradient-sign check (tests/e2e/test_gradient_sign.py), which compares a policy before and after GRPO.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

ANSWER_PREFIX = "<answer>"


def call_text(name: str, arguments: dict) -> str:
    """One hermes tool call as Qwen's chat template renders it (and a policy trained on that template writes it)."""
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


class AnswerProbe:
    """One checkpoint, loaded once, probed on as many trajectories as asked."""

    def __init__(self, model_dir: str | os.PathLike, *, data_max_pixels: int | None = None):
        import torch
        from omegaconf import OmegaConf
        from transformers import AutoModelForImageTextToText
        from verl.tools.tool_registry import initialize_tools_from_config

        from visionr3.config import config_path
        from visionr3.processing import load_processor

        self.processor = load_processor(model_dir)
        if data_max_pixels is None:
            data_max_pixels = int(OmegaConf.load(config_path("cluster", "cpu.yaml")).data.max_pixels)
        self.data_max_pixels = data_max_pixels
        (self.tool,) = initialize_tools_from_config(str(config_path("tools", "crop_zoom.yaml")))
        self.schemas = [self.tool.tool_schema.model_dump(exclude_unset=True, exclude_none=True)]
        self.model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()

    def _shown(self, sample: Any):
        """The prompt image as the policy sees it, and its size (what its boxes are in)."""
        from visionr3.processing import fetch_image, seen_size

        shown = fetch_image(sample.image, patch_size=self.processor.image_processor.patch_size, max_pixels=self.data_max_pixels)
        return shown, seen_size(self.processor, shown.size)

    def demonstration(self, sample: Any) -> dict[str, float]:
        """``{colour: probability}`` after the demonstration's call on ``sample``'s quarter and its crop."""
        from visionr3.demo.warmup import demonstration

        shown, seen = self._shown(sample)
        messages = demonstration(sample, self.tool, seen)[:3]  # up to the tool's crop
        messages[0]["content"][0]["image"] = shown
        return self._score(messages, "", [shown, messages[2]["content"][0]["image"]])

    def quarters(self, sample: Any) -> dict[str, float]:
        """``{colour: probability}`` averaged over one zoom call on each of the four quarters, written as the engine
        writes a call: what a warmed-up policy (whose valid calls are quarter boxes) answers across the crops it
        samples, not only after the right one."""
        from visionr3.demo.synthetic import COLOURS, QUARTERS, quarter_box

        _, seen = self._shown(sample)
        mean = dict.fromkeys(COLOURS, 0.0)
        for quarter in QUARTERS:
            call = {"bbox_2d": quarter_box(quarter, seen)}
            for colour, p in self.trajectory(sample, [call_text(self.tool.name, call), ANSWER_PREFIX], [call]).items():
                mean[colour] += p / len(QUARTERS)
        return mean

    def trajectory(self, sample: Any, turns: Sequence[str], calls: Sequence[dict]) -> dict[str, float]:
        """``{colour: probability}`` at the last ``<answer>`` of a sampled trajectory on ``sample``.

        ``turns`` are its assistant turns as the engine wrote them; each turn but the last made one valid zoom call,
        whose arguments are ``calls[i]`` (the dump's ``tool_call_log``), re-run through the real tool on the prompt
        image; the last turn holds the answer. A trajectory of any other shape is a ValueError: the caller picks
        the ones this can render exactly.
        """
        import asyncio

        from visionr3.tools.image_tools import call_tool

        if len(calls) != len(turns) - 1 or ANSWER_PREFIX not in turns[-1]:
            raise ValueError(f"not a zoom trajectory with one call per turn and an answer: {len(turns)} turns, {len(calls)} calls")
        shown, seen = self._shown(sample)
        messages: list[dict] = [
            {"role": "user", "content": [{"type": "image", "image": shown}, {"type": "text", "text": sample.question()}]}
        ]
        images = [shown]
        for turn, arguments in zip(turns, calls):
            response, _, info = asyncio.run(
                call_tool(self.tool, arguments, {"source_images": [sample.image], "seen_sizes": [seen]})
            )
            if not info.get("valid"):
                raise ValueError(f"the call {arguments} is not valid: {response.text}")
            messages.append({"role": "assistant", "content": turn})
            messages.append(
                {"role": "tool", "content": [{"type": "image", "image": response.image[0]}, {"type": "text", "text": response.text}]}
            )
            images.append(response.image[0])
        return self._score(messages, turns[-1][: turns[-1].rindex(ANSWER_PREFIX)], images)

    def _score(self, messages: list[dict], answer_turn: str, images: list) -> dict[str, float]:
        import torch

        from visionr3.demo.synthetic import COLOURS

        tokenizer = self.processor.tokenizer
        prefix = self.processor.apply_chat_template(messages, tools=self.schemas, tokenize=False, add_generation_prompt=True)
        prefix += answer_turn + ANSWER_PREFIX
        context = self.processor(text=[prefix], images=images, return_tensors="pt")  # the same for every colour
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
                logits = self.model(**inputs).logits[0, -len(answer) - 1 : -1].float()
                scores[colour] = float(torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(answer)[:, None]).sum())
        total = torch.logsumexp(torch.tensor(list(scores.values()), dtype=torch.float64), dim=0)
        return {colour: float(torch.exp(torch.tensor(value, dtype=torch.float64) - total)) for colour, value in scores.items()}
