"""The box and crop geometry in visionr3.tools.geometry: from a model-written ``bbox_2d`` to a source crop.

``plan_crop`` is the only code between text the policy wrote and ``PIL.Image.crop``/``resize``, so it has to
turn anything the model can emit into either a valid plan or a ``BoxError`` (which goes back to the model as its
error turn). Any other exception would take down a rollout. The tests cover:

- each helper against tables of expected values worked out by hand from the docstrings (the arithmetic is noted
  next to the less obvious rows);
- the rejection of malformed, non-finite, inverted, empty, out-of-image and over-elongated boxes;
- property tests that feed thousands of hostile boxes, sizes, frames and settings to ``plan_crop`` and check that
  only ``BoxError`` escapes and that every accepted plan is a valid, integer, in-image crop that covers the box.

``smart_resize`` has its own tests in tests/test_processing.py; here it only runs inside ``plan_crop`` and gives the
property tests realistic seen sizes.
The regression cases near the top and bottom (ints beyond float range, dict "boxes", huge zooms, rounding past the
aspect limit) are bugs these tests found and that are fixed.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from visionr3.tools.geometry import (
    COORDINATE_FRAMES,
    MAX_SOURCE_PIXELS,
    MIN_CROP_SIDE,
    BoxError,
    CropPlan,
    check_source_size,
    clamp_box,
    downsampled_size,
    expand_to_min_side,
    integer_box,
    num_image_tokens,
    parse_box,
    plan_crop,
    smart_resize,
    to_source_box,
    vlm_r3_zoom_scale,
)

SQUARE_100 = {"frame": "source_pixels", "seen_size": (100, 100), "source_size": (100, 100)}
QWEN_4X = {"frame": "model_pixels", "seen_size": (448, 336), "source_size": (1792, 1344)}


# --------------------------------------------------------------------------------------------------------------------
# parse_box
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,expected",
    [
        ([1, 2, 3, 4], (1.0, 2.0, 3.0, 4.0)),
        ((1.5, 2, 3.25, 4), (1.5, 2.0, 3.25, 4.0)),
        ([-10, -20.5, 30, 40], (-10.0, -20.5, 30.0, 40.0)),
        ([4, 3, 2, 1], (4.0, 3.0, 2.0, 1.0)),  # geometry is plan_crop's job, not parse_box's
        ([0, -0.0, 10**12, -(10**12)], (0.0, 0.0, 1e12, -1e12)),
        ([5e-324, 1e-300, 1e300, 1.7976931348623157e308], (5e-324, 1e-300, 1e300, 1.7976931348623157e308)),
    ],
)
def test_parse_box_accepts(raw, expected):
    box = parse_box(raw)
    assert box == expected
    assert type(box) is tuple and all(type(v) is float for v in box)


NOT_A_BOX = [
    pytest.param(None, id="None"),
    pytest.param(True, id="bool"),
    pytest.param(False, id="False"),
    pytest.param(5, id="int"),
    pytest.param(3.5, id="float"),
    pytest.param(float("nan"), id="bare-nan"),
    pytest.param("0,0,10,10", id="str"),
    pytest.param("[0, 0, 10, 10]", id="json-str"),
    pytest.param("abcd", id="str-len-4"),
    pytest.param(b"\x00\x01\x02\x03", id="bytes-len-4"),
    pytest.param({"x1": 0, "y1": 0, "x2": 10, "y2": 10}, id="dict-str-keys"),
    pytest.param({}, id="empty-dict"),
    pytest.param([], id="arity-0"),
    pytest.param([1], id="arity-1"),
    pytest.param([1, 2, 3], id="arity-3"),
    pytest.param([1, 2, 3, 4, 5], id="arity-5"),
    pytest.param([[0, 0], [10, 10]], id="nested-pairs"),
    pytest.param([[0, 0, 10, 10]], id="nested-single"),
    pytest.param([[0], [0], [10], [10]], id="nested-singletons"),
    pytest.param([float("nan"), 0, 10, 10], id="nan"),
    pytest.param([0, float("inf"), 10, 10], id="inf"),
    pytest.param([0, 0, float("-inf"), 10], id="-inf"),
    pytest.param([True, 0, 10, 10], id="bool-item"),
    pytest.param([0, 0, 10, False], id="false-item"),
    pytest.param([0, 0, "10", 10], id="str-item"),
    pytest.param([None, 0, 10, 10], id="none-item"),
    pytest.param([0, 0, 10, 1j], id="complex-item"),
    pytest.param([0, 0, {"x": 1}, 10], id="dict-item"),
    pytest.param(iter([0, 0, 10, 10]), id="iterator"),
    pytest.param((v for v in [0, 0, 10, 10]), id="generator"),
]


@pytest.mark.parametrize("raw", NOT_A_BOX)
def test_parse_box_rejects(raw):
    with pytest.raises(BoxError, match="bbox_2d"):
        parse_box(raw)


@pytest.mark.parametrize("raw", NOT_A_BOX)
def test_plan_crop_rejects_malformed(raw):
    with pytest.raises(BoxError, match="bbox_2d"):
        plan_crop(raw, **SQUARE_100)


def test_box_error_is_a_value_error():
    assert issubclass(BoxError, ValueError)


# JSON-parsed model output yields Python ints of any length: json.loads('[' + '9' * 400 + ', 0, 10, 10]').
@pytest.mark.parametrize(
    "raw", [[10**400, 0, 10, 10], [0, 0, -(10**309), 10], [0, 0, 10, 2**1024]], ids=["1e400", "-1e309", "2**1024"]
)
def test_parse_box_rejects_ints_beyond_float_range(raw):
    with pytest.raises(BoxError, match="bbox_2d"):
        parse_box(raw)


def test_plan_crop_rejects_json_int_beyond_float_range():
    import json

    raw = json.loads("[" + "9" * 400 + ", 0, 10, 10]")
    with pytest.raises(BoxError, match="bbox_2d"):
        plan_crop(raw, **SQUARE_100)


def test_parse_box_rejects_dict_with_numeric_keys():
    with pytest.raises(BoxError, match="bbox_2d"):
        parse_box({10: "x1", 20: "y1", 30: "x2", 40: "y2"})


# --------------------------------------------------------------------------------------------------------------------
# to_source_box
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "box,frame,seen,source,expected",
    [
        # 1792/448 = 1344/336 = 4
        ((10, 20, 110, 220), "model_pixels", (448, 336), (1792, 1344), (40, 80, 440, 880)),
        ((0, 0, 448, 336), "model_pixels", (448, 336), (1792, 1344), (0, 0, 1792, 1344)),
        ((-10, -10, 500, 400), "model_pixels", (448, 336), (1792, 1344), (-40, -40, 2000, 1600)),
        # per-axis scale: x by 1000/448, y by 500/448; the whole seen image maps onto the whole source
        ((0, 0, 448, 448), "model_pixels", (448, 448), (1000, 500), (0, 0, 1000, 500)),
        ((224, 112, 448, 224), "model_pixels", (448, 448), (1000, 500), (500, 125, 1000, 250)),
        # downscaled source (seen larger than source): 0.5 per axis
        ((100, 50, 200, 150), "model_pixels", (1000, 800), (500, 400), (50, 25, 100, 75)),
        # x by 1920/1000 = 1.92, y by 1080/1000 = 1.08; the seen size plays no part
        ((250, 500, 750, 1000), "normalized_1000", (1288, 728), (1920, 1080), (480, 540, 1440, 1080)),
        ((250, 500, 750, 1000), "normalized_1000", (1, 1), (1920, 1080), (480, 540, 1440, 1080)),
        ((0, 0, 1000, 1000), "normalized_1000", (28, 28), (37, 13), (0, 0, 37, 13)),
        ((0.25, 0.5, 0.75, 1.0), "relative", (1288, 728), (1920, 1080), (480, 540, 1440, 1080)),
        ((-0.5, 0, 1.5, 2), "relative", (1, 1), (100, 50), (-50, 0, 150, 100)),
        ((10.5, 20, 30, 40), "source_pixels", (448, 336), (1792, 1344), (10.5, 20, 30, 40)),
        ((-5, 3000, 7, 9000), "source_pixels", (1, 1), (10, 10), (-5, 3000, 7, 9000)),
    ],
)
def test_to_source_box(box, frame, seen, source, expected):
    assert to_source_box(box, frame, seen, source) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("frame", ["pixels", "", "Relative", "normalized", "normalized_1000 ", None])
def test_to_source_box_unknown_frame(frame):
    with pytest.raises(ValueError, match="unknown coordinate frame"):
        to_source_box((0, 0, 1, 1), frame, (10, 10), (10, 10))


@pytest.mark.parametrize("frame", ["pixels", "Relative"])
def test_plan_crop_unknown_frame_is_a_config_error(frame):
    with pytest.raises(ValueError, match="unknown coordinate frame") as info:
        plan_crop([0, 0, 10, 10], frame=frame, seen_size=(100, 100), source_size=(100, 100))
    assert not isinstance(info.value, BoxError)


# --------------------------------------------------------------------------------------------------------------------
# clamp_box, expand_to_min_side, integer_box
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "box,expected",
    [
        ((10, 10, 90, 40), (10, 10, 90, 40)),
        ((10.5, 2.25, 99.75, 49.5), (10.5, 2.25, 99.75, 49.5)),
        ((-5, -5, 120, 60), (0, 0, 100, 50)),
        ((-5, 10, 50, 60), (0, 10, 50, 50)),
        ((0, 0, 100, 50), (0, 0, 100, 50)),
        ((150, 10, 200, 20), (100, 10, 100, 20)),  # degenerate results are left for the caller to reject
        ((-20, -30, -10, -5), (0, 0, 0, 0)),
        ((60, 40, 10, 5), (60, 40, 10, 5)),  # no reordering
        ((-math.inf, -math.inf, math.inf, math.inf), (0, 0, 100, 50)),
    ],
)
def test_clamp_box(box, expected):
    assert clamp_box(box, 100, 50) == expected


@pytest.mark.parametrize(
    "box,min_side,expected",
    [
        ((10, 10, 50, 50), 28, (10, 10, 50, 50)),
        ((10, 10, 38, 38), 28, (10, 10, 38, 38)),  # exactly min_side: untouched
        # centre (45, 35), each side grown to 28: 45 +- 14, 35 +- 14
        ((40, 30, 50, 40), 28, (31, 21, 59, 49)),
        # only the short side grows: y centre 32.5 +- 14
        ((10, 30, 60, 35), 28, (10, 18.5, 60, 46.5)),
        # left border: x centre 4 -> [-10, 18] shifted to [0, 28]
        ((2, 30, 6, 40), 28, (0, 21, 28, 49)),
        # right border: x centre 97 -> [83, 111] shifted to [72, 100]
        ((95, 30, 99, 40), 28, (72, 21, 100, 49)),
        # top border: y centre 2 -> [-12, 16] shifted to [0, 28]
        ((40, 0, 50, 4), 28, (31, 0, 59, 28)),
        # bottom border: y centre 78 -> [64, 92] shifted to [52, 80]
        ((40, 76, 50, 80), 28, (31, 52, 59, 80)),
        ((0, 0, 1, 1), 28, (0, 0, 28, 28)),
        ((99, 79, 100, 80), 28, (72, 52, 100, 80)),
        # min_side beyond the image: capped at 100 x 80, i.e. the whole image
        ((40, 30, 50, 40), 150, (0, 0, 100, 80)),
        ((90, 70, 99, 79), 150, (0, 0, 100, 80)),
        # beyond the height only: width grows to 90 around 45, height capped at 80
        ((40, 30, 50, 40), 90, (0, 0, 90, 80)),
        ((40, 30, 50, 40), 0, (40, 30, 50, 40)),
    ],
)
def test_expand_to_min_side(box, min_side, expected):
    assert expand_to_min_side(box, min_side, 100, 80) == pytest.approx(expected)


@pytest.mark.parametrize(
    "box,expected",
    [
        ((10.2, 5.7, 20.1, 30.9), (10, 5, 21, 31)),
        ((10, 5, 20, 30), (10, 5, 20, 30)),
        ((0.0, 0.0, 100.0, 50.0), (0, 0, 100, 50)),
        ((99.5, 49.1, 99.9, 49.9), (99, 49, 100, 50)),
        ((0.999, 0.001, 1.001, 1.999), (0, 0, 2, 2)),
        ((-0.5, -3.2, 100.4, 50.01), (0, 0, 100, 50)),  # floor/ceil would leave the image: clipped
    ],
)
def test_integer_box(box, expected):
    result = integer_box(box, 100, 50)
    assert result == expected
    assert all(type(v) is int for v in result)


# --------------------------------------------------------------------------------------------------------------------
# vlm_r3_zoom_scale, check_source_size, downsampled_size, num_image_tokens
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "crop_area,source_area,expected",
    [
        (0, 100, 2.0),
        (12, 100, 2.0),
        (12.5, 100, 2.0),  # r = 0.125 is the start of the linear part, which is 2.0 there
        (31.25, 100, 1.5),  # 2 - (0.3125 - 0.125) / 0.375 = 2 - 0.5
        (25, 100, 2 - 0.125 / 0.375),  # 5/3
        (40, 100, 2 - 0.275 / 0.375),  # 1.2667
        (50, 100, 1.0),  # r = 0.5
        (100, 100, 1.0),
        (300, 100, 1.0),
        (448 * 448, 1792 * 1344, 2.0),  # r = 1/12
        (784, 2000, 1.288),  # 28 x 28 crop of 50 x 40: 2 - (0.392 - 0.125) / 0.375
    ],
)
def test_vlm_r3_zoom_scale(crop_area, source_area, expected):
    assert vlm_r3_zoom_scale(crop_area, source_area) == pytest.approx(expected, rel=1e-12)


def test_vlm_r3_zoom_scale_is_continuous_at_half():
    assert vlm_r3_zoom_scale(0.5 - 1e-12, 1.0) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("source_area", [0, -1, -100.0])
def test_vlm_r3_zoom_scale_rejects_empty_source(source_area):
    with pytest.raises(ValueError, match="source area"):
        vlm_r3_zoom_scale(10, source_area)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(a=st.floats(0, 1e9), b=st.floats(0, 1e9), source=st.floats(1e-3, 1e9))
def test_vlm_r3_zoom_scale_is_bounded_and_monotone(a, b, source):
    small, large = sorted((a, b))
    assert 1.0 <= vlm_r3_zoom_scale(large, source) <= vlm_r3_zoom_scale(small, source) <= 2.0


@pytest.mark.parametrize(
    "width,height,kwargs",
    [
        (1792, 1344, {}),
        (1, 1, {}),
        (200, 1, {}),  # aspect exactly 200
        (1, 200, {}),
        (20000, 100, {}),
        (13377, 13377, {}),  # 178,944,129 <= 2 * 89,478,485
        (100, 100, {"max_pixels": 10_000}),
        (40, 10, {"max_aspect": 4}),
    ],
)
def test_check_source_size_accepts(width, height, kwargs):
    assert check_source_size(width, height, **kwargs) is None


@pytest.mark.parametrize(
    "width,height,kwargs,message",
    [
        (13378, 13378, {}, "exceeds the limit"),  # 178,970,884 > 178,956,970
        (20000, 20000, {}, "exceeds the limit"),
        (100, 101, {"max_pixels": 10_000}, "exceeds the limit"),
        (201, 1, {}, "aspect-ratio"),
        (1, 201, {}, "aspect-ratio"),
        (20001, 100, {}, "aspect-ratio"),
        (50, 10, {"max_aspect": 4}, "aspect-ratio"),
        (0, 10, {}, "no pixels"),
        (10, 0, {}, "no pixels"),
        (0, 0, {}, "no pixels"),
        (-1, 10, {}, "no pixels"),
    ],
)
def test_check_source_size_rejects(width, height, kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_source_size(width, height, **kwargs)


def test_max_source_pixels_matches_pil():
    from PIL import Image

    assert MAX_SOURCE_PIXELS == 2 * Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize(
    "width,height,factor,expected",
    [
        (1792, 1344, 0.5, (896, 672)),
        (1001, 999, 0.5, (500, 499)),  # floored
        (3, 1, 0.5, (1, 1)),  # at least one pixel
        (1, 1, 0.5, (1, 1)),
        (1001, 999, 1, (1001, 999)),
        (1000, 10, 0.25, (250, 2)),  # 2.5 floored
        (1000, 1000, 1e-9, (1, 1)),
    ],
)
def test_downsampled_size(width, height, factor, expected):
    result = downsampled_size(width, height, factor)
    assert result == expected
    assert all(type(v) is int for v in result)


@pytest.mark.parametrize("factor", [0, -0.5, 1.0000001, 2, math.nan, math.inf, -math.inf])
def test_downsampled_size_rejects_factor(factor):
    with pytest.raises(ValueError, match="downsample factor"):
        downsampled_size(100, 100, factor)


@pytest.mark.parametrize(
    "height,width,factor,expected",
    [(448, 448, 28, 256), (28, 28, 28, 1), (384, 672, 32, 12 * 21), (504, 308, 28, 18 * 11)],
)
def test_num_image_tokens(height, width, factor, expected):
    assert num_image_tokens(height, width, factor) == expected


@pytest.mark.parametrize("height,width,factor", [(450, 448, 28), (28, 32, 28), (476, 448, 32), (28, 28, 32)])
def test_num_image_tokens_rejects_unresized(height, width, factor):
    with pytest.raises(ValueError, match="smart_resize it first"):
        num_image_tokens(height, width, factor)


# --------------------------------------------------------------------------------------------------------------------
# plan_crop, end to end
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,kwargs,expected",
    [
        pytest.param(
            # x4 -> (400, 400, 800, 600), 400 x 200 >= 112; r = 80000 / 2408448 < 0.125 -> zoom 2;
            # smart_resize(800, 1600): 800/28 = 28.6 -> 812, 400/28 = 14.3 -> 392
            [100, 100, 200, 150], QWEN_4X, CropPlan((400, 400, 800, 600), (812, 392), 2.0), id="model-pixels-x4",
        ),
        pytest.param(
            # 5 x 3 seen px -> (400, 400, 420, 412); 28 seen px = 28 * 1792/448 = 112 source px:
            # x centre 410 +- 56, y centre 406 +- 56; 112 x 112 zoomed to 224 = 8 * 28
            [100, 100, 105, 103], QWEN_4X, CropPlan((354, 350, 466, 462), (224, 224), 2.0), id="min-side-in-seen-px",
        ),
        pytest.param(
            # no growth: 20 x 12 zoomed to 40 x 24 rounds to 28 x 28 < 4 tokens; scaled by sqrt(3136/960) = 1.807
            # and ceiled: 72.3 -> 84, 43.4 -> 56
            [100, 100, 105, 103], {**QWEN_4X, "min_side": 0}, CropPlan((400, 400, 420, 412), (84, 56), 2.0),
            id="min-side-0-upscaled-to-min-pixels",
        ),
        pytest.param(
            # (0, 0, 8, 8) grown to 112 at the top-left corner
            [0, 0, 2, 2], QWEN_4X, CropPlan((0, 0, 112, 112), (224, 224), 2.0), id="min-side-at-corner",
        ),
        pytest.param(
            [-100, -100, 1000, 1000], QWEN_4X, CropPlan((0, 0, 1792, 1344), (1792, 1344), 1.0), id="clamped-to-full",
        ),
        pytest.param(
            # x1.92, y1.08 -> (480, 540, 1440, 1080): 960 x 540 = 1/4 of the source -> zoom 2 - 0.125/0.375 = 5/3;
            # 1600 x 900 -> 57 * 28 = 1596, 32 * 28 = 896
            [250, 500, 750, 1000],
            {"frame": "normalized_1000", "seen_size": (1288, 728), "source_size": (1920, 1080)},
            CropPlan((480, 540, 1440, 1080), (1596, 896), 5 / 3),
            id="normalized-1000",
        ),
        pytest.param(
            # (100, 160, 300, 400), no zoom: 240 x 200 -> 9 * 28 = 252, 7 * 28 = 196
            [0.1, 0.2, 0.3, 0.5],
            {"frame": "relative", "seen_size": (1008, 812), "source_size": (1000, 800), "zoom": "none"},
            CropPlan((100, 160, 300, 400), (196, 252), 1.0),
            id="relative-zoom-none",
        ),
        pytest.param(
            # min side 28 * 1000/500 = 56 <= 89.8 x 60.3, rounded outwards to (10, 20, 101, 81) = 91 x 61;
            # fixed zoom 2 -> 182 x 122 -> 6 * 32 = 192, 4 * 32 = 128
            [10.4, 20.6, 100.2, 80.9],
            {"frame": "source_pixels", "seen_size": (500, 400), "source_size": (1000, 800), "zoom": 2.0, "factor": 32},
            CropPlan((10, 20, 101, 81), (192, 128), 2.0),
            id="source-pixels-zoom-2-factor-32",
        ),
        pytest.param(
            # 4000 x 3000 rounds to 4000 x 3008 > 1024^2: beta = sqrt(12e6 / 1048576) = 3.383;
            # 4000/beta = 1182.4 -> 36 * 32 = 1152, 3000/beta = 886.8 -> 27 * 32 = 864
            [0, 0, 4000, 3000],
            {
                "frame": "source_pixels",
                "seen_size": (4000, 3000),
                "source_size": (4000, 3000),
                "zoom": "none",
                "factor": 32,
                "max_pixels": 1024 * 1024,
            },
            CropPlan((0, 0, 4000, 3000), (1152, 864), 1.0),
            id="pixel-budget-factor-32",
        ),
        pytest.param(
            # grown to (1, 1, 29, 29); r = 784/2000 = 0.392 -> zoom 1.288; 36 x 36 -> 28 x 28 < 4 tokens -> 56 x 56
            [10, 10, 20, 20],
            {"frame": "source_pixels", "seen_size": (50, 40), "source_size": (50, 40)},
            CropPlan((1, 1, 29, 29), (56, 56), 1.288),
            id="small-source",
        ),
        pytest.param(
            # clamped to (0, 0, 40, 30); r = 0.12 -> zoom 2; 80 x 60 -> 3 * 28 = 84, 2 * 28 = 56
            [-50, -50, 40, 30], SQUARE_100, CropPlan((0, 0, 40, 30), (84, 56), 2.0), id="negative-partly-inside",
        ),
        pytest.param(
            # -1e308 * 100 and 1e308 * 100 overflow to -inf/inf, then clamp to the whole image; 100 -> 4 * 28
            [-1e308, -1e308, 1e308, 1e308],
            {**SQUARE_100, "frame": "relative"},
            CropPlan((0, 0, 100, 100), (112, 112), 1.0),
            id="overflow-to-inf-clamped",
        ),
        pytest.param(
            # height grown to 28 at the top: 2800 / 28 = 100, exactly the limit; 5600 x 56 = 200 x 2 tokens
            [0, 0, 2800, 10],
            {"frame": "source_pixels", "seen_size": (4000, 1000), "source_size": (4000, 1000)},
            CropPlan((0, 0, 2800, 28), (5600, 56), 2.0),
            id="aspect-exactly-100",
        ),
        pytest.param(
            # model_pixels with per-axis scales 1000/448 and 500/448: the whole seen image is the whole source
            [0, 0, 448, 448],
            {"frame": "model_pixels", "seen_size": (448, 448), "source_size": (1000, 500), "zoom": "none"},
            CropPlan((0, 0, 1000, 500), (1008, 504), 1.0),
            id="anisotropic-full",
        ),
    ],
)
def test_plan_crop(raw, kwargs, expected):
    plan = plan_crop(raw, **kwargs)
    assert plan.source_box == expected.source_box
    assert plan.output_size == expected.output_size
    assert plan.zoom == pytest.approx(expected.zoom, rel=1e-12)
    assert all(type(v) is int for v in (*plan.source_box, *plan.output_size))


@pytest.mark.parametrize(
    "raw,kwargs",
    [
        pytest.param([20, 0, 10, 10], SQUARE_100, id="inverted-x"),
        pytest.param([0, 20, 10, 10], SQUARE_100, id="inverted-y"),
        pytest.param([10, 10, 10, 20], SQUARE_100, id="zero-width"),
        pytest.param([10, 10, 20, 10], SQUARE_100, id="zero-height"),
        pytest.param([0, 0, 0, 0], SQUARE_100, id="all-zero"),
        pytest.param([-50, -50, -10, -10], SQUARE_100, id="outside-negative"),
        pytest.param([-10, 10, 0, 20], SQUARE_100, id="touching-left-edge"),
        pytest.param([150, 10, 200, 20], SQUARE_100, id="beyond-width"),
        pytest.param([10, 150, 20, 200], SQUARE_100, id="beyond-height"),
        pytest.param([100, 0, 120, 10], SQUARE_100, id="touching-right-edge"),
        pytest.param([1.5, 0.1, 2.0, 0.2], {**SQUARE_100, "frame": "relative"}, id="relative-beyond"),
        pytest.param([0.5, 0.5, 0.5, 0.9], {**SQUARE_100, "frame": "relative"}, id="relative-zero-width"),
        pytest.param([1001, 0, 2000, 10], {**SQUARE_100, "frame": "normalized_1000"}, id="normalized-beyond"),
        pytest.param([448, 0, 500, 10], QWEN_4X, id="model-pixels-beyond"),
        # 5e-324 and 1e-323 times 1/1000 both underflow to 0
        pytest.param(
            [5e-324, 0, 1e-323, 1],
            {"frame": "normalized_1000", "seen_size": (1, 1), "source_size": (1, 1)},
            id="underflow-to-empty",
        ),
        # both x times 100 overflow to inf
        pytest.param([1e308, 0, 1.5e308, 1], {**SQUARE_100, "frame": "relative"}, id="overflow-to-empty"),
        # height grown to 28: 4000 / 28 = 143 > 100
        pytest.param(
            [0, 0, 4000, 10],
            {"frame": "source_pixels", "seen_size": (4000, 1000), "source_size": (4000, 1000)},
            id="too-elongated-after-growth",
        ),
        pytest.param([0, 0, 50, 0.4], {**SQUARE_100, "min_side": 0}, id="too-elongated-no-growth"),
        pytest.param([0, 0, 1, 30], {**SQUARE_100, "min_side": 0, "max_aspect": 20}, id="custom-max-aspect"),
    ],
)
def test_plan_crop_rejects_geometry(raw, kwargs):
    with pytest.raises(BoxError, match="bbox_2d"):
        plan_crop(raw, **kwargs)


def test_plan_crop_message_echoes_the_box():
    with pytest.raises(BoxError) as info:
        plan_crop([150, 10.123, 200, 20], **SQUARE_100)
    assert "[150, 10.12, 200, 20]" in str(info.value)


@pytest.mark.parametrize("zoom", [0, -1.0, math.nan, math.inf, "bogus"])
def test_plan_crop_rejects_bad_zoom_as_config_error(zoom):
    with pytest.raises(ValueError) as info:
        plan_crop([10, 10, 50, 50], **SQUARE_100, zoom=zoom)
    assert not isinstance(info.value, BoxError)


def test_plan_crop_huge_finite_zoom():
    with pytest.raises(ValueError):
        plan_crop([10, 10, 50, 50], **SQUARE_100, zoom=1e308)


def test_plan_crop_accepted_aspect_survives_rounding():
    # height 200 spanning [0.5, 200.5] passes max_aspect=200, is rounded out to 1 x 201 and smart_resize refuses 201;
    # either a plan or a BoxError is fine, smart_resize's plain ValueError is not
    try:
        plan_crop(
            [0, 0.5, 1, 200.5],
            frame="source_pixels",
            seen_size=(300, 300),
            source_size=(300, 300),
            min_side=0,
            max_aspect=200,
            zoom="none",
        )
    except BoxError:
        pass


@pytest.mark.parametrize("source", [(20000, 20000), (201, 1), (0, 10)])
def test_plan_crop_rejects_bad_source_as_config_error(source):
    with pytest.raises(ValueError) as info:
        plan_crop([0, 0, 1, 1], frame="relative", seen_size=(448, 448), source_size=source)
    assert not isinstance(info.value, BoxError)


def test_plan_crop_default_min_side_is_one_token():
    assert MIN_CROP_SIDE == 28
    plan = plan_crop([10, 10, 11, 11], frame="model_pixels", seen_size=(448, 448), source_size=(448, 448))
    assert plan.source_box == (0, 0, 28, 28)  # centre 10.5 +- 14 shifted to the left/top border


@pytest.mark.parametrize("frame", COORDINATE_FRAMES)
def test_plan_crop_min_side_is_measured_in_seen_pixels_in_every_frame(frame):
    # a point-sized box at the source centre (1000, 500): 28 seen px of 500 x 250 = 112 source px of 2000 x 1000
    centre = {"model_pixels": (250, 125), "normalized_1000": (500, 500), "relative": (0.5, 0.5)}
    cx, cy = centre.get(frame, (1000, 500))
    eps = {"relative": 1e-4, "normalized_1000": 0.1}.get(frame, 0.05)
    plan = plan_crop(
        [cx - eps, cy - eps, cx + eps, cy + eps], frame=frame, seen_size=(500, 250), source_size=(2000, 1000)
    )
    assert plan.source_box == (944, 444, 1056, 556)


# --------------------------------------------------------------------------------------------------------------------
# Property tests: hostile input to plan_crop
# --------------------------------------------------------------------------------------------------------------------

EXTREMES = [
    0,
    -0.0,
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    1e-300,
    1e300,
    -1e300,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    10**300,
    -(10**300),
    2**53 + 1,
    math.nan,
    math.inf,
    -math.inf,
]
coordinates = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**12), 10**12),
    st.sampled_from(EXTREMES),
)
junk = st.one_of(
    st.text(max_size=6), st.booleans(), st.none(), st.binary(max_size=4), st.complex_numbers(max_magnitude=1e3)
)
hostile_boxes = st.one_of(
    st.lists(coordinates, min_size=4, max_size=4),
    st.tuples(coordinates, coordinates, coordinates, coordinates),
    st.lists(st.one_of(coordinates, junk), min_size=4, max_size=4),
    st.lists(coordinates, max_size=9).filter(lambda xs: len(xs) != 4),
    st.lists(st.lists(coordinates, max_size=4), min_size=1, max_size=4),
    st.dictionaries(st.text(max_size=3), coordinates, max_size=5),
    st.text(max_size=20),
    st.booleans(),
    st.none(),
    coordinates,
)


@st.composite
def plausible_boxes(draw, extent_w: float, extent_h: float):
    """Boxes of any size around the frame's extent, mostly overlapping it, as ints or floats; a few inverted."""

    def interval(extent: float) -> tuple[float, float]:
        start = draw(st.floats(-0.25 * extent, 1.1 * extent))
        length = draw(st.floats(0, 0.75 * extent, exclude_min=True))
        if extent > 50 and draw(st.booleans()):
            return round(start), round(start) + max(1, round(length))
        return start, start + length

    (x1, x2), (y1, y2) = interval(extent_w), interval(extent_h)
    if not draw(st.integers(0, 9)):
        x1, x2, y1, y2 = x2, x1, y2, y1
    return [x1, y1, x2, y2]


@st.composite
def source_sizes(draw):
    """(width, height) that check_source_size accepts: at most 20000 a side, aspect <= 200, under the bomb limit."""
    width = draw(st.integers(1, 20000))
    height = draw(st.integers(math.ceil(width / 200), min(20000, width * 200, MAX_SOURCE_PIXELS // width)))
    return width, height


@st.composite
def scenarios(draw):
    frame = draw(st.sampled_from(COORDINATE_FRAMES))
    factor = draw(st.sampled_from([28, 32]))
    source = draw(source_sizes())
    if draw(st.booleans()):
        seen_h, seen_w = smart_resize(source[1], source[0], factor)
        seen = (seen_w, seen_h)
    else:
        seen = (draw(st.integers(1, 8192)), draw(st.integers(1, 8192)))
    extent = {"model_pixels": seen, "normalized_1000": (1000, 1000), "relative": (1, 1), "source_pixels": source}
    raw = draw(plausible_boxes(*extent[frame]) if draw(st.integers(0, 2)) else hostile_boxes)
    budget = draw(st.sampled_from([(None, None), (4, 1280), (4, 64), (16, 16384), (256, 256)]))
    options = {
        "min_side": draw(st.one_of(st.just(MIN_CROP_SIDE), st.floats(0, 300))),
        "max_aspect": draw(st.one_of(st.just(100.0), st.floats(1, 100))),
        "zoom": draw(st.sampled_from(["vlm_r3", "vlm_r3", "none", 0.25, 0.5, 1.0, 1.5, 2.0, 3.0])),
        "factor": factor,
        "min_pixels": None if budget[0] is None else budget[0] * factor**2,
        "max_pixels": None if budget[1] is None else budget[1] * factor**2,
    }
    return raw, {"frame": frame, "seen_size": seen, "source_size": source, **options}


def check_plan(plan: CropPlan, raw, kwargs) -> None:
    sw, sh = kwargs["source_size"]
    seen_w, seen_h = kwargs["seen_size"]
    factor = kwargs["factor"]
    x1, y1, x2, y2 = plan.source_box
    assert all(type(v) is int for v in plan.source_box)
    assert 0 <= x1 < x2 <= sw and 0 <= y1 < y2 <= sh

    out_w, out_h = plan.output_size
    assert all(type(v) is int for v in plan.output_size)
    assert out_w >= factor and out_h >= factor and out_w % factor == 0 and out_h % factor == 0

    assert isinstance(raw, (list, tuple)) and len(raw) == 4
    mapped = to_source_box(parse_box(raw), kwargs["frame"], kwargs["seen_size"], kwargs["source_size"])
    clamped = clamp_box(mapped, sw, sh)
    tolerance = 1e-9 * max(sw, sh)
    assert x1 <= clamped[0] + tolerance and y1 <= clamped[1] + tolerance
    assert x2 >= clamped[2] - tolerance and y2 >= clamped[3] - tolerance

    side = max(kwargs["min_side"] * sw / seen_w, kwargs["min_side"] * sh / seen_h)
    assert x2 - x1 >= min(side, sw) - 1e-6 * sw
    assert y2 - y1 >= min(side, sh) - 1e-6 * sh

    grown = expand_to_min_side(clamped, side, sw, sh)
    grown_w, grown_h = grown[2] - grown[0], grown[3] - grown[1]
    assert max(grown_w, grown_h) / min(grown_w, grown_h) <= kwargs["max_aspect"]
    # outward rounding adds under one pixel at each end of the long side and never shrinks the short one
    assert max(x2 - x1, y2 - y1) / min(x2 - x1, y2 - y1) < kwargs["max_aspect"] + 2

    if kwargs["zoom"] == "vlm_r3":
        assert 1.0 <= plan.zoom <= 2.0
        assert plan.zoom == vlm_r3_zoom_scale((x2 - x1) * (y2 - y1), sw * sh)
    elif kwargs["zoom"] == "none":
        assert plan.zoom == 1.0
    else:
        assert plan.zoom == kwargs["zoom"]


def check_rejection(error: BoxError, raw, kwargs) -> str:
    """The docstring's reasons, in its order: a box is rejected only when one of them applies."""
    message = str(error)
    assert "bbox_2d" in message
    try:
        box = parse_box(raw)
    except BoxError:
        return "malformed"
    sw, sh = kwargs["source_size"]
    seen_w, seen_h = kwargs["seen_size"]
    x1, y1, x2, y2 = to_source_box(box, kwargs["frame"], kwargs["seen_size"], kwargs["source_size"])
    if x1 >= x2 or y1 >= y2:
        assert "empty or inverted" in message
        return "empty or inverted"
    clamped = clamp_box((x1, y1, x2, y2), sw, sh)
    if clamped[0] >= clamped[2] or clamped[1] >= clamped[3]:
        assert "outside the image" in message
        return "outside"
    side = max(kwargs["min_side"] * sw / seen_w, kwargs["min_side"] * sh / seen_h)
    grown = expand_to_min_side(clamped, side, sw, sh)
    width, height = grown[2] - grown[0], grown[3] - grown[1]
    assert max(width, height) / min(width, height) > kwargs["max_aspect"]
    assert "too elongated" in message
    return "too elongated"


@settings(max_examples=3000, deadline=None, derandomize=True)
@given(scenario=scenarios())
def test_plan_crop_hostile_boxes(scenario):
    raw, kwargs = scenario
    try:
        plan = plan_crop(raw, **kwargs)
    except BoxError as error:
        event("rejected: " + check_rejection(error, raw, kwargs))
        return
    event("accepted")
    check_plan(plan, raw, kwargs)


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(raw=hostile_boxes)
def test_parse_box_hostile(raw):
    try:
        box = parse_box(raw)
    except BoxError as error:
        assert "bbox_2d" in str(error)
        return
    assert isinstance(raw, (list, tuple)) and len(raw) == 4
    assert all(type(v) is float and math.isfinite(v) for v in box)
    assert box == tuple(float(v) for v in raw)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(
    source=source_sizes(),
    seen=st.tuples(st.integers(1, 8192), st.integers(1, 8192)),
    frame=st.sampled_from(COORDINATE_FRAMES),
)
def test_plan_crop_whole_frame_is_whole_source(source, seen, frame):
    sw, sh = source
    extent = {"model_pixels": seen, "normalized_1000": (1000, 1000), "relative": (1, 1), "source_pixels": source}[frame]
    try:
        plan = plan_crop([0, 0, *extent], frame=frame, seen_size=seen, source_size=source)
    except BoxError:
        assert max(sw, sh) / min(sw, sh) > 100
        return
    assert plan.source_box == (0, 0, sw, sh)
    assert plan.zoom == 1.0


@settings(max_examples=500, deadline=None, derandomize=True)
@given(width=st.integers(-2, 30000), height=st.integers(-2, 30000))
def test_source_size_limits_in_plan_crop(width, height):
    too_big = width > 0 and height > 0 and width * height > MAX_SOURCE_PIXELS
    too_elongated = width > 0 and height > 0 and max(width, height) / min(width, height) > 200
    invalid = width <= 0 or height <= 0 or too_big or too_elongated
    try:
        check_source_size(width, height)
    except ValueError:
        assert invalid
    else:
        assert not invalid
    try:
        plan = plan_crop([0.25, 0.25, 0.75, 0.75], frame="relative", seen_size=(448, 448), source_size=(width, height))
    except BoxError as error:
        assert not invalid and "too elongated" in str(error)
    except ValueError:
        assert invalid
    else:
        assert not invalid and plan.source_box[2] <= width and plan.source_box[3] <= height
