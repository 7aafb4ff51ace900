"""``visionr3_agent`` through verl's real ``AgentLoopWorker`` on CPU, with a scripted token-in/token-out server.

Everything but the inference engine is real: verl's ppo_trainer config, AgentLoopWorker, ToolAgentLoop (which our loop
extends), the continuous-token builder, our chat template, processor, tools and dataset class, and verl's
post-processing into the training batch (masks, multi_modal_inputs, M-RoPE position ids).
"""

import asyncio
import gc
import io
import json
import weakref

import pytest
import torch
from PIL import Image

from visionr3.config import config_path
from visionr3.processing import fetch_image, load_processor, load_tokenizer
from visionr3.reward.score import compute_score
from visionr3.testing.agent_harness import compose_verl_config, dataset_row, run_agent_loop_worker
from visionr3.testing.conversations import marked_canvas
from visionr3.testing.scripted_server import ScriptedServer
from visionr3.tools.geometry import plan_crop

SOURCE_SIZE = (1792, 1344)
# The dataset shows the policy a 4x smaller view (448x336, 192 tokens), inside the tiny processor's budget.
DATA_MAX_PIXELS = {"qwen2_5_vl": 448 * 336, "qwen3_vl": 448 * 320}
TOOLS = {"qwen2_5_vl": "crop_zoom.yaml", "qwen3_vl": "crop_zoom_qwen3.yaml"}


def hermes_call(arguments, name="image_zoom_in_tool"):
    return f'<think>look closer</think>\n<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


def run(arch, model_dir, scripts, *, agent_name="visionr3_agent", tools=None, agent_yaml=None, extra=(), rows=None):
    config = compose_verl_config(
        [
            f"actor_rollout_ref.model.path={model_dir}",
            f"actor_rollout_ref.rollout.multi_turn.tool_config_path={config_path('tools', tools or TOOLS[arch])}",
            f"actor_rollout_ref.rollout.agent.agent_loop_config_path={agent_yaml or config_path('agent_loop.yaml')}",
            f"+data.max_pixels={DATA_MAX_PIXELS[arch]}",
            "data.max_response_length=3072",
            "actor_rollout_ref.rollout.calculate_log_probs=true",
            *extra,
        ]
    )
    tokenizer = load_tokenizer(model_dir)
    rollout = config.actor_rollout_ref.rollout
    server = ScriptedServer(tokenizer, scripts, prompt_length=rollout.prompt_length, response_length=rollout.response_length)
    canvas = marked_canvas(size=SOURCE_SIZE, box=(1200, 840, 1260, 900))
    rows = rows or [
        dataset_row("<image>What colour is the small square?", [canvas.image], agent_name=agent_name, index=i)
        for i in range(len(scripts))
    ]
    return canvas, tokenizer, server, run_agent_loop_worker(config, server, rows)


def masked_text(tokenizer, out, i, keep):
    ids = out.batch["responses"][i].tolist()
    mask = out.batch["response_mask"][i].tolist()
    valid = out.batch["attention_mask"][i, -len(ids):].tolist()
    return tokenizer.decode([t for t, m, v in zip(ids, mask, valid) if v and m == keep])


def field(out, key, i=0):
    return out.non_tensor_batch[key][i]


def test_crops_from_full_resolution_source(arch, model_dir):
    boxes = {"qwen2_5_vl": ([280, 190, 340, 250], [0, 0, 50, 50]), "qwen3_vl": ([625, 590, 760, 780], [0, 0, 100, 100])}[arch]
    script = [hermes_call({"bbox_2d": boxes[0], "label": "square"}), hermes_call({"bbox_2d": boxes[1]}), "<answer>red</answer>"]
    canvas, tokenizer, server, out = run(arch, model_dir, [script])
    processor = load_processor(model_dir)

    # The server saw 1, then 2, then 3 images.
    assert [call.num_images for call in server.calls] == [1, 2, 3]

    # The first image is the dataset's view; every crop is what the geometry predicts on the *source*.
    factor = processor.image_processor.patch_size * 2
    seen = fetch_image(canvas.image, patch_size=factor // 2, max_pixels=DATA_MAX_PIXELS[arch])
    assert server.calls[0].image_sizes == (seen.size,)
    tool_config = {"qwen2_5_vl": ("model_pixels", 802816), "qwen3_vl": ("normalized_1000", 1048576)}[arch]
    plans = [
        plan_crop(box, frame=tool_config[0], seen_size=seen.size, source_size=SOURCE_SIZE, factor=factor,
                  min_pixels=4 * factor * factor, max_pixels=tool_config[1])
        for box in boxes
    ]
    assert field(out, "crop_boxes") == [list(plan.source_box) for plan in plans]
    expected_images = [seen] + [
        canvas.image.crop(plan.source_box).resize(plan.output_size, Image.Resampling.BICUBIC) for plan in plans
    ]
    assert server.calls[2].image_sizes == tuple(image.size for image in expected_images)
    # ...and exactly those pixels reach the training batch.
    expected_inputs = processor.image_processor(images=expected_images, return_tensors="pt")
    mm_inputs = field(out, "multi_modal_inputs")
    assert torch.equal(mm_inputs["image_grid_thw"], expected_inputs["image_grid_thw"])
    assert torch.allclose(mm_inputs["pixel_values"], expected_inputs["pixel_values"])

    # Tool turns are context (mask 0), assistant turns are trained (mask 1).
    trained = masked_text(tokenizer, out, 0, keep=1)
    context = masked_text(tokenizer, out, 0, keep=0)
    assert trained.count("<tool_call>") == 2 and "<answer>red</answer>" in trained
    assert "<tool_response>" not in trained and "<|image_pad|>" not in trained
    assert context.count("<tool_response>") == 2 and context.count("<|vision_start|>") == 2

    # M-RoPE: (bsz, 4, L) — a text row, then t/h/w rows that match the processor's own rope index.
    position_ids = out.batch["position_ids"]
    input_ids, attention_mask = out.batch["input_ids"], out.batch["attention_mask"]
    assert position_ids.shape == (1, 4, input_ids.shape[1])
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((input_ids == image_pad).sum()) == int(mm_inputs["image_grid_thw"].prod(-1).sum()) // 4
    valid = attention_mask[0].bool()
    kwargs = {}
    if "mm_token_type_ids" in processor.model_input_names:
        kwargs["mm_token_type_ids"] = (input_ids[:, valid] == image_pad).long()
    rope, _ = processor.get_rope_index(
        input_ids=input_ids[:, valid], image_grid_thw=mm_inputs["image_grid_thw"], attention_mask=attention_mask[:, valid], **kwargs
    )
    assert torch.equal(position_ids[0, 1:, valid], rope[:, 0])

    # Per-trajectory metrics travel in extra_fields (verl hands them to the reward function as extra_info).
    assert field(out, "tool_calls") == 2 and field(out, "valid_tool_calls") == 2 and field(out, "invalid_tool_calls") == 0
    assert field(out, "num_images") == 3 and field(out, "tool_images") == 2
    assert field(out, "image_tokens") == int((input_ids == image_pad).sum())
    assert field(out, "__num_turns__") == 6


MALFORMED = [
    ("<tool_call>{bad json</tool_call>", "not valid JSON"),
    ('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2</tool_call>', "not valid JSON"),
    ('<tool_call>{"name": "no_such_tool", "arguments": {}}</tool_call>', "unknown tool 'no_such_tool'"),
    (hermes_call({"bbox_2d": [50, 50, 10, 10]}), "empty or inverted"),
    (hermes_call({"bbox_2d": [1, 2, 3]}), "exactly 4 numbers"),
    (hermes_call({"bbox_2d": ["a", 2, 3, 4]}), "only numbers"),
    (hermes_call({"bbox_2d": [9000, 9000, 9100, 9100]}), "outside the image"),
    (hermes_call({"label": "no box"}), "missing required argument bbox_2d"),
    ('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 3, 4]}', "not closed"),
]


def test_each_malformed_call_yields_its_error_turn(tiny_model_dirs):
    model_dir = tiny_model_dirs["qwen2_5_vl"]
    scripts = [[text, "<answer>unsure</answer>"] for text, _ in MALFORMED]
    _, tokenizer, server, out = run("qwen2_5_vl", model_dir, scripts)
    seen_scripts = set()
    for i in range(len(MALFORMED)):
        # Trajectories run concurrently and take scripts in the order they first call the server: find this one's.
        trained = masked_text(tokenizer, out, i, keep=1)
        (j,) = [j for j, (text, _) in enumerate(MALFORMED) if trained.startswith(text)]
        seen_scripts.add(j)
        needle = MALFORMED[j][1]
        context = masked_text(tokenizer, out, i, keep=0)
        assert f"<tool_response>\nError: " in context and needle in context, (i, context)
        assert field(out, "tool_calls", i) == 1 and field(out, "invalid_tool_calls", i) == 1
        assert field(out, "num_images", i) == 1, "a failed call must never add (or reuse) an image"
        assert field(out, "__num_turns__", i) == 4  # the episode went on after the error
    assert seen_scripts == set(range(len(MALFORMED)))
    assert all(call.num_images == 1 for call in server.calls)


def test_failed_call_after_a_good_one_does_not_reuse_the_crop(tiny_model_dirs):
    script = [hermes_call({"bbox_2d": [280, 190, 340, 250]}), hermes_call({"bbox_2d": [5, 5, 1, 1]}), "<answer>red</answer>"]
    _, tokenizer, server, out = run("qwen2_5_vl", tiny_model_dirs["qwen2_5_vl"], [script])
    assert [call.num_images for call in server.calls] == [1, 2, 2]
    assert field(out, "valid_tool_calls") == 1 and field(out, "invalid_tool_calls") == 1
    assert masked_text(tokenizer, out, 0, keep=0).count("<|vision_start|>") == 1


def test_an_unusable_source_is_an_error_turn_counted_as_a_data_error(tiny_model_dirs, tmp_path):
    """The prompt image is fine, but the source the row names for the tool (``create_kwargs.image``, which wins) is
    too thin for the vision encoder, or truncated: the model reads why, the episode goes on, and the call counts as
    a data error — not as an invalid call, which the reward stage would read as the model's doing."""
    thin = tmp_path / "thin.png"
    Image.new("RGB", (20100, 100), (200, 30, 30)).save(thin)
    truncated = tmp_path / "truncated.png"
    Image.new("RGB", (64, 48)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])  # the header (64x48) and a sliver of pixel data
    expected = {
        str(thin): "Error: the source image cannot be used: image of 20100x100 exceeds the aspect-ratio limit of 200",
        str(truncated): "Error: the source image cannot be used: its 64x48 pixels could not be decoded",
    }
    canvas = marked_canvas(size=SOURCE_SIZE)
    rows = [
        dataset_row("<image>q", [canvas.image], agent_name="visionr3_agent", index=i,
                    tools_kwargs={"image_zoom_in_tool": {"create_kwargs": {"image": path}}})
        for i, path in enumerate(expected)
    ]
    script = [hermes_call({"bbox_2d": [280, 190, 340, 250]}), "<answer>red</answer>"]
    _, tokenizer, server, out = run("qwen2_5_vl", tiny_model_dirs["qwen2_5_vl"], [script, script], rows=rows)
    for i in range(2):
        source = field(out, "tools_kwargs", i)["image_zoom_in_tool"]["create_kwargs"]["image"]
        context = masked_text(tokenizer, out, i, keep=0)
        assert f"<tool_response>\n{expected[source]}" in context, context
        assert field(out, "tool_calls", i) == 1 and field(out, "tool_data_errors", i) == 1
        assert field(out, "invalid_tool_calls", i) == 0 and field(out, "valid_tool_calls", i) == 0
        (error,) = field(out, "tool_errors", i)
        assert f"Error: {error}".startswith(expected[source])
        (call,) = [json.loads(entry) for entry in field(out, "tool_call_log", i)]
        assert call["data_error"] is True and call["valid"] is False and call["box"] is None
        assert field(out, "num_images", i) == 1 and field(out, "__num_turns__", i) == 4  # no image, episode went on
        assert "<answer>red</answer>" in masked_text(tokenizer, out, i, keep=1)
        extra_info = {key: field(out, key, i) for key in ("tool_calls", "valid_tool_calls", "invalid_tool_calls", "tool_data_errors")}
        score = asyncio.run(compute_score("src", "<answer>red</answer>", "red", extra_info))
        assert score["tool_data_errors"] == 1.0 and score["invalid_tool_calls"] == 0.0  # echoed as metrics


def test_image_limit_error_and_terminate(tiny_model_dirs, tmp_path):
    yaml = tmp_path / "loops.yaml"
    yaml.write_text(
        "- {name: capped_error, _target_: visionr3.agent.loop.VisionAgentLoop, max_images: 2}\n"
        "- {name: capped_stop, _target_: visionr3.agent.loop.VisionAgentLoop, max_images: 2, image_limit_action: terminate}\n"
    )
    call = hermes_call({"bbox_2d": [280, 190, 340, 250]})
    model_dir = tiny_model_dirs["qwen2_5_vl"]
    canvas = marked_canvas(size=SOURCE_SIZE)
    rows = [dataset_row("<image>q", [canvas.image], agent_name=name, index=i) for i, name in enumerate(["capped_error", "capped_stop"])]
    _, tokenizer, server, out = run(
        "qwen2_5_vl", model_dir, [[call, call, "<answer>a</answer>"], [call, call, "<answer>a</answer>"]], agent_yaml=yaml, rows=rows
    )
    assert list(out.non_tensor_batch["agent_name"]) == ["capped_error", "capped_stop"]
    assert field(out, "num_images", 0) == 2 and field(out, "image_limit_hits", 0) == 1
    assert "limit of 2 images" in masked_text(tokenizer, out, 0, keep=0)
    assert field(out, "num_images", 1) == 2 and field(out, "image_limit_hits", 1) == 1
    assert field(out, "__num_turns__", 1) == 4  # ended right after the second call, no error turn
    assert "<answer>" not in masked_text(tokenizer, out, 1, keep=1)


def test_visionthink_low_res_view_then_full_resolution_resize(tiny_model_dirs):
    model_dir = tiny_model_dirs["qwen2_5_vl"]
    script = [hermes_call({"action": "resize"}, name="resize_image"), "<answer>red</answer>"]
    canvas, tokenizer, server, out = run(
        "qwen2_5_vl", model_dir, [script], agent_name="visionr3_visionthink", tools="resize.yaml"
    )
    full = fetch_image(canvas.image, max_pixels=DATA_MAX_PIXELS["qwen2_5_vl"])  # 448x336, the dataset's view
    assert server.calls[0].image_sizes == ((224, 168),)  # halved per side
    assert server.calls[1].image_sizes == ((224, 168), full.size)
    processor = load_processor(model_dir)
    expected = canvas.image.resize(full.size, Image.Resampling.LANCZOS)  # from the source, not an upscale
    low = canvas.image.resize((224, 168), Image.Resampling.LANCZOS)
    pixel_values = field(out, "multi_modal_inputs")["pixel_values"]
    n_low = int(processor.image_processor(images=[low], return_tensors="pt")["image_grid_thw"].prod())
    assert torch.allclose(pixel_values[n_low:], processor.image_processor(images=[expected], return_tensors="pt")["pixel_values"])
    assert field(out, "valid_tool_calls") == 1 and field(out, "num_images") == 2


def test_vlm_r3_inline_box_inserts_the_crop_in_the_same_assistant_turn(tiny_model_dirs):
    model_dir = tiny_model_dirs["qwen2_5_vl"]
    script = [
        'The square is small. {"bbox_2d": [280, 190, 340, 250]} this text is never generated',
        'It is red.\n<answer>red</answer>',
    ]
    _, tokenizer, server, out = run("qwen2_5_vl", model_dir, [script], agent_name="visionr3_vlm_r3")
    assert [call.num_images for call in server.calls] == [1, 2]
    assert "]}" in server.calls[0].sampling_params["stop"]
    trained = masked_text(tokenizer, out, 0, keep=1)
    context = masked_text(tokenizer, out, 0, keep=0)
    assert 'The square is small. {"bbox_2d": [280, 190, 340, 250]}' in trained and "never generated" not in trained
    assert context.startswith("\n<|vision_start|>") and "<|im_start|>" not in context  # no user turn in between
    full = tokenizer.decode(out.batch["responses"][0][out.batch["attention_mask"][0, -out.batch["responses"].shape[1]:].bool()])
    # One assistant turn throughout; generation stopped at VLM-R3's "</answer>" stop string.
    assert full.count("<|im_start|>") == 0 and full.endswith("<answer>red</answer>")
    assert field(out, "crop_boxes") == [[1120, 760, 1360, 1000]] and field(out, "num_images") == 2


class _KeepingServer(ScriptedServer):
    """The scripted server, also holding weak references to every image it was sent (identity, not copies)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[list] = []

    async def generate(self, request_id, **kwargs):
        self.sent.append([weakref.ref(image) for image in kwargs.get("image_data") or []])
        return await super().generate(request_id, **kwargs)


def test_a_group_shares_one_decoded_source_and_its_view_and_keeps_no_crop(tiny_model_dirs):
    """n samples of one prompt, repeated by reference as the trainer repeats a batch, from a parquet-style row
    (``{"bytes": ...}``): one decoded source and one view for all of them; when the batch is gone, so are the source,
    the view, every crop and the view memo's entry."""
    from visionr3.processing import live_view_sources
    from visionr3.testing.agent_harness import build_gen_batch, make_agent_loop_worker

    model_dir, n = tiny_model_dirs["qwen2_5_vl"], 3
    config = compose_verl_config([
        f"actor_rollout_ref.model.path={model_dir}",
        f"actor_rollout_ref.rollout.multi_turn.tool_config_path={config_path('tools', 'crop_zoom.yaml')}",
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={config_path('agent_loop.yaml')}",
        f"+data.max_pixels={DATA_MAX_PIXELS['qwen2_5_vl']}",
        "data.max_response_length=3072",
    ])
    worker = make_agent_loop_worker(config, None)
    rollout = config.actor_rollout_ref.rollout
    script = [hermes_call({"bbox_2d": [280, 190, 340, 250]}), hermes_call({"bbox_2d": [10, 10, 90, 90]}), "<answer>red</answer>"]
    worker.llm_client = server = _KeepingServer(worker.tokenizer, [script] * n, prompt_length=rollout.prompt_length, response_length=rollout.response_length)
    png = io.BytesIO()
    marked_canvas(size=SOURCE_SIZE, box=(1200, 840, 1260, 900)).image.save(png, format="PNG")
    row = dataset_row("<image>What colour is the small square?", [{"bytes": png.getvalue()}], agent_name="visionr3_agent")
    source = weakref.ref(row["raw_prompt"][0]["content"][0]["image"])
    memo_before = live_view_sources()

    out = asyncio.run(worker.generate_sequences(build_gen_batch([row] * n)))
    assert list(out.non_tensor_batch["valid_tool_calls"]) == [2] * n
    first_views = {id(refs[0]()) for refs in server.sent}
    assert len(server.sent) == 3 * n and len(first_views) == 1, "every sample was sent the same view object"
    assert source().getim() is not None, "the shared source was decoded (once, in place)"
    crops = [ref for refs in server.sent for ref in refs[1:]]
    assert len(crops) == 3 * n  # 1 + 2 crops sent back per sample (turns 2 and 3)

    del out, row
    gc.collect()
    assert source() is None and server.sent[0][0]() is None, "the batch kept the source or its view"
    assert all(ref() is None for ref in crops), "a crop outlived its trajectory's batch"
    assert live_view_sources() == memo_before
