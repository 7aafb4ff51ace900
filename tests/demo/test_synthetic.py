"""The synthetic square task and its warm-up demonstrations: where the answer is (only in the pixels), where the
policy is told to look (the named quarter, which holds the whole square), and what the warm-up trains on."""

from __future__ import annotations

import random

import numpy as np
import pytest

from visionr3.demo.synthetic import COLOURS, QUARTERS, make_row, make_sample
from visionr3.demo.warmup import last_turn_mask, quadrant_box

BACKGROUND = (236, 236, 230)


def marked(sample) -> np.ndarray:
    """The (row, column) of every pixel that is not the canvas."""
    pixels = np.asarray(sample.image)
    return np.argwhere((pixels != BACKGROUND).any(axis=-1))


@pytest.mark.parametrize("seed", range(8))
def test_the_square_is_wholly_inside_the_named_quarter_in_its_colour(seed):
    sample = make_sample(random.Random(seed))
    points = marked(sample)
    x1, y1, x2, y2 = sample.box
    assert len(points) == (x2 - x1) * (y2 - y1) == 32 * 32
    assert points[:, 1].min() == x1 and points[:, 1].max() == x2 - 1 and points[:, 0].min() == y1 and points[:, 0].max() == y2 - 1
    assert (np.asarray(sample.image)[y1:y2, x1:x2] == COLOURS[sample.colour]).all()
    qx1, qy1, qx2, qy2 = quadrant_box(sample, sample.image.size)  # in source pixels here: the quarter itself
    assert qx1 <= x1 and x2 <= qx2 and qy1 <= y1 and y2 <= qy2, (sample.quarter, sample.box)


def test_every_quarter_and_colour_comes_up():
    samples = [make_sample(random.Random(seed)) for seed in range(64)]
    assert {s.quarter for s in samples} == set(QUARTERS) and {s.colour for s in samples} == set(COLOURS)


def test_the_quarter_box_in_the_seen_frame():
    sample = make_sample(random.Random(0))
    boxes = {quarter: quadrant_box(type(sample)(sample.image, sample.colour, sample.box, quarter), (224, 224)) for quarter in QUARTERS}
    assert boxes == {"top-left": [0, 0, 112, 112], "top-right": [112, 0, 224, 112],
                     "bottom-left": [0, 112, 112, 224], "bottom-right": [112, 112, 224, 224]}


@pytest.mark.parametrize("task", ["zoom", "sr1"])
def test_the_row_names_the_quarter_and_never_the_colour(task):
    """No leak: the prompt and the row's metadata name where to look, the colour is only in the image bytes (and in
    the ground truth)."""
    for seed in range(16):
        sample = make_sample(random.Random(seed))
        row = make_row(sample, index=seed, task=task)
        text = " ".join(str(v) for v in (row["prompt"], row["extra_info"], row["data_source"], row["agent_name"])).lower()
        assert f"the {sample.quarter} quarter" in text
        assert not any(colour in text for colour in COLOURS), text
        assert row["reward_model"]["ground_truth"] == sample.colour


def test_the_last_turn_mask_is_the_final_assistant_run():
    mask = [False, True, True, False, False, True, True, True, False]
    assert last_turn_mask(mask) == [False] * 5 + [True] * 3 + [False]
    assert last_turn_mask([False, False]) == [False, False]
    assert last_turn_mask([True, True]) == [True, True]


@pytest.mark.parametrize("task", ["zoom", "direct"])
def test_the_warmup_trains_and_saves_a_checkpoint(task, tmp_path):
    """Two steps of each learning-benchmark format on new demonstrations per step (``pool_batches=None``), the
    answer weighted: finite losses and a checkpoint transformers loads (the trainers' starting policies)."""
    import math

    from transformers import AutoModelForImageTextToText

    from visionr3.config import config_path
    from visionr3.demo.warmup import supervised_warmup
    from visionr3.testing.tiny_model import tiny_model_dir

    result = supervised_warmup(tiny_model_dir("qwen2_5_vl"), tmp_path / task, tool_config=config_path("tools", "crop_zoom.yaml"),
                               data_max_pixels=50176, steps=2, batch_size=2, lr=1e-3, task=task, answer_weight=3.0,
                               pool_batches=None, log_every=0)
    assert len(result["losses"]) == 2 and all(math.isfinite(loss) and loss > 0 for loss in result["losses"])
    AutoModelForImageTextToText.from_pretrained(tmp_path / task)


def test_a_phased_warmup_chains_its_phases_and_caches_each(tmp_path, monkeypatch):
    """Phase 2 starts from phase 1's weights (its cache key is their hash), and a second run trains nothing."""
    from safetensors.torch import load_file

    from visionr3.demo.run import phased_warmup
    from visionr3.testing.tiny_model import tiny_model_dir

    base = tiny_model_dir("qwen2_5_vl")  # built in the shared cache before it is redirected
    monkeypatch.setenv("VISIONR3_CACHE", str(tmp_path))
    phases = ({"steps": 1, "lr": 1e-3, "pool_batches": None}, {"steps": 1, "lr": 1e-3, "answer_weight": 3.0, "pool_batches": None})
    first, _ = phased_warmup(base, phases[:1], log_every=0)
    policy, trained = phased_warmup(base, phases, log_every=0)
    assert trained > 0 and policy != first
    assert sorted(p.name for p in (tmp_path / "warmup").iterdir() if p.is_dir()) == sorted([first.name, policy.name])
    before, after = load_file(first / "model.safetensors"), load_file(policy / "model.safetensors")
    assert any(not before[name].equal(after[name]) for name in before)
    again, trained_again = phased_warmup(base, phases, log_every=0)
    assert (again, trained_again) == (policy, 0.0)


def test_a_hesitant_zoom_warmup_mixes_direct_answers_with_the_tool_offered(tmp_path):
    """``direct_share``: that share of each ``zoom`` batch answers without a call, under the same prompt (the tool's
    schema offered) as the calls; the rest are the usual call, crop, answer."""
    import math
    import random

    from verl.tools.tool_registry import initialize_tools_from_config

    from visionr3.config import config_path
    from visionr3.demo.warmup import _Kit, draw_example, supervised_warmup
    from visionr3.processing import load_processor
    from visionr3.testing.tiny_model import tiny_model_dir

    (tool,) = initialize_tools_from_config(str(config_path("tools", "crop_zoom.yaml")))
    kit = _Kit(load_processor(tiny_model_dir("qwen2_5_vl")), tool, 50176)
    rng = random.Random(0)
    (direct,), direct_images = draw_example(kit, rng, (448, 448), "zoom", direct=True)
    (call,), call_images = draw_example(kit, rng, (448, 448), "zoom")
    assert (len(direct_images), len(call_images)) == (1, 2)  # the call's crop comes back as a second image
    prompt = lambda text: text.split("<|vision_start|>")[0]  # noqa: E731  (system prompt and tool schemas)
    reply = lambda text: text.split("<|im_start|>assistant\n", 1)[1]  # noqa: E731
    assert prompt(direct) == prompt(call) and tool.name in prompt(direct)
    assert "<tool_call>" not in reply(direct) and reply(direct).startswith("<answer>")
    assert reply(call).startswith("<tool_call>")

    result = supervised_warmup(tiny_model_dir("qwen2_5_vl"), tmp_path / "hesitant", tool_config=config_path("tools", "crop_zoom.yaml"),
                               data_max_pixels=50176, steps=1, batch_size=5, lr=1e-3, direct_share=0.6, pool_batches=None,
                               log_every=0)
    assert math.isfinite(result["losses"][0])
    for task, share, batch in (("direct", 0.6, 5), ("zoom", 0.05, 5), ("zoom", 0.95, 5)):  # no mix, or none in a batch
        with pytest.raises(ValueError, match="direct_share"):
            supervised_warmup(tiny_model_dir("qwen2_5_vl"), tmp_path / "unused", tool_config=config_path("tools", "crop_zoom.yaml"),
                              data_max_pixels=50176, task=task, direct_share=share, batch_size=batch)
