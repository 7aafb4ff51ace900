"""verl ``BaseTool`` adapters over :mod:`visionr3.tools.geometry`: crop/zoom and VisionThink's resize.

Both tools render from the **full-resolution source**, never from ``agent_data.image_data`` (the resized copy the
policy saw). Where the source comes from, in ``create_kwargs`` (verl: ``extra_info.tools_kwargs.<tool>.create_kwargs``):

- ``image``: the dataset's own reference to the original (path, bytes, HF image dict or PIL) — wins if present;
- ``source_images`` / ``seen_sizes`` / ``full_sizes``: filled by the ``visionr3_agent`` loop for every call — the
  prompt's original images (taken from the raw prompt before any resizing), the ``(width, height)`` each was shown
  at (after the dataset, downsampling and the processor), and the size before VisionThink's downsampling;
- ``image_index``: which prompt image the call refers to (default 0).

Every call is create -> execute -> release in verl 0.9.1, so no state survives between calls: a failed call can never
return a previous crop. Failures come back as an ``Error: ...`` text turn with no image and ``valid: False`` in the
call's info, never as an exception. Two kinds, told apart in the info because only the first is the model's doing:

- the call was wrong (bad box, bad action): ``{"valid": False, "error": ...}``;
- the source cannot be used (missing, unreadable or truncated, or a size :func:`check_source_size` refuses: no
  pixels, a decompression bomb, an aspect ratio above 200): :class:`SourceImageError`, logged with its reference and
  returned as ``{"valid": False, "error": "the source image ... cannot be used: ...", "data_error": True}``. The agent
  loop counts it in ``tool_data_errors``, not ``invalid_tool_calls``.

Image work runs in a thread so the agent loop's event loop keeps serving other trajectories.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import operator
import re
from typing import Any
from uuid import uuid4

from PIL import Image
from verl.tools.base_tool import BaseTool
from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse

from visionr3.processing import open_image
from visionr3.tools.geometry import (
    MAX_ASPECT_RATIO,
    QWEN2_5_VL_FACTOR,
    BoxError,
    check_source_size,
    plan_crop,
    short_repr,
    smart_resize,
)

logger = logging.getLogger(__name__)

RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


class SourceImageError(RuntimeError):
    """The full-resolution source of a call cannot be used (a data problem, not the model's). ``str(error)`` is the
    error turn's text and says which source and why."""


class _SourceImageTool(BaseTool):
    """Shared plumbing: per-call ``create_kwargs`` storage and source loading."""

    def __init__(self, config: dict, tool_schema: OpenAIFunctionToolSchema | None):
        # verl 0.9.1's BaseTool.__init__ prints the whole schema as JSON on every construction (each agent-loop
        # worker, the warm-up, eval): into the demo's and eval's consoles. The schema is in the tool YAML already.
        with contextlib.redirect_stdout(io.StringIO()):
            super().__init__(config, tool_schema)
        self._calls: dict[str, dict] = {}
        self.resample = RESAMPLE[str(config.get("resample", "bicubic")).lower()]

    async def create(self, instance_id: str | None = None, create_kwargs: dict | None = None, **kwargs):
        instance_id = instance_id or str(uuid4())
        self._calls[instance_id] = dict(create_kwargs or {})
        return instance_id, ToolResponse()

    async def release(self, instance_id: str, **kwargs) -> None:
        self._calls.pop(instance_id, None)

    def _source(self, call: dict) -> tuple[Image.Image, tuple[int, int] | None, tuple[int, int] | None]:
        """(full-resolution RGB source, seen size, pre-downsampling size) for this call's image.

        Raises :class:`SourceImageError` for every data problem. PIL refuses bombs when it opens a file, and
        :func:`open_image` keeps an RGB file lazy, so a too large or too thin RGB source is refused before its pixels
        are allocated. The pixels are decoded here, so a truncated file fails now, not later inside ``crop``/``resize``.
        """
        try:
            index = operator.index(call.get("image_index") or 0)  # an int, numpy's too (rows read from parquet)
        except TypeError:
            index = -1
        if index < 0:
            raise SourceImageError(
                f"the source image cannot be used: image_index {short_repr(call['image_index'], 40)} is not an index"
            )
        name = "the source image" if index == 0 else f"the source image #{index}"
        reference = call.get("image")
        if reference is None:
            sources = call.get("source_images") or []
            if index >= len(sources):
                raise SourceImageError(
                    f"{name} cannot be used: this trajectory has no source image #{index} (it has {len(sources)})"
                )
            reference = sources[index]
        try:
            image = open_image(reference)
        except Exception as exc:  # unreadable file, bad bytes, unsupported reference, PIL's decompression-bomb refusal
            raise SourceImageError(f"{name} cannot be used: it could not be loaded ({_describe(exc)})") from exc
        width, height = image.size
        try:
            check_source_size(width, height)
        except ValueError as exc:
            raise SourceImageError(f"{name} cannot be used: {exc}") from None  # the message names the size
        try:
            image.load()  # a no-op for decoded images (the loop decodes the prompt's once for all sibling calls)
        except Exception as exc:  # truncated or corrupt pixel data
            raise SourceImageError(
                f"{name} cannot be used: its {width}x{height} pixels could not be decoded ({_describe(exc)})"
            ) from exc
        return image, _size_at(call.get("seen_sizes"), index, name), _size_at(call.get("full_sizes"), index, name)

    async def _run(self, instance_id: str, fn, *args):
        call = self._calls.get(instance_id, {})
        try:
            return await asyncio.get_running_loop().run_in_executor(None, fn, call, *args)
        except SourceImageError as exc:
            reference = call.get("image", call.get("source_images"))
            logger.warning("%s: %s (source: %s)", self.name, exc, short_repr(reference, 200))
            return _error(str(exc), data_error=True)


def _describe(exc: Exception) -> str:
    """``Type: message`` for an error turn, without object addresses (PIL names ``<_io.BytesIO object at 0x…>``): the
    model's context, and so its sampling, must not depend on where an object happened to live in memory."""
    return f"{type(exc).__name__}: {re.sub(r' at 0x[0-9a-fA-F]+', '', str(exc))}"


def _size_at(sizes: Any, index: int, name: str) -> tuple[int, int] | None:
    """``sizes[index]`` as ``(width, height)``, or None when not given. A size that is given but is not two positive
    integers (a row's own ``create_kwargs`` can set one) is a data problem."""
    if not sizes or index >= len(sizes) or sizes[index] is None:
        return None
    try:
        width, height = (int(side) for side in sizes[index])
    except (TypeError, ValueError, OverflowError):
        width = height = 0
    if width <= 0 or height <= 0:
        given = short_repr(sizes[index], 40)
        raise SourceImageError(f"{name} cannot be used: the size given for it, {given}, is not a positive width and height")
    return width, height


class CropZoomTool(_SourceImageTool):
    """Crop a model-written ``bbox_2d`` from the source image and return it zoomed.

    Config (the ``config:`` block of the tool YAML):

    - ``coordinate_frame``: ``model_pixels`` (Qwen2.5-VL, default), ``normalized_1000`` (Qwen3-VL), ``relative``,
      ``source_pixels`` — see :data:`visionr3.tools.geometry.COORDINATE_FRAMES`;
    - ``min_side`` (28, in pixels of the image the model saw), ``max_aspect`` (100);
    - ``zoom``: ``vlm_r3`` (default: 2x for small regions down to 1x for half the image), ``none``, or a number;
    - ``factor`` (28; 32 for Qwen3-VL), ``crop_min_pixels`` / ``crop_max_pixels``: the crop's pixel budget;
    - ``resample``: ``bicubic`` (default, as Qwen's processor) or ``lanczos`` (VLM-R3).
    """

    def _execute(self, call: dict, parameters: Any):
        if not isinstance(parameters, dict):
            return _error(f"arguments must be a JSON object with bbox_2d, got {type(parameters).__name__}")
        if "bbox_2d" not in parameters:
            return _error("missing required argument bbox_2d = [x1, y1, x2, y2]")
        source, seen, _ = self._source(call)
        frame = self.config.get("coordinate_frame", "model_pixels")
        if seen is None:
            if frame == "model_pixels":
                raise SourceImageError(
                    "the source image cannot be used: the size the model saw it at is unknown (run through visionr3_agent)"
                )
            seen = source.size
        try:
            plan = plan_crop(
                parameters["bbox_2d"],
                frame=frame,
                seen_size=seen,
                source_size=source.size,
                min_side=float(self.config.get("min_side", 28)),
                max_aspect=float(self.config.get("max_aspect", 100)),
                zoom=self.config.get("zoom", "vlm_r3"),
                factor=int(self.config.get("factor", QWEN2_5_VL_FACTOR)),
                min_pixels=self.config.get("crop_min_pixels"),
                max_pixels=self.config.get("crop_max_pixels"),
            )
        except BoxError as exc:
            return _error(str(exc))
        crop = source.crop(plan.source_box)
        if crop.size != plan.output_size:
            crop = crop.resize(plan.output_size, resample=self.resample)
        label = parameters.get("label")
        text = f"Zoomed in on the region {list(parameters['bbox_2d'])}"
        text += f" ({label})." if isinstance(label, str) and label else "."
        metrics = {"valid": True, "source_box": list(plan.source_box), "output_size": list(plan.output_size), "zoom": plan.zoom}
        return ToolResponse(image=[crop], text=text), 0.0, metrics

    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs):
        return await self._run(instance_id, self._execute, parameters)


class ResizeTool(_SourceImageTool):
    """VisionThink's ``resize_image``: return the image again at full resolution, re-rendered from the source.

    The policy first saw a downsampled view (the agent loop's ``low_res_factor``). This tool does not upscale that
    view: it renders the original source at the size the image had before downsampling (``output: full``, the
    training default, VisionThink's ``use_raw_image``) or at the source's own size within the budget
    (``output: original``, VisionThink's evaluation). Config: ``output``, ``factor`` (28; 32 for Qwen3-VL),
    ``min_pixels``/``max_pixels`` (budget of the returned image), ``resample`` (``lanczos`` as VisionThink, default).
    """

    def __init__(self, config: dict, tool_schema: OpenAIFunctionToolSchema | None):
        super().__init__({"resample": "lanczos", **config}, tool_schema)

    def _execute(self, call: dict, parameters: Any):
        action = parameters.get("action") if isinstance(parameters, dict) else None
        if action != "resize":
            return _error(f"the only action is \"resize\", got {short_repr(action, 40)}")
        source, seen, full = self._source(call)
        width, height = source.size
        if self.config.get("output", "full") == "full" and full is not None:
            width, height = full
            try:  # rounding to the factor can push a source at the aspect limit past it (20000x100 -> 6328x28)
                check_source_size(width, height)
            except ValueError as exc:
                raise SourceImageError(f"the source image cannot be used at its full size: {exc}") from None
        factor = int(self.config.get("factor", QWEN2_5_VL_FACTOR))
        out_h, out_w = smart_resize(
            height, width, factor=factor, min_pixels=self.config.get("min_pixels"), max_pixels=self.config.get("max_pixels")
        )
        if max(out_w, out_h) > MAX_ASPECT_RATIO * min(out_w, out_h):  # the processor would refuse the returned image
            raise SourceImageError(
                f"the source image cannot be used: within the pixel budget it would be shown at {out_w}x{out_h}, "
                f"an aspect ratio above {MAX_ASPECT_RATIO}"
            )
        image = source if source.size == (out_w, out_h) else source.resize((out_w, out_h), resample=self.resample)
        metrics = {"valid": True, "output_size": [out_w, out_h], "seen_size": list(seen) if seen else None}
        return ToolResponse(image=[image], text="The resized image is shown below."), 0.0, metrics

    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs):
        return await self._run(instance_id, self._execute, parameters)


def _error(message: str, data_error: bool = False):
    """An error turn. ``data_error``: the source, not the model's call, is at fault (see the module docstring)."""
    info: dict[str, Any] = {"valid": False, "error": message}
    if data_error:
        info["data_error"] = True
    return ToolResponse(text=f"Error: {message}"), 0.0, info


async def call_tool(tool: BaseTool, parameters: Any, create_kwargs: dict | None = None):
    """One call the way verl 0.9.1's agent loop makes it: create -> execute -> release.

    For code that runs a tool outside an agent loop (the demo's warm-up, benchmarks, tests).
    """
    instance_id, _ = await tool.create(create_kwargs=create_kwargs or {})
    try:
        return await tool.execute(instance_id, parameters)
    finally:
        await tool.release(instance_id)
