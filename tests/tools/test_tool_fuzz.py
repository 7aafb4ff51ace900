"""Hostile arguments and hostile sources thrown at the verl tools themselves: every call returns a ToolResponse,
nothing escapes, and a source the tool cannot use is reported as a data error, never as the model's fault."""

import asyncio
import math
import struct
import zlib

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from verl.tools.schemas import ToolResponse

from visionr3.tools.geometry import MAX_SOURCE_PIXELS, smart_resize
from visionr3.tools.image_tools import CropZoomTool, ResizeTool, call_tool

SOURCE = Image.new("RGB", (1600, 900), (120, 30, 200))
SEEN = (448, 252)

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**15), max_value=10**15),
    st.sampled_from([0, -1, 1e308, -1e308, 5e-324, float("nan"), float("inf")]),
)
junk = st.one_of(st.none(), st.booleans(), st.text(max_size=8), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
boxes = st.one_of(
    st.lists(numbers, min_size=4, max_size=4),
    st.lists(numbers, max_size=7),
    st.lists(st.one_of(numbers, junk), min_size=4, max_size=4),
    st.lists(st.lists(numbers, max_size=4), max_size=4),
    junk,
    numbers,
)
arguments = st.one_of(
    st.fixed_dictionaries({"bbox_2d": boxes}, optional={"label": st.one_of(st.text(max_size=20), junk)}),
    st.dictionaries(st.text(max_size=8), boxes, max_size=3),
    st.lists(numbers, max_size=4),
    junk,
)


def _tool(cls, name, prop, config):
    from verl.tools.schemas import OpenAIFunctionToolSchema

    schema = OpenAIFunctionToolSchema.model_validate(
        {"type": "function", "function": {"name": name, "description": "d", "parameters": {"type": "object", "properties": {prop: {"type": "string", "description": "d"}}, "required": [prop]}}}
    )
    return cls(config, schema)


CROP = {
    frame: _tool(CropZoomTool, "crop", "bbox_2d", {"type": "native", "coordinate_frame": frame, "crop_max_pixels": 200704})
    for frame in ("model_pixels", "normalized_1000", "relative", "source_pixels")
}
RESIZE = _tool(ResizeTool, "resize_image", "action", {"type": "native", "max_pixels": 200704})
LOOP = asyncio.new_event_loop()


def _execute(tool, params):
    sources = {"source_images": [SOURCE], "seen_sizes": [SEEN], "full_sizes": [(800, 450)]}
    return LOOP.run_until_complete(call_tool(tool, params, sources))


@settings(max_examples=3000, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(frame=st.sampled_from(sorted(CROP)), params=arguments)
def test_crop_tool_never_raises(frame, params):
    response, reward, info = _execute(CROP[frame], params)
    assert reward == 0.0 and isinstance(info["valid"], bool)
    if info["valid"]:
        (crop,) = response.image
        x1, y1, x2, y2 = info["source_box"]
        assert 0 <= x1 < x2 <= SOURCE.width and 0 <= y1 < y2 <= SOURCE.height
        assert crop.size == tuple(info["output_size"]) and all(side % 28 == 0 for side in crop.size)
        assert math.isfinite(info["zoom"])
    else:
        assert response.image is None and response.text.startswith("Error: ")


@settings(max_examples=500, deadline=None, derandomize=True)
@given(params=st.one_of(arguments, st.fixed_dictionaries({"action": st.one_of(st.text(max_size=8), junk, numbers)})))
def test_resize_tool_never_raises(params):
    response, _, info = _execute(RESIZE, params)
    assert info["valid"] == (isinstance(params, dict) and params.get("action") == "resize")
    assert (response.image is not None) == info["valid"]


# --------------------------------------------------------------------------------------------------------------------
# Sources of every size
# --------------------------------------------------------------------------------------------------------------------
#
# Real pixels are drawn up to MAX_DRAWN_PIXELS (12 MB of RGB), thin either way and down to 1 px. Larger sizes, up to
# bomb-sized ones, are PNG files that only *claim* a size: a header and no pixel data. PIL refuses a claim beyond its
# bomb limit when it opens the file, and the tool refuses any size check_source_size rejects before it decodes, so no
# example allocates the claimed pixels. A claim the tool would accept fails when its (absent) pixels are decoded; such
# claims are drawn only up to MAX_DRAWN_PIXELS, which is what that decode allocates.

MAX_DRAWN_PIXELS = 4_000_000
NAMED_SIZES = [(1, 1), (1, 200), (200, 1), (201, 1), (1, 201), (20000, 100), (20100, 100), (100, 20100)]


def usable_size(width, height):
    """The tools' contract for a source's size: pixels on both axes, at most 2 * PIL's bomb limit, aspect <= 200."""
    if width <= 0 or height <= 0:
        return False
    return width * height <= MAX_SOURCE_PIXELS and max(width, height) <= 200 * min(width, height)


def png_claiming(width, height):
    """A PNG file whose header says ``width x height`` RGB and that holds no pixel data."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


@st.composite
def drawn_sizes(draw):
    long = draw(st.integers(1, 20100))
    short = draw(st.integers(1, min(long, MAX_DRAWN_PIXELS // long)))
    return (long, short) if draw(st.booleans()) else (short, long)


png_side = st.integers(1, 2**31 - 1)  # PNG's own limit
claimed_sizes = st.one_of(
    st.tuples(png_side, png_side),  # almost always bomb-sized
    st.tuples(st.integers(MAX_SOURCE_PIXELS // 200, 2**31 - 1), st.integers(1, 200)),  # beyond the limit, or too thin
    st.tuples(st.integers(1, 2000), st.integers(1, 2000)),
).filter(lambda size: size[0] * size[1] <= MAX_DRAWN_PIXELS or not usable_size(*size))
sources = st.one_of(
    st.tuples(st.just("pixels"), st.one_of(st.sampled_from(NAMED_SIZES), drawn_sizes())),
    st.tuples(st.just("claimed"), st.one_of(st.sampled_from(NAMED_SIZES), claimed_sizes)),
    st.tuples(st.just("broken"), st.sampled_from([b"", b"not an image", 42, "/nonexistent/source.png", None])),
)


def _source_kwargs(kind, value):
    """(create_kwargs as the agent loop fills them, whether the source can be cropped, whether it can be re-rendered
    at its full size).

    The loop's seen and full sizes are the dataset's smart-resized view (here within RESIZE's own budget, so the resize
    tool returns exactly that size). Rounding to 28 px can push a source at the aspect limit past it (20000x100 is
    viewed at 6328x28): the crop tool maps boxes by scale and does not mind, the resize tool cannot return that view.
    """
    if kind == "broken":  # None: the trajectory has no source at all
        return {"source_images": [] if value is None else [value], "seen_sizes": [], "full_sizes": []}, False, False
    width, height = value
    try:  # any size will do for a source the tool refuses anyway
        seen_h, seen_w = smart_resize(height, width, max_pixels=448 * 448)
    except ValueError:
        seen_h, seen_w = 252, 448
    source = Image.new("RGB", (width, height), (90, 160, 20)) if kind == "pixels" else png_claiming(width, height)
    kwargs = {"source_images": [source], "seen_sizes": [(seen_w, seen_h)], "full_sizes": [(seen_w, seen_h)]}
    usable = kind == "pixels" and usable_size(width, height)
    event(f"{kind} source, {'usable' if usable else 'refused'}{', over 1 Mpx' if width * height > 10**6 else ''}")
    return kwargs, usable, usable and usable_size(seen_w, seen_h)


def _check_source_outcome(response, reward, info, usable, reaches_source):
    """A source the tool refuses gives a data-error turn iff the call got past the argument checks (the model's
    malformed call is still its own error); a usable source never does."""
    event("valid" if info.get("valid") else "data error" if info.get("data_error") else "model error")  # --hypothesis-show-statistics
    assert isinstance(response, ToolResponse) and reward == 0.0 and isinstance(info["valid"], bool)
    assert bool(info.get("data_error")) == (reaches_source and not usable), (info, usable, reaches_source)
    if info.get("data_error"):
        assert info["valid"] is False and response.image is None
        assert response.text.startswith("Error: the source image") and "cannot be used" in response.text
        assert response.text == f"Error: {info['error']}"
    elif not info["valid"]:
        assert response.image is None and response.text.startswith("Error: ")


fraction = st.floats(0, 1)


def _box_in(frame, fractions, seen_size, source_size):
    """A well-formed box at ``fractions`` (x1, y1, x2, y2 in 0..1, sorted) of the image as ``frame`` measures it."""
    width, height = {"normalized_1000": (1000, 1000), "relative": (1, 1), "model_pixels": seen_size, "source_pixels": source_size}[frame]
    (x1, x2), (y1, y2) = sorted(fractions[0::2]), sorted(fractions[1::2])
    return {"bbox_2d": [x1 * width, y1 * height, x2 * width, y2 * height]}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@settings(max_examples=1000, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(frame=st.sampled_from(sorted(CROP)), source=sources, fractions=st.tuples(fraction, fraction, fraction, fraction),
       hostile=st.booleans(), hostile_params=arguments)
def test_crop_tool_never_raises_whatever_the_source(frame, source, fractions, hostile, hostile_params):
    kwargs, usable, _ = _source_kwargs(*source)
    size = source[1] if source[0] != "broken" else (1, 1)
    params = hostile_params if hostile else _box_in(frame, fractions, (kwargs["seen_sizes"] or [size])[0], size)
    response, reward, info = LOOP.run_until_complete(call_tool(CROP[frame], params, kwargs))
    _check_source_outcome(response, reward, info, usable, isinstance(params, dict) and "bbox_2d" in params)
    if info["valid"]:
        (crop,) = response.image
        x1, y1, x2, y2 = info["source_box"]
        assert 0 <= x1 < x2 <= size[0] and 0 <= y1 < y2 <= size[1]
        assert crop.size == tuple(info["output_size"]) and all(side % 28 == 0 for side in crop.size)
        assert max(crop.size) <= 200 * min(crop.size)  # the processor accepts it


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(source=sources, hostile=st.booleans(), hostile_params=arguments)
def test_resize_tool_never_raises_whatever_the_source(source, hostile, hostile_params):
    kwargs, _, usable = _source_kwargs(*source)
    params = hostile_params if hostile else {"action": "resize"}
    response, reward, info = LOOP.run_until_complete(call_tool(RESIZE, params, kwargs))
    reaches_source = isinstance(params, dict) and params.get("action") == "resize"
    _check_source_outcome(response, reward, info, usable, reaches_source)
    assert info["valid"] == (usable and reaches_source)
    if info["valid"]:
        (image,) = response.image
        assert image.size == tuple(info["output_size"]) and all(side % 28 == 0 for side in image.size)
        assert image.width * image.height <= 200704 and max(image.size) <= 200 * min(image.size)
