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

from typing import Any

from verl.utils.dataset.rl_dataset import RLHFDataset

from visionr3.processing import process_vision_info


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
