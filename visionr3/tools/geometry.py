"""Image geometry as pure functions: no I/O, no PIL objects, integers in and out.

Conventions: sizes are ``(height, width)`` in pixels, as Qwen's ``smart_resize`` returns them. ``factor`` is the side a
merged vision token covers: ``patch_size * merge_size`` = 14 * 2 = 28 for Qwen2-VL/Qwen2.5-VL, 16 * 2 = 32 for
Qwen3-VL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


# --------------------------------------------------------------------------------------------------------------------
# Bounding boxes: model coordinates -> full-resolution source pixels
# --------------------------------------------------------------------------------------------------------------------
#
# A box is (x1, y1, x2, y2): left, top, right, bottom, with x to the right and y down. Source boxes are in pixels of
# the *full-resolution source* image, as floats until ``integer_box`` rounds them outwards for ``PIL.Image.crop``.

Box = tuple[float, float, float, float]

COORDINATE_FRAMES = ("model_pixels", "normalized_1000", "relative", "source_pixels")
"""How the model writes a box:

- ``model_pixels``: absolute pixels of the image the model saw (after smart_resize) — Qwen2.5-VL, VLM-R3.
- ``normalized_1000``: 0..1000 on both axes of the image — Qwen2-VL and Qwen3-VL grounding.
- ``relative``: 0..1 on both axes — Mini-o3.
- ``source_pixels``: absolute pixels of the original image — DeepEyes' convention (which drifts from what the model
  saw once the source exceeds the pixel budget; offered for faithful reproduction only).
"""

# PIL raises DecompressionBombError above 2 * Image.MAX_IMAGE_PIXELS (89,478,485); we refuse at the same size.
MAX_SOURCE_PIXELS = 2 * 89_478_485
# DeepEyes and verl's old zoom tool reject crops more elongated than this.
MAX_CROP_ASPECT_RATIO = 100.0
# DeepEyes/verl: crops smaller than one vision token side are grown around their centre.
MIN_CROP_SIDE = 28


class BoxError(ValueError):
    """A box the model wrote cannot be used. ``str(error)`` is written for the model to read in its error turn."""


def parse_box(value: object) -> Box:
    """Validate a model-written ``bbox_2d``: a JSON array of exactly four finite real numbers (not bools/strings)."""
    if not isinstance(value, (list, tuple)):
        raise BoxError(f"bbox_2d must be a list of 4 numbers [x1, y1, x2, y2], got {short_repr(value)}")
    if len(value) != 4:
        raise BoxError(f"bbox_2d must have exactly 4 numbers [x1, y1, x2, y2], got {len(value)}")
    numbers = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise BoxError(f"bbox_2d must contain only numbers, got {short_repr(item)}")
        try:
            number = float(item)  # JSON integers are unbounded; beyond float range they cannot be a pixel
        except OverflowError:
            raise BoxError(f"bbox_2d contains a number too large to be a coordinate: {short_repr(item)}") from None
        if not math.isfinite(number):
            raise BoxError(f"bbox_2d must contain finite numbers, got {short_repr(item)}")
        numbers.append(number)
    return (numbers[0], numbers[1], numbers[2], numbers[3])


def short_repr(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error texts the model reads."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def to_source_box(box: Box, frame: str, seen_size: tuple[int, int], source_size: tuple[int, int]) -> Box:
    """Map ``box`` written in ``frame`` onto pixels of the source image. Sizes are ``(width, height)``.

    ``seen_size`` is the size of the image the model saw (after the dataset's and the processor's smart_resize);
    ``source_size`` is the full-resolution original. The map is a pure scale per axis — both images show the same
    field of view — so a box covering the whole seen image covers the whole source.
    """
    sw, sh = source_size
    if frame == "model_pixels":
        vw, vh = seen_size
        sx, sy = sw / vw, sh / vh
    elif frame == "normalized_1000":
        sx, sy = sw / 1000.0, sh / 1000.0
    elif frame == "relative":
        sx, sy = float(sw), float(sh)
    elif frame == "source_pixels":
        sx = sy = 1.0
    else:
        raise ValueError(f"unknown coordinate frame {frame!r}; expected one of {COORDINATE_FRAMES}")
    x1, y1, x2, y2 = box
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def clamp_box(box: Box, width: int, height: int) -> Box:
    """Clip ``box`` to the image ``[0, width] x [0, height]``."""
    x1, y1, x2, y2 = box
    return (min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height))


def expand_to_min_side(box: Box, min_side: float, width: int, height: int) -> Box:
    """Grow each side shorter than ``min_side`` around the box centre, shifting it to stay inside the image.

    A side is never grown beyond the image's own extent. The box must be non-degenerate and inside the image.
    """
    x1, y1, x2, y2 = box
    x1, x2 = _expand_interval(x1, x2, min(min_side, width), width)
    y1, y2 = _expand_interval(y1, y2, min(min_side, height), height)
    return (x1, y1, x2, y2)


def _expand_interval(lo: float, hi: float, target: float, limit: float) -> tuple[float, float]:
    if hi - lo >= target:
        return lo, hi
    centre = (lo + hi) / 2
    lo, hi = centre - target / 2, centre + target / 2
    if lo < 0:
        lo, hi = 0.0, target
    elif hi > limit:
        lo, hi = limit - target, float(limit)
    return lo, hi


def integer_box(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """Round outwards to whole pixels (floor the top-left, ceil the bottom-right), within the image."""
    x1, y1, x2, y2 = box
    return (
        max(0, math.floor(x1)),
        max(0, math.floor(y1)),
        min(width, math.ceil(x2)),
        min(height, math.ceil(y2)),
    )


def vlm_r3_zoom_scale(crop_area: float, source_area: float) -> float:
    """VLM-R3's zoom factor from the crop's share of the source area: small regions are enlarged more.

    ``r = crop/source``: 2.0 below 0.125, 1.0 from 0.5, linear in between (2.0 - (r - 0.125) / 0.375).
    """
    if source_area <= 0:
        raise ValueError("source area must be positive")
    r = crop_area / source_area
    if r < 0.125:
        return 2.0
    if r >= 0.5:
        return 1.0
    return 2.0 - (r - 0.125) / 0.375


def check_source_size(width: int, height: int, max_pixels: int = MAX_SOURCE_PIXELS, max_aspect: float = MAX_ASPECT_RATIO) -> None:
    """Refuse decompression bombs and images too elongated for Qwen's vision encoder (raises ValueError)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ValueError(f"image of {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}")
    if max(width, height) / min(width, height) > max_aspect:
        raise ValueError(f"image of {width}x{height} exceeds the aspect-ratio limit of {max_aspect}")


def downsampled_size(width: int, height: int, factor: float) -> tuple[int, int]:
    """VisionThink's low-resolution view: each side scaled by ``factor`` (VisionThink uses 1/2), floored, at least 1."""
    if not 0 < factor <= 1:
        raise ValueError(f"downsample factor must be in (0, 1], got {factor}")
    return max(1, math.floor(width * factor)), max(1, math.floor(height * factor))


@dataclass(frozen=True)
class CropPlan:
    """Where to crop the source and how large to render the crop. Sizes are ``(width, height)``."""

    source_box: tuple[int, int, int, int]
    output_size: tuple[int, int]
    zoom: float


def plan_crop(
    raw_box: object,
    *,
    frame: str,
    seen_size: tuple[int, int],
    source_size: tuple[int, int],
    min_side: float = MIN_CROP_SIDE,
    max_aspect: float = MAX_CROP_ASPECT_RATIO,
    zoom: str | float = "vlm_r3",
    factor: int = QWEN2_5_VL_FACTOR,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> CropPlan:
    """From a model-written box to the exact source crop and the size to render it at. Raises BoxError.

    Steps: validate (4 finite numbers) -> map ``frame`` onto source pixels -> reject inverted/empty boxes -> clamp to
    the source -> reject boxes with nothing left inside -> grow sides below ``min_side`` (in *seen* pixels, i.e.
    one vision token, converted to source pixels) -> reject aspect ratios above ``max_aspect`` -> round outwards ->
    zoom (``"vlm_r3"``: :func:`vlm_r3_zoom_scale`; a number: fixed factor; ``"none"``: 1.0) -> smart_resize to the
    crop pixel budget with ``factor``.
    """
    box = parse_box(raw_box)
    sw, sh = source_size
    check_source_size(sw, sh)
    x1, y1, x2, y2 = to_source_box(box, frame, seen_size, source_size)
    if x1 >= x2 or y1 >= y2:
        raise BoxError(f"bbox_2d {short_repr(list(_round(box)))} is empty or inverted: need x1 < x2 and y1 < y2")
    clamped = clamp_box((x1, y1, x2, y2), sw, sh)
    if clamped[0] >= clamped[2] or clamped[1] >= clamped[3]:
        raise BoxError(f"bbox_2d {short_repr(list(_round(box)))} lies outside the image")
    # min_side is meant in pixels of the image the model saw: one 28-px token there covers more of a larger source.
    seen_w, seen_h = seen_size
    side = max(min_side * sw / seen_w, min_side * sh / seen_h)
    grown = expand_to_min_side(clamped, side, sw, sh)
    width, height = grown[2] - grown[0], grown[3] - grown[1]
    if max(width, height) / min(width, height) > max_aspect:
        raise BoxError(f"bbox_2d {short_repr(list(_round(box)))} is too elongated (aspect ratio above {max_aspect:g})")
    source_box = integer_box(grown, sw, sh)
    crop_w, crop_h = source_box[2] - source_box[0], source_box[3] - source_box[1]
    scale = zoom_scale(zoom, crop_w * crop_h, sw * sh)
    try:
        out_h, out_w = smart_resize(
            max(1, round(crop_h * scale)),
            max(1, round(crop_w * scale)),
            factor=factor,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
        )
    except ValueError as exc:  # e.g. outward rounding pushed a crop accepted at max_aspect >= 200 past Qwen's limit
        raise BoxError(f"bbox_2d {short_repr(list(_round(box)))} cannot be shown to the model: {exc}") from None
    return CropPlan(source_box=source_box, output_size=(out_w, out_h), zoom=scale)


MAX_ZOOM = 16.0


def zoom_scale(zoom: str | float, crop_area: float, source_area: float) -> float:
    """The zoom factor for a crop: ``"vlm_r3"`` (:func:`vlm_r3_zoom_scale`), ``"none"`` (1.0) or a fixed number in
    (0, MAX_ZOOM]. A bad setting is a configuration error (ValueError), not the model's."""
    if zoom == "vlm_r3":
        return vlm_r3_zoom_scale(crop_area, source_area)
    if zoom == "none":
        return 1.0
    try:
        scale = float(zoom)
    except (TypeError, ValueError):
        scale = math.nan
    if not 0 < scale <= MAX_ZOOM:
        raise ValueError(f"zoom must be 'vlm_r3', 'none' or a number in (0, {MAX_ZOOM:g}], got {zoom!r}")
    return scale


def _round(box: Box) -> tuple[float, ...]:
    return tuple(int(v) if float(v).is_integer() else round(v, 2) for v in box)
