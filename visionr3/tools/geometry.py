"""Image geometry as pure functions: no I/O, no PIL objects, integers in and out.

Conventions: sizes are ``(height, width)`` in pixels, as Qwen's ``smart_resize`` returns them. ``factor`` is the side a
merged vision token covers: ``patch_size * merge_size`` = 14 * 2 = 28 for Qwen2-VL/Qwen2.5-VL, 16 * 2 = 32 for
Qwen3-VL.
"""

from __future__ import annotations

import math

QWEN2_5_VL_FACTOR = 28
QWEN3_VL_FACTOR = 32
# qwen-vl-utils' defaults: at least 4 and at most 16384 merged tokens per image, aspect ratio below 200.
MIN_TOKENS_PER_IMAGE = 4
MAX_TOKENS_PER_IMAGE = 16384
MAX_ASPECT_RATIO = 200


def round_by_factor(number: float, factor: int) -> int:
    """The multiple of ``factor`` closest to ``number`` (Python's round: halves go to the even multiple)."""
    return round(number / factor) * factor


def ceil_by_factor(number: float, factor: int) -> int:
    """The smallest multiple of ``factor`` that is >= ``number``."""
    return math.ceil(number / factor) * factor


def floor_by_factor(number: float, factor: int) -> int:
    """The largest multiple of ``factor`` that is <= ``number``."""
    return math.floor(number / factor) * factor


def smart_resize(
    height: int,
    width: int,
    factor: int = QWEN2_5_VL_FACTOR,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    max_aspect_ratio: float = MAX_ASPECT_RATIO,
) -> tuple[int, int]:
    """Qwen's smart resize: the ``(height, width)`` an image is resized to before the vision encoder sees it.

    Same semantics as ``qwen_vl_utils.smart_resize`` (which cannot be imported without torchvision): round both sides
    to multiples of ``factor`` (at least one ``factor``); if the area exceeds ``max_pixels``, scale down by the
    square root of the excess and floor; if below ``min_pixels``, scale up and ceil. The aspect ratio is kept as
    closely as the rounding allows. ``min_pixels``/``max_pixels`` default to 4 and 16384 tokens of ``factor**2``.

    Raises ValueError for non-positive sizes, ``min_pixels > max_pixels``, or an aspect ratio above
    ``max_aspect_ratio``: such images cannot be represented faithfully and are rejected rather than distorted.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    max_pixels = MAX_TOKENS_PER_IMAGE * factor**2 if max_pixels is None else max_pixels
    min_pixels = MIN_TOKENS_PER_IMAGE * factor**2 if min_pixels is None else min_pixels
    if max_pixels < min_pixels:
        raise ValueError(f"max_pixels ({max_pixels}) must be >= min_pixels ({min_pixels})")
    if max(height, width) / min(height, width) > max_aspect_ratio:
        raise ValueError(
            f"absolute aspect ratio must be smaller than {max_aspect_ratio}, "
            f"got {max(height, width) / min(height, width):.1f} for {height}x{width}"
        )
    h_bar = max(factor, round_by_factor(height, factor))
    w_bar = max(factor, round_by_factor(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, floor_by_factor(height / beta, factor))
        w_bar = max(factor, floor_by_factor(width / beta, factor))
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = ceil_by_factor(height * beta, factor)
        w_bar = ceil_by_factor(width * beta, factor)
    return h_bar, w_bar


def num_image_tokens(height: int, width: int, factor: int = QWEN2_5_VL_FACTOR) -> int:
    """Number of ``<|image_pad|>`` tokens an already smart-resized ``height x width`` image expands to."""
    if height % factor or width % factor:
        raise ValueError(f"{height}x{width} is not a multiple of the factor {factor}; smart_resize it first")
    return (height // factor) * (width // factor)
