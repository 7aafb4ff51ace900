"""The CPU/GPU image path: smart_resize, fetch_image parity with qwen-vl-utils, image decoding, the runtime shim."""

import base64
import io
import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from visionr3.processing import (
    fetch_image,
    fetched_size,
    image_size,
    open_image,
    prepare_runtime,
    process_vision_info,
    torchvision_usable,
)
from visionr3.tools.geometry import num_image_tokens, smart_resize


@pytest.mark.parametrize(
    "height,width,factor,min_pixels,max_pixels,expected",
    [
        (448, 448, 28, None, None, (448, 448)),
        (500, 300, 28, None, None, (504, 308)),  # rounded to the nearest multiple
        (4000, 3000, 28, 3136, 448 * 448, (504, 364)),  # scaled down by sqrt, floored
        (10, 10, 28, 56 * 56, 28 * 28 * 1280, (56, 56)),  # scaled up to min_pixels, ceiled
        (1080, 1920, 32, None, 256 * 32 * 32, (384, 672)),  # Qwen3-VL factor
        (13, 2000, 28, 4 * 28 * 28, 28 * 28 * 1280, (28, 1988)),
    ],
)
def test_smart_resize_table(height, width, factor, min_pixels, max_pixels, expected):
    assert smart_resize(height, width, factor, min_pixels, max_pixels) == expected


@pytest.mark.parametrize("bad", [(0, 10), (10, -1), (1, 500)])
def test_smart_resize_rejects(bad):
    with pytest.raises(ValueError):
        smart_resize(*bad, factor=28)


@settings(max_examples=500, deadline=None)
@given(
    height=st.integers(28, 9000),
    width=st.integers(28, 9000),
    factor=st.sampled_from([28, 32]),
    max_tokens=st.integers(4, 20000),
)
def test_smart_resize_properties(height, width, factor, max_tokens):
    if max(height, width) / min(height, width) > 200:
        return
    max_pixels = max_tokens * factor * factor
    min_pixels = 4 * factor * factor
    h, w = smart_resize(height, width, factor, min_pixels=min_pixels, max_pixels=max_pixels)
    assert h % factor == 0 and w % factor == 0 and h >= factor and w >= factor
    assert num_image_tokens(h, w, factor) == (h // factor) * (w // factor)
    rounded = max(factor, round(height / factor) * factor) * max(factor, round(width / factor) * factor)
    if rounded > max_pixels:
        # over budget: scaled down and floored, never above it (unless a side hit the one-token floor)
        assert h * w <= max_pixels or min(h, w) == factor
    elif rounded < min_pixels:
        assert h * w >= min_pixels  # under budget: scaled up and ceiled
    else:
        assert h * w == rounded
    # aspect ratio kept to within one factor of rounding on each side
    assert abs(h / w - height / width) <= (factor / min(h, w)) * (height / width + 1) + 1e-9


# qwen-vl-utils cannot be imported without torchvision. Its image functions do not use torchvision, so a parity
# check loads its source with an empty torchvision module in a separate interpreter (never in this process).
PARITY_SCRIPT = r"""
import json, sys, types
tv = types.ModuleType("torchvision"); tv.__version__ = "0.0"; tv.io = types.ModuleType("torchvision.io")
tv.transforms = types.ModuleType("torchvision.transforms"); tv.transforms.InterpolationMode = object
sys.modules.update({"torchvision": tv, "torchvision.io": tv.io, "torchvision.transforms": tv.transforms})
import numpy as np
from PIL import Image
from qwen_vl_utils import vision_process as qv
from visionr3 import processing
from visionr3.tools.geometry import smart_resize
rng = np.random.default_rng(0)
cases, mismatches = 0, []
for (h, w) in [(37, 50), (448, 448), (480, 640), (1000, 333), (2048, 1536), (3000, 4000), (57, 5000)]:
    for factor in (28, 32):
        for budget in [(None, None), (4 * 784, 256 * 784), (256 * 28 * 28, 1280 * 28 * 28)]:
            cases += 1
            theirs = qv.smart_resize(h, w, factor, *budget)
            ours = smart_resize(h, w, factor, *budget)
            if theirs != ours and min(theirs) > 0:
                mismatches.append(("smart_resize", h, w, factor, budget, theirs, ours))
            if min(theirs) == 0:
                continue
            img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
            ele = {"image": img}
            if budget[0]:
                ele.update(min_pixels=budget[0], max_pixels=budget[1])
            a = qv.fetch_image(dict(ele), image_patch_size=factor // 2)
            b = processing.fetch_image(dict(ele), patch_size=factor // 2)
            if a.size != b.size or a.tobytes() != b.tobytes():
                mismatches.append(("fetch_image", h, w, factor, budget, a.size, b.size))
print(json.dumps({"cases": cases, "mismatches": mismatches}))
"""


def test_parity_with_qwen_vl_utils():
    result = subprocess.run([sys.executable, "-c", PARITY_SCRIPT], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["cases"] == 42
    assert report["mismatches"] == []


def _png_bytes(image):
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_open_image_accepts_every_dataset_form(tmp_path):
    image = Image.new("RGB", (64, 48), (10, 200, 30))
    raw = _png_bytes(image)
    path = tmp_path / "x.png"
    path.write_bytes(raw)
    forms = [
        image,
        raw,
        str(path),
        path,
        f"file://{path}",
        "data:image/png;base64," + base64.b64encode(raw).decode(),
        {"bytes": raw, "path": None},
        {"bytes": None, "path": str(path)},
        {"type": "image", "image": image, "bytes": b"ignored when a decoded image is present"},
        {"type": "image_url", "image_url": {"url": str(path)}},
    ]
    for form in forms:
        decoded = open_image(form)
        assert decoded.mode == "RGB" and decoded.size == (64, 48), repr(form)[:60]
        assert decoded.getpixel((3, 3)) == (10, 200, 30)


def test_rgba_is_composited_on_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert open_image(rgba).getpixel((0, 0)) == (255, 255, 255)


def test_open_image_names_bad_input():
    with pytest.raises(ValueError, match="none of image/bytes"):
        open_image({"caption": "no image here"})
    with pytest.raises(ValueError, match="unsupported image reference"):
        open_image(3.5)


def test_fetch_image_respects_per_image_budget():
    image = Image.new("RGB", (2000, 1000))
    assert fetch_image(image, max_pixels=256 * 28 * 28).size == (616, 308)
    assert fetch_image({"image": image, "max_pixels": 64 * 28 * 28, "min_pixels": None}, max_pixels=10**7).size == (308, 140)
    assert fetch_image({"image": image, "resized_height": 280, "resized_width": 560}).size == (560, 280)


def test_image_size_reads_the_header_of_every_form_without_decoding(tmp_path, monkeypatch):
    image = Image.new("RGB", (64, 48), (10, 200, 30))
    raw = _png_bytes(image)
    path = tmp_path / "x.png"
    path.write_bytes(raw)
    forms = [
        raw, str(path), path, f"file://{path}", "data:image/png;base64," + base64.b64encode(raw).decode(),
        {"bytes": raw, "path": None}, {"bytes": None, "path": str(path)}, {"type": "image_url", "image_url": {"url": str(path)}},
    ]
    from PIL import ImageFile

    def refuse(self):
        raise AssertionError("image_size decoded pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    for form in forms:
        assert image_size(form) == (64, 48), repr(form)[:60]
    with pytest.raises(ValueError, match="unsupported image reference"):
        image_size(3.5)


@pytest.mark.parametrize(
    "options, budget",
    [
        ({}, {"max_pixels": 256 * 28 * 28}),
        ({"max_pixels": 64 * 28 * 28, "min_pixels": None}, {"max_pixels": 10**7}),
        ({"resized_height": 280, "resized_width": 560}, {}),
        ({}, {"min_pixels": 2000 * 2000}),
    ],
)
def test_fetched_size_is_the_size_fetch_image_returns(options, budget):
    image = Image.new("RGB", (2000, 1000))
    for patch_size in (14, 16):
        expected = fetch_image({"image": image, **options}, patch_size=patch_size, **budget).size
        assert fetched_size(image.size, options, patch_size=patch_size, **budget) == expected


def test_process_vision_info_orders_images_and_refuses_video():
    a, b = Image.new("RGB", (100, 100)), Image.new("RGB", (300, 200))
    messages = [
        {"role": "system", "content": "text only"},
        {"role": "user", "content": [{"type": "image", "image": a}, {"type": "text", "text": "q"}]},
        {"role": "tool", "content": [{"type": "image", "image": b}]},
    ]
    images = process_vision_info(messages, patch_size=14)
    assert [im.size for im in images] == [(112, 112), (308, 196)]
    assert process_vision_info([{"role": "user", "content": "no images"}]) is None
    with pytest.raises(NotImplementedError, match="video"):
        process_vision_info([{"role": "user", "content": [{"type": "video", "video": "v.mp4"}]}])


WITHOUT_TORCHVISION = """
import json, sys

sys.modules["torchvision"] = None  # as if not installed: `import` fails and find_spec says None
import visionr3.platform.transformers_hook as hook
hook.install()  # what the .pth file `make venv` writes there does in every process
import transformers.models.qwen2_vl as q, transformers.processing_utils as pu
from PIL import Image
from visionr3.processing import load_processor, prepare_runtime, torchvision_usable

first = q.Qwen2VLVideoProcessor
prepare_runtime(); prepare_runtime()
processor = load_processor(sys.argv[1])
features = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[Image.new("RGB", (64, 64), "red")])
try:
    processor.video_processor.preprocess(videos=[])
    refused = ""
except NotImplementedError as error:
    refused = str(error)
print(json.dumps({
    "usable": torchvision_usable(), "idempotent": q.Qwen2VLVideoProcessor is first,
    "stand_in": q.Qwen2VLVideoProcessor.__module__, "base": pu.transformers_module.BaseVideoProcessor.__module__,
    "image_processor": type(processor.image_processor).__name__, "grid": features["image_grid_thw"].tolist(),
    "refused": refused,
}))
"""


def test_machines_without_torchvision_get_the_images_only_stand_ins(tiny_model_dirs):
    """The project's venv has a torchvision that loads (docs/vllm-on-cpu.md), but a CPU-only torch install does not:
    there, the hook `make venv` would install (a .pth calling ``transformers_hook.install``) makes every Qwen-VL
    processor buildable with images-only video-processor stand-ins (idempotent, refusing videos) and the PIL image
    processor. Run in a subprocess where importing torchvision fails."""
    out = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCHVISION, str(tiny_model_dirs["qwen2_5_vl"])],
        capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()[-1]
    result = json.loads(out)
    assert result["usable"] is False and result["idempotent"]
    assert result["stand_in"] == "visionr3.processing" and result["base"] == "transformers.video_processing_utils"
    assert result["image_processor"] == "Qwen2VLImageProcessorPil" and result["grid"] == [[1, 4, 4]]
    assert "torchvision" in result["refused"]


def test_shared_resize_is_one_object_per_source_and_size_and_goes_with_its_source():
    import gc
    import weakref

    from visionr3.processing import MAX_VIEWS_PER_SOURCE, live_view_sources, shared_resize

    before = live_view_sources()
    source, other = Image.new("RGB", (640, 480), "red"), Image.new("RGB", (640, 480), "red")
    view = shared_resize(source, (320, 240), Image.Resampling.BICUBIC)
    assert shared_resize(source, (320, 240), Image.Resampling.BICUBIC) is view
    assert shared_resize(other, (320, 240), Image.Resampling.BICUBIC) is not view  # equal pixels, another object
    assert shared_resize(source, (640, 480), Image.Resampling.BICUBIC) is source  # already that size: no copy
    assert view.size == (320, 240) and live_view_sources() == before + 2

    first = weakref.ref(view)
    del view
    for side in range(MAX_VIEWS_PER_SOURCE + 2):  # bounded: the oldest view of a source goes first
        shared_resize(source, (100 + side, 100), Image.Resampling.BICUBIC)
    gc.collect()
    assert first() is None

    last = weakref.ref(shared_resize(source, (101, 100), Image.Resampling.BICUBIC))
    del source, other
    gc.collect()
    assert last() is None and live_view_sources() == before  # the memo entry went with its source


def test_fetch_image_shares_the_view_of_a_shared_source():
    from visionr3.processing import fetch_image

    source = Image.new("RGB", (1792, 1344), "white")
    item = {"type": "image", "image": source}
    assert fetch_image(item, max_pixels=150528) is fetch_image(item, max_pixels=150528)
