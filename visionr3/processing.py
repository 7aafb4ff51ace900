"""The one way visionr3 turns images into model inputs, on CPU-only machines and GPU clusters alike.

Why this module exists: on a machine without a loadable torchvision (every CPU machine we develop and test on — PyPI's
torchvision wheels need CUDA libraries), three things in the Qwen-VL stack break:

1. ``import qwen_vl_utils`` fails (it imports torchvision at the top), and verl's ``RLHFDataset`` and agent loop call
   ``qwen_vl_utils.process_vision_info`` to load and smart-resize images;
2. transformers' fast (torchvision) image processors are unavailable;
3. ``transformers.BaseVideoProcessor`` is a torchvision dummy, so building a ``Qwen2_5_VLProcessor`` fails and
   ``verl.utils.hf_processor`` silently returns ``None`` — verl then treats the VL model as text-only.

The decision (NOTE.md "CPU image-processing path"): image *loading and resizing* use our own :func:`fetch_image`
everywhere, CPU and GPU, with qwen-vl-utils' semantics (a test checks parity against qwen-vl-utils' source), so the
path tested on CPU is the path that trains on GPU. *Pixel preprocessing* is transformers' choice: the fast
torchvision processor where torchvision loads, the slow PIL processor (``Qwen2VLImageProcessorPil``) elsewhere —
numerically the same normalisation. :func:`prepare_runtime` installs the single workaround for (3); it is a no-op where
torchvision works, so nothing leaks into the GPU path. Call it — or use :func:`load_processor`, which does — in every
process that builds a processor (Ray workers included) before touching ``AutoProcessor``.
"""

from __future__ import annotations

import base64
import functools
import io
import os
import threading
import urllib.request
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Union

from PIL import Image

from visionr3.tools.geometry import QWEN2_5_VL_FACTOR, smart_resize

# Qwen's vision encoders merge 2x2 patches into one token.
SPATIAL_MERGE_SIZE = 2
# (module AutoVideoProcessor resolves the class from, class name, patch size) of the Qwen-VL video processors.
_QWEN_VIDEO_PROCESSORS = (
    ("transformers.models.qwen2_vl", "Qwen2VLVideoProcessor", 14),
    ("transformers.models.qwen3_vl", "Qwen3VLVideoProcessor", 16),
)

ImageSource = Union[Image.Image, str, bytes, os.PathLike, Mapping[str, Any]]
"""What :func:`fetch_image` accepts: a PIL image; a path, ``file://`` URI, ``http(s)://`` URL or ``data:image`` URI;
raw encoded bytes; or a dict as stored by HF ``datasets``/verl parquet (``{"bytes": ..., "path": ...}``) or as
written in chat messages (``{"image": ...}`` / ``{"image_url": ...}``, optionally with ``min_pixels``,
``max_pixels``, ``resized_height``, ``resized_width``)."""


@functools.cache
def torchvision_usable() -> bool:
    """True if torchvision imports *and* its compiled ops load (CPU torch + PyPI torchvision fails on the ops)."""
    try:
        import torchvision  # noqa: F401
        from torchvision.ops import nms  # noqa: F401  (raises where the C++ ops are missing)
    except Exception:  # ImportError, OSError, RuntimeError: any of them means "not usable"
        return False
    return True


def prepare_runtime() -> None:
    """Make transformers' Qwen-VL processors loadable in this process. Idempotent; a no-op where torchvision works.

    Without torchvision, transformers resolves the Qwen-VL video processors (``Qwen2VLVideoProcessor``,
    ``Qwen3VLVideoProcessor``) and ``transformers.BaseVideoProcessor`` to placeholders that raise on construction,
    and every Qwen-VL processor requires a video processor. We put an images-only stand-in under each of those names
    (the module attribute that ``AutoVideoProcessor`` resolves, and the top-level one): it loads the same config,
    keeps the same class name (so checkpoints saved here name the real class), and raises a clear error only if
    asked to process a video. Images go through the PIL image processor untouched.
    """
    if torchvision_usable():
        return
    import importlib
    import sys

    from transformers import processing_utils
    from transformers.video_processing_utils import BaseVideoProcessor

    base = _images_only_video_processor_base()
    stand_ins = {"BaseVideoProcessor": BaseVideoProcessor}
    for module_name, class_name, patch_size in _QWEN_VIDEO_PROCESSORS:
        module = importlib.import_module(module_name)
        current = module.__dict__.get(class_name)
        if not (isinstance(current, type) and issubclass(current, base)):
            current = type(class_name, (base,), {"patch_size": patch_size, "__module__": __name__})
            setattr(module, class_name, current)  # what AutoVideoProcessor resolves the class name through
        stand_ins[class_name] = current
    # transformers re-executes its lazy top-level module while importing processing_utils, so bind the names on the
    # module object processors actually consult (processing_utils.transformers_module) and on the current one.
    for top_level in {id(m): m for m in (sys.modules["transformers"], processing_utils.transformers_module)}.values():
        for name, cls in stand_ins.items():
            setattr(top_level, name, cls)


@functools.cache
def _images_only_video_processor_base() -> type:
    """Base of the stand-ins; built on first use so importing this module does not import transformers."""
    from transformers.video_processing_utils import BaseVideoProcessor

    class ImagesOnlyVideoProcessor(BaseVideoProcessor):
        """Stand-in video processor for machines without torchvision: constructible, refuses videos."""

        merge_size = 2
        temporal_patch_size = 2

        def preprocess(self, videos, *args, **kwargs):
            raise NotImplementedError(
                "video inputs need torchvision, which cannot load on this machine; visionr3 supports images only here"
            )

    return ImagesOnlyVideoProcessor


def load_processor(path: str | os.PathLike, **kwargs: Any):
    """Load a Qwen-VL processor the way verl does (``verl.utils.hf_processor``: M-RoPE ``get_rope_index`` bound),
    after :func:`prepare_runtime`. Raises instead of returning ``None`` when the directory has no multimodal
    processor, because a VL model silently treated as text-only is the worst failure mode."""
    prepare_runtime()
    from verl.utils import hf_processor

    processor = hf_processor(str(path), **kwargs)
    if processor is None:
        raise RuntimeError(
            f"no multimodal processor could be loaded from {path}; see the warning above "
            "(on CPU, was visionr3.processing.prepare_runtime() skipped?)"
        )
    return processor


def load_tokenizer(path: str | os.PathLike, **kwargs: Any):
    """Load the tokenizer the way verl does (``verl.utils.hf_tokenizer``, which fixes a missing pad token)."""
    from verl.utils import hf_tokenizer

    return hf_tokenizer(str(path), **kwargs)


def vision_factor(patch_size: int) -> int:
    """Side in pixels covered by one merged vision token: 28 for Qwen2.5-VL (patch 14), 32 for Qwen3-VL (patch 16)."""
    return int(patch_size) * SPATIAL_MERGE_SIZE


def open_image(source: ImageSource) -> Image.Image:
    """Decode ``source`` (see :data:`ImageSource`) into an RGB PIL image at its original resolution.

    Transparent images are composited on white, as qwen-vl-utils does. Raises ValueError naming the input when it is
    not an image reference we understand.
    """
    if isinstance(source, Mapping):
        # verl's RLHFDataset hands us {"type": "image", "image": PIL, "bytes": ..., "path": ...}: prefer the decoded
        # image, then the raw bytes (HF datasets' Image feature), then a reference.
        if isinstance(source.get("image"), Image.Image):
            return open_image(source["image"])
        if source.get("bytes") is not None:
            return open_image(bytes(source["bytes"]))
        for key in ("image", "image_url", "path"):
            if source.get(key) is not None:
                value = source[key]
                if isinstance(value, Mapping) and "url" in value:  # OpenAI-style {"image_url": {"url": ...}}
                    value = value["url"]
                return open_image(value)
        raise ValueError(f"image dict has none of image/bytes/image_url/path: keys={sorted(source)}")
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, (bytes, bytearray)):
        image = Image.open(io.BytesIO(source))
    elif isinstance(source, (str, os.PathLike)):
        ref = os.fspath(source)
        if ref.startswith("data:image"):
            if "base64," not in ref:
                raise ValueError("data:image URI without base64 payload")
            image = Image.open(io.BytesIO(base64.b64decode(ref.split("base64,", 1)[1])))
        elif ref.startswith(("http://", "https://")):
            with urllib.request.urlopen(ref, timeout=60) as response:  # noqa: S310 (user-supplied dataset URL)
                image = Image.open(io.BytesIO(response.read()))
        else:
            image = Image.open(Path(ref[7:] if ref.startswith("file://") else ref))
    else:
        raise ValueError(f"unsupported image reference of type {type(source).__name__}")
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` in RGB; RGBA is composited on a white background (qwen-vl-utils' behaviour).

    An RGB image is returned as is, not copied: callers only read it (crop/resize make new images), and copying an
    8K source on every tool call tripled the crop latency (benchmarks/bench_tools.py).
    """
    if image.mode == "RGB":
        return image
    return derived_image(image, ("rgb",), _composite_rgb)


def _composite_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        return background
    return image.convert("RGB")


MAX_VIEWS_PER_SOURCE = 4
"""Derived images (RGB conversion, resized views) kept per live source object; the oldest goes first."""

_views: dict[int, "OrderedDict[tuple, Image.Image]"] = {}
_views_lock = threading.RLock()  # re-entrant: a finalizer can run while this thread holds it
_source_locks: dict[int, threading.Lock] = {}


def derived_image(source: Image.Image, key: tuple, make) -> Image.Image:
    """``make(source)``, computed once per source *object* and ``key`` and shared for as long as ``source`` lives.

    Why: the n samples of a group share one decoded source (the trainer repeats a prompt's row by reference; the
    loop decodes it once, :func:`visionr3.agent.loop.original_images`). Each sample's loop used to make its own
    resized view of it (``fetch_image``) and its own RGB conversion on every tool call: n copies of the image the
    policy sees, per group, alive until the batch ended. Here they share one. The memo is bounded: an entry goes
    with its source (a ``weakref.finalize``), and a source keeps at most :data:`MAX_VIEWS_PER_SOURCE` views.
    Derived images are read, never written in place (crop/resize/the processor make new images).
    benchmarks/bench_rollout_scale.py measures what this saves.
    """
    ident = id(source)
    with _views_lock:
        lock = _source_locks.get(ident)
        if lock is None:  # first view of this source: forget its views when it dies (before its id can be reused)
            lock = _source_locks[ident] = threading.Lock()
            _views[ident] = OrderedDict()
            weakref.finalize(source, _forget_source, ident)
    with lock:  # siblings asking at once wait for one computation instead of making n
        views = _views.get(ident)
        view = views.get(key) if views is not None else None
        if view is None:
            view = make(source)
            if views is not None:
                views[key] = view
                while len(views) > MAX_VIEWS_PER_SOURCE:
                    views.popitem(last=False)
        return view


def _forget_source(ident: int) -> None:
    with _views_lock:
        _views.pop(ident, None)
        _source_locks.pop(ident, None)


def live_view_sources() -> int:
    """How many source objects have derived images memoised now (tests and benchmarks check it stays bounded)."""
    with _views_lock:
        return len(_views)


def shared_resize(source: Image.Image, size: tuple[int, int], resample: int) -> Image.Image:
    """``source.resize(size, resample)``, shared by every caller that resizes the same source object to the same size
    (see :func:`derived_image`); ``source`` itself when it already has that size."""
    size = (int(size[0]), int(size[1]))
    if source.size == size:
        return source
    return derived_image(source, ("resize", size, int(resample)), lambda image: image.resize(size, resample=resample))


def fetch_image(
    source: ImageSource,
    *,
    patch_size: int = 14,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> Image.Image:
    """Load ``source`` and smart-resize it to what the vision encoder will see — qwen-vl-utils' ``fetch_image``.

    Keyword arguments set the pixel budget; a dict source may carry its own ``min_pixels``/``max_pixels`` or an
    explicit ``resized_height``/``resized_width``, which win (as in qwen-vl-utils). The result's sides are multiples
    of ``vision_factor(patch_size)``, so the processor will not resize it again.
    """
    options = source if isinstance(source, Mapping) else {}
    image = open_image(source)
    width, height = fetched_size(
        image.size, options, patch_size=patch_size, min_pixels=min_pixels, max_pixels=max_pixels
    )
    return shared_resize(image, (width, height), Image.Resampling.BICUBIC)


def fetched_size(
    size: tuple[int, int],
    options: Mapping[str, Any] | None = None,
    *,
    patch_size: int = 14,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> tuple[int, int]:
    """``(width, height)`` that :func:`fetch_image` gives an image of ``size`` (original pixels) with the per-image
    ``options`` of its dict (``resized_height``/``resized_width``, ``min_pixels``/``max_pixels``) and the keyword
    budget: pure arithmetic, so a dataset can count an image's tokens from its header alone."""
    factor = vision_factor(patch_size)
    options = options or {}
    # Per-image options win over the keyword budget; parquet struct columns store absent fields as None.
    if options.get("resized_height") and options.get("resized_width"):
        height, width = smart_resize(int(options["resized_height"]), int(options["resized_width"]), factor=factor)
    else:
        width, height = size
        height, width = smart_resize(
            height,
            width,
            factor=factor,
            min_pixels=options.get("min_pixels") or min_pixels,
            max_pixels=options.get("max_pixels") or max_pixels,
        )
    return width, height


def image_size(source: ImageSource) -> tuple[int, int]:
    """``(width, height)`` of ``source`` at its original resolution, read from the file's header: no pixel is decoded
    (PIL opens lazily), so it costs a fraction of a millisecond whatever the image's size. Same references and the same
    precedence as :func:`open_image`; an ``http(s)://`` URL is downloaded."""
    if isinstance(source, Image.Image):
        return source.size
    if isinstance(source, Mapping):
        if isinstance(source.get("image"), Image.Image):
            return source["image"].size
        if source.get("bytes") is not None:
            return image_size(bytes(source["bytes"]))
        for key in ("image", "image_url", "path"):
            if source.get(key) is not None:
                value = source[key]
                if isinstance(value, Mapping) and "url" in value:
                    value = value["url"]
                return image_size(value)
        raise ValueError(f"image dict has none of image/bytes/image_url/path: keys={sorted(source)}")
    if isinstance(source, (bytes, bytearray, memoryview)):
        with Image.open(io.BytesIO(source)) as image:
            return image.size
    if isinstance(source, (str, os.PathLike)):
        ref = os.fspath(source)
        if ref.startswith("data:image") and "base64," in ref:
            return image_size(base64.b64decode(ref.split("base64,", 1)[1]))
        if ref.startswith(("data:image", "http://", "https://")):
            return open_image(ref).size
        with Image.open(Path(ref[7:] if ref.startswith("file://") else ref)) as image:
            return image.size
    raise ValueError(f"unsupported image reference of type {type(source).__name__}")


def save_display_copy(image: Image.Image, path: str | os.PathLike, max_side: int, quality: int = 88) -> None:
    """A JPEG copy of ``image`` at most ``max_side`` pixels on its long side, for people to look at (eval records,
    rollout dumps): never a model input, and boxes drawn on it stay in the source image's pixels."""
    image = image.convert("RGB")
    scale = max(image.size) / max_side
    if scale > 1:
        image = image.resize((max(1, round(image.width / scale)), max(1, round(image.height / scale))))
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    image.save(path, format="JPEG", quality=quality)


def image_items(messages: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The image content items of a chat, in the order the chat template renders them.

    An item counts if its ``type`` is ``image`` or it carries ``image``/``image_url`` (qwen-vl-utils' rule). Videos
    raise NotImplementedError: visionr3's pipeline and tools work on images.
    """
    items = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for item in content:
            if not isinstance(item, Mapping):
                continue
            if item.get("type") == "video" or "video" in item:
                raise NotImplementedError("video inputs are not supported by visionr3's image pipeline")
            if item.get("type") == "image" or "image" in item or "image_url" in item:
                items.append(item)
    return items


def process_vision_info(
    messages: Iterable[Mapping[str, Any]],
    *,
    patch_size: int = 14,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> list[Image.Image] | None:
    """All images of a chat, in order, fetched and smart-resized (``qwen_vl_utils.process_vision_info`` for images).

    Returns ``None`` for a chat without images, like qwen-vl-utils.
    """
    images = [
        fetch_image(item, patch_size=patch_size, min_pixels=min_pixels, max_pixels=max_pixels)
        for item in image_items(messages)
    ]
    return images or None


def seen_size(processor, size: tuple[int, int], mm_processor_kwargs: Mapping[str, Any] | None = None) -> tuple[int, int]:
    """``(width, height)`` at which the vision encoder sees an image of ``size`` after the processor's smart_resize.

    This is the frame of Qwen2.5-VL's absolute box coordinates. It uses the processor's own pixel budget
    (``size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}`` in transformers 5), with any
    ``min_pixels``/``max_pixels`` from ``mm_processor_kwargs`` taking precedence, as they do in the processor call.
    """
    image_processor = processor.image_processor
    budget = dict(getattr(image_processor, "size", None) or {})
    min_pixels = budget.get("shortest_edge", getattr(image_processor, "min_pixels", None))
    max_pixels = budget.get("longest_edge", getattr(image_processor, "max_pixels", None))
    overrides = mm_processor_kwargs or {}
    min_pixels = overrides.get("min_pixels", min_pixels)
    max_pixels = overrides.get("max_pixels", max_pixels)
    factor = int(image_processor.patch_size) * int(getattr(image_processor, "merge_size", SPATIAL_MERGE_SIZE))
    width, height = size
    height, width = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return width, height
