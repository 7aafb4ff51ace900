"""The verl tool adapters: crops come from the full-resolution source, errors are text turns without images."""

import asyncio

import pytest
from PIL import Image, ImageDraw

from visionr3.tools.geometry import plan_crop
from visionr3.tools.image_tools import CropZoomTool, ResizeTool, call_tool

CROP_CONFIG = {"type": "native", "coordinate_frame": "model_pixels", "zoom": "vlm_r3", "crop_max_pixels": 1024 * 784}


def _schema(name, prop):
    from verl.tools.schemas import OpenAIFunctionToolSchema

    return OpenAIFunctionToolSchema.model_validate(
        {"type": "function", "function": {"name": name, "description": "d", "parameters": {"type": "object", "properties": {prop: {"type": "array", "description": "d"}}, "required": [prop]}}}
    )


def _gradient(width, height):
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for x in range(0, width, 8):
        draw.line([(x, 0), (x, height)], fill=(x % 256, (x // 256) % 256, 128))
    return image


def _call(tool, params, **create_kwargs):
    return asyncio.run(call_tool(tool, params, create_kwargs))


def test_crop_is_taken_from_the_source_not_the_seen_copy():
    source = _gradient(1792, 1344)
    seen = source.resize((448, 336))  # what the policy saw: 4x smaller
    tool = CropZoomTool(CROP_CONFIG, _schema("image_zoom_in_tool", "bbox_2d"))
    response, reward, info = _call(tool, {"bbox_2d": [100, 100, 200, 180], "label": "x"}, source_images=[source], seen_sizes=[seen.size])
    plan = plan_crop([100, 100, 200, 180], frame="model_pixels", seen_size=(448, 336), source_size=(1792, 1344), max_pixels=1024 * 784)
    assert info["valid"] and info["source_box"] == list(plan.source_box) == [400, 400, 800, 720]
    assert response.image[0].size == plan.output_size
    expected = source.crop(plan.source_box).resize(plan.output_size, resample=Image.Resampling.BICUBIC)
    assert response.image[0].tobytes() == expected.tobytes()
    assert response.text == "Zoomed in on the region [100, 100, 200, 180] (x)."


def test_dataset_reference_wins_over_prompt_image(tmp_path):
    path = tmp_path / "full.png"
    _gradient(800, 600).save(path)
    tool = CropZoomTool({**CROP_CONFIG, "coordinate_frame": "normalized_1000"}, _schema("crop", "bbox_2d"))
    response, _, info = _call(tool, {"bbox_2d": [0, 0, 500, 500]}, image=str(path), source_images=[Image.new("RGB", (10, 10))])
    assert info["source_box"] == [0, 0, 400, 300]


@pytest.mark.parametrize(
    "params,needle",
    [
        ({"bbox_2d": [5, 5, 1, 1]}, "inverted"),
        ({"bbox_2d": [1, 2, 3]}, "exactly 4"),
        ({"bbox_2d": "1,2,3,4"}, "list of 4"),
        ({"bbox_2d": [9000, 9000, 9500, 9500]}, "outside"),
        ({"box": [1, 2, 3, 4]}, "missing required argument bbox_2d"),
    ],
)
def test_bad_boxes_are_error_texts_without_images(params, needle):
    tool = CropZoomTool(CROP_CONFIG, _schema("image_zoom_in_tool", "bbox_2d"))
    response, _, info = _call(tool, params, source_images=[_gradient(448, 336)], seen_sizes=[(448, 336)])
    assert response.image is None and response.text.startswith("Error: ") and needle in response.text
    assert info["valid"] is False and "data_error" not in info  # the model's fault


def test_missing_source_is_reported_not_raised():
    tool = CropZoomTool(CROP_CONFIG, _schema("image_zoom_in_tool", "bbox_2d"))
    response, _, info = _call(tool, {"bbox_2d": [1, 2, 30, 40]}, source_images=[], seen_sizes=[])
    assert response.image is None and "no source image" in response.text and info["valid"] is False
    assert info["data_error"] is True


def _tools():
    return [CropZoomTool(CROP_CONFIG, _schema("image_zoom_in_tool", "bbox_2d")), ResizeTool({"type": "native"}, _schema("resize_image", "action"))]


ARGUMENTS = {"image_zoom_in_tool": {"bbox_2d": [0, 0, 50, 50]}, "resize_image": {"action": "resize"}}


@pytest.mark.parametrize("size", [(20100, 100), (201, 1), (1, 201), (100, 20100)])
@pytest.mark.parametrize("tool", _tools(), ids=lambda tool: tool.name)
def test_a_source_too_thin_for_the_vision_encoder_is_a_data_error_turn(tool, size):
    """check_source_size refuses these (aspect ratio above 200); the tool used to raise its ValueError."""
    width, height = size
    response, reward, info = _call(tool, ARGUMENTS[tool.name], source_images=[Image.new("RGB", size)], seen_sizes=[(448, 336)])
    expected = f"the source image cannot be used: image of {width}x{height} exceeds the aspect-ratio limit of 200"
    assert (response.text, response.image, reward) == (f"Error: {expected}", None, 0.0)
    assert info == {"valid": False, "error": expected, "data_error": True}


def _png(path, size, payload=True):
    Image.new("RGB", size, (200, 30, 30)).save(path)
    if not payload:  # keep the header (the size), drop the pixels
        data = path.read_bytes()
        path.write_bytes(data[: data.index(b"IDAT") - 4] + data[-12:])
    return str(path)


def _file(path, data):
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("tool", _tools(), ids=lambda tool: tool.name)
@pytest.mark.parametrize(
    "make_source,needle",
    [
        (lambda tmp: str(tmp / "absent.png"), "could not be loaded (FileNotFoundError"),
        (lambda tmp: _file(tmp / "junk.png", b"not a png"), "could not be loaded (UnidentifiedImageError"),
        (lambda tmp: _png(tmp / "truncated.png", (64, 48), payload=False), "its 64x48 pixels could not be decoded"),
        (lambda tmp: _png(tmp / "thin.png", (20100, 100)), "image of 20100x100 exceeds the aspect-ratio limit of 200"),
        (lambda tmp: {"bytes": b"\x89PNG"}, "could not be loaded"),
        (lambda tmp: 42, "could not be loaded (ValueError: unsupported image reference of type int)"),
    ],
    ids=["missing-file", "not-an-image", "truncated", "thin-file", "truncated-bytes", "not-a-reference"],
)
def test_an_unusable_dataset_reference_is_a_data_error_turn(tool, make_source, needle, tmp_path):
    """The row's own ``create_kwargs.image`` (which wins over the prompt image) names a source the tool cannot use."""
    response, _, info = _call(tool, ARGUMENTS[tool.name], image=make_source(tmp_path), source_images=[_gradient(448, 336)], seen_sizes=[(448, 336)])
    assert response.image is None and response.text.startswith("Error: the source image cannot be used: ")
    assert needle in response.text and info["data_error"] is True and info["valid"] is False


def test_resize_refuses_a_view_the_processor_would_refuse():
    """A 20000x100 source is at the aspect limit (200); squeezed into 200,704 pixels it rounds to 6328x28 (226)."""
    source = Image.new("RGB", (20000, 100))
    for config, full in [({"output": "original", "max_pixels": 200704}, []), ({"output": "full"}, [(6328, 28)])]:
        tool = ResizeTool({"type": "native", **config}, _schema("resize_image", "action"))
        response, _, info = _call(tool, {"action": "resize"}, source_images=[source], full_sizes=full)
        assert response.image is None and info["data_error"] is True and "6328x28" in response.text, response.text
    tool = ResizeTool({"type": "native", "output": "original"}, _schema("resize_image", "action"))
    response, _, info = _call(tool, {"action": "resize"}, source_images=[source])  # the default budget fits it
    assert info["valid"] and max(response.image[0].size) <= 200 * min(response.image[0].size)


def test_resize_renders_the_source_at_full_size_not_an_upscale():
    source = _gradient(1600, 1200)
    low = source.resize((400, 300))
    tool = ResizeTool({"type": "native", "output": "full", "max_pixels": 4194304}, _schema("resize_image", "action"))
    response, _, info = _call(tool, {"action": "resize"}, source_images=[source], seen_sizes=[(392, 308)], full_sizes=[(800, 600)])
    assert response.image[0].size == (812, 588)  # smart_resize(600, 800) with factor 28
    expected = source.resize((812, 588), resample=Image.Resampling.LANCZOS)
    assert response.image[0].tobytes() == expected.tobytes()
    upscaled = low.resize((812, 588), resample=Image.Resampling.LANCZOS)
    assert response.image[0].tobytes() != upscaled.tobytes()


def test_resize_rejects_other_actions():
    tool = ResizeTool({"type": "native"}, _schema("resize_image", "action"))
    response, _, info = _call(tool, {"action": "zoom"}, source_images=[_gradient(64, 64)])
    assert response.image is None and "the only action is \"resize\"" in response.text


def test_tool_yamls_load_through_verl(tmp_path):
    from verl.tools.tool_registry import initialize_tools_from_config

    from visionr3.config import config_path

    for name, cls in [("crop_zoom.yaml", CropZoomTool), ("crop_zoom_qwen3.yaml", CropZoomTool), ("resize.yaml", ResizeTool)]:
        tools = initialize_tools_from_config(str(config_path("tools", name)))
        assert len(tools) == 1 and isinstance(tools[0], cls)
    assert initialize_tools_from_config(str(config_path("tools", "resize.yaml")))[0].name == "resize_image"



@pytest.mark.parametrize("name", ["crop_zoom.yaml", "crop_zoom_qwen3.yaml", "resize.yaml"])
def test_loading_our_tools_prints_no_schema(name, capfd):
    """verl 0.9.1's ``BaseTool.__init__`` prints the tool's whole schema as indented JSON, once per construction:
    every agent-loop worker, verl's dataset (its prompt-length filter loads the tools too), the demo's warm-up and
    ``visionr3 eval`` build them, so the JSON landed in the demo's and eval's console, even for Vision-SR1, whose
    config inherits the crop tool. ``load_all_tools`` is what verl's AgentLoopWorker and RLHFDataset call."""
    import json

    from verl.tools.base_tool import BaseTool
    from verl.tools.tool_registry import load_all_tools

    from visionr3.config import config_path

    (tool,) = load_all_tools(tool_config_path=str(config_path("tools", name)), function_tool_path=None)
    dump = json.dumps(tool.tool_schema.model_dump(exclude_unset=True, exclude_none=True), indent=2)
    out, err = capfd.readouterr()
    assert dump not in out + err and f'"name": "{tool.name}"' not in out + err

    # What the check would see without our redirect (verl's own class): when this fails, verl has stopped printing
    # and the redirect in visionr3/tools/image_tools.py can go.
    BaseTool({}, tool.tool_schema)
    assert dump in capfd.readouterr().out

def test_seen_size_matches_the_processor_grid(processor):
    """Box coordinates are in the frame the processor produces: our seen_size must equal its grid."""
    from visionr3.processing import seen_size

    patch = processor.image_processor.patch_size
    for size in [(448, 336), (1000, 333), (37, 50), (3000, 2000), (640, 480)]:
        grid = processor.image_processor(images=[Image.new("RGB", size)])["image_grid_thw"][0]
        assert seen_size(processor, size) == (int(grid[2]) * patch, int(grid[1]) * patch), size
