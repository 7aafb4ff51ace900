"""verl's ``MultiTurnSFTDataset`` for interleaved image reasoning: images anywhere, vision tokens never trained on.

Select it with ``data.custom_cls.path=pkg://visionr3.data.sft_dataset data.custom_cls.name=VisionSFTDataset``
(``configs/sft_trainer.yaml`` does). verl's dataset already renders a row's ``messages`` turn by turn with the
processor, replaces each ``<image>`` placeholder (in user, assistant and tool turns alike) with the next entry of the
row's ``images``, concatenates the per-turn ``pixel_values``/``image_grid_thw``, and computes Qwen-VL's M-RoPE
positions over the whole sequence. What it does not do, this subclass adds by overriding its methods:

1. **Vision tokens inside assistant turns are context, not targets.** verl's loss mask is 1 on every token of an
   assistant turn after ``<|im_start|>assistant\\n``. In VLM-R3's VLIR data the crops sit *inside* the assistant turn
   (``segment\\n<|vision_start|><|image_pad|>…<|vision_end|>segment\\n``), exactly where the ``visionr3_vlm_r3`` agent
   loop inserts them at RL time with mask 0; training the model to predict image pads would teach it to emit them.
   :meth:`_process_single_message` sets the mask to 0 on ``<|vision_start|>``, ``<|vision_end|>``, ``<|image_pad|>``
   and ``<|video_pad|>`` (VLM-R3's ``labels[special_tokens_mask] = -100``), in every turn.
2. **Images load without torchvision.** verl's ``_build_messages`` calls ``process_image``, whose first line imports
   ``qwen_vl_utils`` — impossible on a machine without a loadable torchvision, even for images already decoded. Our
   :meth:`_build_messages` is the same ``<image>`` walk (about 25 lines, rewritten rather than copied) with each image
   decoded and smart-resized by :func:`visionr3.processing.fetch_image` (qwen-vl-utils' semantics, on CPU and GPU
   alike) under ``data.min_pixels`` / ``data.max_pixels``, and errors that say which turn and how many images.
3. **Text-only rows mix with image rows.** Every row carries ``multi_modal_inputs`` (empty for text), which verl's
   collator needs (it reads a batch's keys from its first row). The model side of text-only micro-batches needs
   :func:`visionr3.platform.verl_fixes.install_text_only_fix` for Qwen2.5-VL (applied by the plug-in in every verl process).
4. **Tool schemas survive parquet, and bad rows are named.** A ``tools`` cell may be a JSON string (what our
   converters write: OpenAI schemas differ in shape from tool to tool, which a parquet struct column cannot hold
   without null-padding every schema) or a list of dicts (verl's own layout). An error in a row is re-raised with the
   row's index and files (verl's message names neither).
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch
from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset
from verl.utils.py_functional import convert_nested_value_to_list_recursive

from visionr3.processing import fetch_image

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
"""Tokens that stand for pixels (or delimit them) in Qwen2.5-VL and Qwen3-VL: never a training target."""

IMAGE_PLACEHOLDER = re.compile("(<image>)")


def vision_token_ids(tokenizer) -> list[int]:
    """Ids of :data:`VISION_TOKENS` that ``tokenizer`` knows as single tokens (a text-only tokenizer knows none)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    ids = []
    for token in VISION_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != unk and tokenizer.convert_ids_to_tokens(token_id) == token:
            ids.append(token_id)
    return ids


def mask_vision_tokens(input_ids: torch.Tensor, loss_mask: torch.Tensor, vision_ids: list[int]) -> torch.Tensor:
    """``loss_mask`` with 0 wherever ``input_ids`` is a vision token (a new tensor; pure)."""
    if not vision_ids:
        return loss_mask
    is_vision = torch.isin(input_ids, torch.tensor(vision_ids, dtype=input_ids.dtype))
    return loss_mask.masked_fill(is_vision, 0)


class VisionSFTDataset(MultiTurnSFTDataset):
    """``MultiTurnSFTDataset`` with vision tokens masked out of the loss, torchvision-free image loading, text-only rows
    and row-level errors (module docstring)."""

    def __init__(self, parquet_files, tokenizer, config, processor=None, max_samples: int = -1):
        config = config or {}
        self.min_pixels = config.get("min_pixels", None)
        self.max_pixels = config.get("max_pixels", None)
        super().__init__(parquet_files, tokenizer, config, processor=processor, max_samples=max_samples)
        self.vision_ids = vision_token_ids(self.tokenizer)

    def _read_files_and_process(self) -> None:
        super()._read_files_and_process()
        if self.tools is not None:
            self.tools = [self._decode_tools(index, tools) for index, tools in enumerate(self.tools)]

    def _decode_tools(self, index: int, tools: Any) -> list[dict] | None:
        if tools is None or isinstance(tools, list):
            return tools or None
        if isinstance(tools, str):
            if not tools.strip():
                return None
            try:
                decoded = json.loads(tools)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{self._where(index)}: field {self.tools_key!r} is not valid JSON ({exc})") from exc
            if not isinstance(decoded, list) or not all(isinstance(tool, dict) for tool in decoded):
                raise ValueError(f"{self._where(index)}: field {self.tools_key!r} must be a JSON list of tool schemas")
            return decoded or None
        raise ValueError(f"{self._where(index)}: field {self.tools_key!r} has type {type(tools).__name__}")

    def _where(self, index: int) -> str:
        files = ", ".join(str(f) for f in self.parquet_files)
        return f"SFT row {index} of {files}"

    def _build_messages(self, example: dict) -> list:
        """The row's messages with each ``<image>`` replaced by the next image of the row, loaded by
        :func:`visionr3.processing.fetch_image`: verl's method without its ``qwen_vl_utils`` import (module docstring).
        """
        messages = convert_nested_value_to_list_recursive(example[self.messages_key])
        if _present(example.get(self.video_key)):
            raise NotImplementedError(f"field {self.video_key!r}: visionr3's SFT dataset handles images, not videos")
        if self.image_key not in example:
            return super()._build_messages(example)  # text-only rows: verl's own path (no image loading involved)
        images = list(example[self.image_key]) if _present(example[self.image_key]) else []
        patch = self.image_patch_size or 14
        used = 0
        for turn, message in enumerate(messages):
            content = message.get("content")
            if not isinstance(content, str):
                continue
            items = []
            for part in (p for p in IMAGE_PLACEHOLDER.split(content) if p):
                if part != "<image>":
                    items.append({"type": "text", "text": part})
                    continue
                if used >= len(images):
                    raise ValueError(
                        f"messages[{turn}] has an <image> placeholder beyond the row's {len(images)} images "
                        f"(field {self.image_key!r}); every <image> needs one image, in order"
                    )
                image = fetch_image(
                    images[used], patch_size=patch, min_pixels=self.min_pixels, max_pixels=self.max_pixels
                )
                items.append({"type": "image", "image": image})
                used += 1
            message["content"] = items
        if used != len(images):
            raise ValueError(
                f"field {self.image_key!r} has {len(images)} images but the messages have {used} <image> placeholders"
            )
        return messages

    def _process_single_message(self, index, message, full_message, tools=None, enable_thinking=None):
        input_ids, loss_mask, attention_mask, inputs = super()._process_single_message(
            index, message, full_message, tools=tools, enable_thinking=enable_thinking
        )
        return input_ids, mask_vision_tokens(input_ids, loss_mask, self.vision_ids), attention_mask, inputs

    def __getitem__(self, item):
        try:
            row = super().__getitem__(item)
        except Exception as exc:
            if not _reconstructible(exc):
                raise
            raise type(exc)(f"{self._where(item)}: {exc}") from exc  # the same error type, with the row named
        if self.processor is not None:
            # A text-only row (Vision-SR1's caption -> CoT set) has no multi_modal_inputs; verl's collator reads the
            # keys of a batch's first row, so a batch that starts with such a row would lose its images' inputs
            # (or raise KeyError). An empty dict is what verl's extract_multi_modal_inputs skips.
            row.setdefault("multi_modal_inputs", {})
        return row


def _present(value: Any) -> bool:
    """Whether a parquet cell holds a non-empty list (cells come back as None, lists or numpy/pyarrow arrays)."""
    return value is not None and len(value) > 0


def _reconstructible(exc: Exception) -> bool:
    """Whether ``type(exc)(message)`` rebuilds the exception (most built-ins do; some library errors do not)."""
    try:
        type(exc)("probe")
    except Exception:
        return False
    return True
