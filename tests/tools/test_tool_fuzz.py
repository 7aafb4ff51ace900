"""Hostile arguments thrown at the verl tools themselves: every call returns a ToolResponse, nothing escapes."""

import asyncio
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

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
