"""verl's STOCK ``tool_agent`` loop, run by verl's real AgentLoopWorker on CPU through our harness.

This pins the contract our own agent loops build on: what the worker hands the trainer after a multi-turn episode
with image-returning tools — the server sees the growing image list, tool turns are masked out of the loss, M-RoPE
position ids are 4-row, and every image (prompt + tool results) is in ``multi_modal_inputs`` with exactly as many
``<|image_pad|>`` tokens in ``input_ids`` as the processor's grids imply.
"""

import sys

import numpy as np
import pytest
import yaml
from PIL import Image
from verl.tools.base_tool import BaseTool
from verl.tools.schemas import ToolResponse

from visionr3.testing.agent_harness import compose_verl_config, dataset_row, run_agent_loop_worker
from visionr3.testing.scripted_server import ScriptedServer

TOOL_NAME = "show_patch"
TOOL_IMAGE_SIZE = (56, 56)  # the tiny Qwen2.5-VL's minimum (4 * 28 * 28 pixels): 4 image tokens
PROMPT_IMAGE_SIZE = (112, 84)  # 8 x 6 patches of 14 px: 12 image tokens after the 2 x 2 merge
PROMPT_LENGTH, RESPONSE_LENGTH = 1024, 512
CALL = f'<tool_call>\n{{"name": "{TOOL_NAME}", "arguments": {{}}}}\n</tool_call>'


class ImagePatchTool(BaseTool):
    """Returns a small image and the text "ok" for every call."""

    async def execute(self, instance_id, parameters, **kwargs):
        return ToolResponse(image=[Image.new("RGB", TOOL_IMAGE_SIZE, (0, 200, 0))], text="ok"), 0.0, {}


def write_tool_config(path):
    # verl imports class_name with importlib.util.find_spec unless the module is already in sys.modules. pytest's
    # importlib mode registers this test module there under __name__, so the class can stay in this file; if that
    # ever stops being true, move the class into a module under tmp_path and put tmp_path on sys.path.
    assert sys.modules.get(__name__) is not None and sys.modules[__name__].ImagePatchTool is ImagePatchTool
    config = {
        "tools": [
            {
                "class_name": f"{__name__}.ImagePatchTool",
                "config": {"type": "native"},
                "tool_schema": {
                    "type": "function",
                    "function": {
                        "name": TOOL_NAME,
                        "description": "Show a patch of the image.",
                        "parameters": {"type": "object", "properties": {}, "required": []},
                    },
                },
            }
        ]
    }
    path.write_text(yaml.safe_dump(config))
    return path


def mask_segments(ids, mask):
    """[(mask value, token ids)] for the runs of equal mask values."""
    segments = []
    for token_id, m in zip(ids, mask):
        if segments and segments[-1][0] == m:
            segments[-1][1].append(token_id)
        else:
            segments.append((m, [token_id]))
    return segments


@pytest.fixture(scope="module")
def rollout(tiny_model_dirs, tmp_path_factory):
    """Two concurrent trajectories: script 0 calls the tool twice, script 1 once; both then answer."""
    model_dir = tiny_model_dirs["qwen2_5_vl"]
    tool_config = write_tool_config(tmp_path_factory.mktemp("tools") / "tools.yaml")
    config = compose_verl_config(
        [
            f"actor_rollout_ref.model.path={model_dir}",
            f"actor_rollout_ref.rollout.multi_turn.tool_config_path={tool_config}",
            f"data.max_prompt_length={PROMPT_LENGTH}",
            f"data.max_response_length={RESPONSE_LENGTH}",
        ]
    )
    from visionr3.processing import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    scripts = [[CALL, CALL, "<answer>done</answer>"], [CALL, "<answer>done early</answer>"]]
    server = ScriptedServer(tokenizer, scripts, prompt_length=PROMPT_LENGTH, response_length=RESPONSE_LENGTH)
    rows = [
        dataset_row("What is shown?", [Image.new("RGB", PROMPT_IMAGE_SIZE, (200, 10, 10))], index=i)
        for i in range(2)
    ]
    out = run_agent_loop_worker(config, server, rows)
    # which output row replayed which script: by the final answer
    answers = [tokenizer.decode(out.batch["responses"][i]) for i in range(len(out))]
    script_of_row = [0 if "<answer>done</answer>" in a else 1 for a in answers]
    assert sorted(script_of_row) == [0, 1]
    return {"out": out, "server": server, "tokenizer": tokenizer, "script_of_row": script_of_row, "scripts": scripts}


def test_server_sees_the_growing_image_list(rollout):
    server = rollout["server"]
    server.assert_exhausted()
    by_script = server.calls_by_script()
    assert [c.num_images for c in by_script[0]] == [1, 2, 3]
    assert [c.num_images for c in by_script[1]] == [1, 2]
    for calls in by_script:
        assert len({c.request_id for c in calls}) == 1, "one request id per trajectory"
        assert all(size == TOOL_IMAGE_SIZE for c in calls for size in c.image_sizes[1:])
        lengths = [c.prompt_length for c in calls]
        assert lengths == sorted(lengths) and len(set(lengths)) == len(lengths), "the context only grows"
    assert by_script[0][0].request_id != by_script[1][0].request_id


def test_response_mask_trains_assistant_tokens_and_masks_tool_turns(rollout):
    out, tokenizer, server = rollout["out"], rollout["tokenizer"], rollout["server"]
    by_script = server.calls_by_script()
    for row, script_index in enumerate(rollout["script_of_row"]):
        valid = out.batch["attention_mask"][row, PROMPT_LENGTH:].bool()
        ids = out.batch["responses"][row][valid].tolist()
        mask = out.batch["response_mask"][row][valid].tolist()
        segments = mask_segments(ids, mask)
        calls = by_script[script_index]
        # assistant turn, tool turn, assistant turn, ..., assistant turn
        assert [m for m, _ in segments] == [1, 0] * (len(calls) - 1) + [1]
        trained = [seg for m, seg in segments if m == 1]
        assert trained == [list(c.response_ids) for c in calls], "mask 1 on exactly the generated tokens"
        for m, seg in segments:
            text = tokenizer.decode(seg)
            if m == 0:
                assert text.count("<tool_response>") == 1 and "</tool_response>" in text and "ok" in text
                assert text.count("<|image_pad|>") == 4 and text.endswith("<|im_start|>assistant\n")
                assert "<tool_call>" not in text
            else:
                assert "<tool_response>" not in text and text.endswith("<|im_end|>")
        # padding after the response is masked too
        assert out.batch["response_mask"][row][~valid].sum() == 0
        # log-probs: the scripted value on generated tokens, 0 on tool tokens
        log_probs = out.batch["rollout_log_probs"][row][valid]
        assert np.allclose(log_probs[out.batch["response_mask"][row][valid].bool()].numpy(), -0.1)
        assert log_probs[~out.batch["response_mask"][row][valid].bool()].abs().sum() == 0


def test_position_ids_are_mrope_with_a_text_row(rollout):
    out = rollout["out"]
    assert tuple(out.batch["position_ids"].shape) == (2, 4, PROMPT_LENGTH + RESPONSE_LENGTH)
    assert tuple(out.batch["input_ids"].shape) == (2, PROMPT_LENGTH + RESPONSE_LENGTH)


def test_every_image_is_in_multi_modal_inputs_and_matches_the_pad_tokens(rollout):
    out, tokenizer = rollout["out"], rollout["tokenizer"]
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    expected_images = {0: 3, 1: 2}  # prompt image + one per tool call
    for row, script_index in enumerate(rollout["script_of_row"]):
        inputs = out.non_tensor_batch["multi_modal_inputs"][row]
        grid = inputs["image_grid_thw"]
        assert grid.shape == (expected_images[script_index], 3)
        assert grid[0].tolist() == [1, PROMPT_IMAGE_SIZE[1] // 14, PROMPT_IMAGE_SIZE[0] // 14]
        assert all(g.tolist() == [1, TOOL_IMAGE_SIZE[1] // 14, TOOL_IMAGE_SIZE[0] // 14] for g in grid[1:])
        n_pad = int((out.batch["input_ids"][row] == image_pad).sum())
        assert n_pad == int(grid.prod(-1).sum()) // 4
        assert inputs["pixel_values"].shape[0] == int(grid.prod(-1).sum())


def test_turn_counts_and_passthrough_fields(rollout):
    out = rollout["out"]
    for row, script_index in enumerate(rollout["script_of_row"]):
        assistant_turns = len(rollout["scripts"][script_index])
        # verl counts num_turns = assistant turns + tool turns + 1
        assert out.non_tensor_batch["__num_turns__"][row] == assistant_turns + (assistant_turns - 1) + 1
        assert out.non_tensor_batch["agent_name"][row] == "tool_agent"
        assert out.non_tensor_batch["min_global_steps"][row] == 0
    assert sorted(out.non_tensor_batch["index"].tolist()) == [0, 1]
