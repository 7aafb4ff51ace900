"""verl's ``RLHFDataset`` with images loaded through :mod:`visionr3.processing` instead of ``qwen_vl_utils``.

Select it with ``data.custom_cls.path=pkg://visionr3.data.dataset data.custom_cls.name=VisionRLDataset``. verl calls
the ``_process_multi_modal_info`` classmethod both in the dataset (prompt-length filtering) and in every agent-loop
worker (with the dataset class and ``data`` config), so overriding it here is what keeps ``qwen_vl_utils`` — which
cannot be imported without torchvision — out of the whole rollout path, on CPU and GPU alike.

Pixel budget of the *prompt* image: ``data.min_pixels`` / ``data.max_pixels`` (VisionThink's names), or per-image
``min_pixels``/``max_pixels`` in the row's ``images`` dicts; unset means qwen-vl-utils' defaults (4..16384 tokens).
Set them to the processor's own budget so the image the policy sees is exactly the one our tools map boxes from.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from verl.utils.dataset.rl_dataset import RLHFDataset

from visionr3.processing import process_vision_info


class _RowView:
    """The attributes ``RLHFDataset._build_messages`` reads, for rows that do not come from a dataset object."""

    image_key = "images"
    video_key = "videos"
    audio_key = "audios"
    processor = object()  # only checked to exist when there are images


def raw_prompt(messages: list[dict[str, Any]], images: list[Any]) -> list[dict[str, Any]]:
    """``raw_prompt`` exactly as ``RLHFDataset.__getitem__`` builds it (verl's own ``_build_messages``): each
    ``<image>`` placeholder in ``messages`` becomes an image item taking ``images`` in order. For rows that are not
    read through a dataset object (evaluation rows, lmms-eval requests, test rows); ``messages`` are not modified."""
    example = {"prompt": [dict(m) for m in messages], "images": list(images)}  # verl rewrites contents in place
    return RLHFDataset._build_messages(_RowView(), example, key="prompt")


def _config_get(config: Any, key: str) -> Any:
    return config.get(key) if config is not None else None


class VisionRLDataset(RLHFDataset):
    """``RLHFDataset`` whose image loading runs without torchvision (and identically with it)."""

    @classmethod
    def _process_multi_modal_info(cls, messages: list[dict], image_patch_size, config) -> tuple[Any, Any, Any]:
        images = process_vision_info(
            messages,
            patch_size=image_patch_size,
            min_pixels=_config_get(config, "min_pixels"),
            max_pixels=_config_get(config, "max_pixels"),
        )
        return images, None, cls._extract_audio_info(messages)

    @classmethod
    async def process_vision_info(cls, messages: list[dict], image_patch_size, config) -> tuple[Any, Any]:
        """verl's legacy async hook, kept consistent with :meth:`_process_multi_modal_info`."""
        images, videos, _ = await cls.process_multi_modal_info(messages, image_patch_size, config)
        return images, videos


def build_gen_batch(
    rows: Sequence[Mapping[str, Any]],
    *,
    global_steps: int = 1,
    validate: bool = False,
    meta_info: Mapping[str, Any] | None = None,
):
    """The ``DataProto`` the trainer passes to ``generate_sequences`` for ``rows`` (already repeated n times).

    Rows are collated with verl's ``collate_fn`` (tensors stacked, everything else an object array filled
    element-wise, so a list-of-messages ``raw_prompt`` stays one object per row); a missing ``dummy_tensor`` or
    ``uid`` is added. All rows must have the same keys (verl's collation would silently misalign them otherwise).
    ``meta_info`` gets ``global_steps`` and ``validate`` and then the given entries.
    """
    from verl.protocol import DataProto
    from verl.utils.dataset.rl_dataset import collate_fn

    if not rows:
        raise ValueError("rows is empty")
    rows = [dict(row) for row in rows]
    for i, row in enumerate(rows):
        if not isinstance(row.get("raw_prompt"), list):
            raise ValueError(f"row {i} has no raw_prompt list of chat messages (see dataset_row)")
        row.setdefault("dummy_tensor", torch.tensor([0], dtype=torch.uint8))
        row.setdefault("uid", str(uuid.uuid4()))
    keys = set(rows[0])
    for i, row in enumerate(rows[1:], start=1):
        if set(row) != keys:
            raise ValueError(f"row {i} has keys {sorted(set(row) ^ keys)} that row 0 has not (or vice versa)")
    batch = DataProto.from_single_dict(collate_fn(rows))
    batch.meta_info = {"global_steps": global_steps, "validate": validate, **(meta_info or {})}
    return batch


def validation_meta_info(tokenizer: Any, do_sample: bool) -> dict[str, Any]:
    """The ``meta_info`` entries verl's trainer adds for a validation batch (beside ``global_steps``/``validate``);
    with them the worker samples with the rollout's ``val_kwargs``."""
    return {
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "recompute_log_prob": False,
        "do_sample": bool(do_sample),
    }
