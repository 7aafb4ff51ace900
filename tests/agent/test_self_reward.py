"""Vision-SR1's self-reward pass (``visionr3_vision_sr1``) through verl's real ``AgentLoopWorker`` on CPU.

The scripted server stands in for the inference engine only: the second pass is a real second ``generate`` call that
the agent loop builds (text-only prompt from the policy's own description) and sends to the same server.
"""

import pytest

from visionr3.agent.loop import SELF_REWARD_PROMPT, description_status, mask_runs, question_text
from visionr3.config import config_path
from visionr3.processing import load_tokenizer
from visionr3.testing.agent_harness import compose_verl_config, dataset_row, run_agent_loop_worker
from visionr3.testing.conversations import marked_canvas
from visionr3.testing.scripted_server import ScriptedServer

QUESTION = "What colour is the small square?"
GOOD = "<description>A grey canvas with a small red square.</description> <think>It is red.</think> \\boxed{red}"


def run_sr1(model_dir, scripts, *, validate=False):
    config = compose_verl_config(
        [
            f"actor_rollout_ref.model.path={model_dir}",
            f"actor_rollout_ref.rollout.agent.agent_loop_config_path={config_path('agent_loop.yaml')}",
            "+data.max_pixels=50176",
            "actor_rollout_ref.rollout.calculate_log_probs=true",
        ]
    )
    tokenizer = load_tokenizer(model_dir)
    rollout = config.actor_rollout_ref.rollout
    server = ScriptedServer(tokenizer, scripts, prompt_length=rollout.prompt_length, response_length=rollout.response_length)
    canvas = marked_canvas(size=(448, 448), box=(300, 200, 316, 216))
    row = dataset_row(
        QUESTION + "<image> Describe, think, answer in \\boxed{}.", [canvas.image], agent_name="visionr3_vision_sr1",
        extra_info={"question": QUESTION}, ground_truth="red",
    )
    return tokenizer, server, run_agent_loop_worker(config, server, [row], validate=validate)


def test_second_pass_answers_from_the_description_without_the_image(tiny_model_dirs):
    model_dir = tiny_model_dirs["qwen2_5_vl"]
    tokenizer, server, out = run_sr1(model_dir, [[GOOD], ["<think>The description says red.</think> \\boxed{red}"]])

    assert len(server.calls) == 2
    first, second = server.calls
    assert first.num_images == 1 and second.num_images == 0  # the second pass never sees the image
    prompt = tokenizer.decode(list(second.prompt_ids))
    expected = SELF_REWARD_PROMPT.format(description="A grey canvas with a small red square.", question=QUESTION)
    assert expected in prompt and "<|image_pad|>" not in prompt
    assert second.sampling_params["temperature"] == 1.0 and second.sampling_params["top_p"] == 0.99
    assert second.sampling_params["max_tokens"] == 2048 and not second.sampling_params["logprobs"]

    extra = out.non_tensor_batch
    assert extra["self_reward_status"][0] == "answered"
    assert extra["self_answer"][0] == "<think>The description says red.</think> \\boxed{red}"
    assert extra["self_answer_tokens"][0] == len(second.response_ids)
    # Nothing of the second pass is in the trajectory: the response is exactly the first turn (+ <|im_end|>).
    ids = out.batch["responses"][0].tolist()
    valid = int(out.batch["attention_mask"][0, -len(ids):].sum())
    assert tuple(ids[:valid]) == first.response_ids
    assert list(extra["assistant_turns"][0]) == [tokenizer.decode(list(first.response_ids), skip_special_tokens=True)]


@pytest.mark.parametrize(
    "response, status",
    [
        ("<think>red</think> \\boxed{red}", "no_description"),
        ("<description>  </description><think>red</think> \\boxed{red}", "empty_description"),
        ("<description>the answer is \\boxed{red}</description><think>x</think> \\boxed{red}", "leaky_description"),
        ("<description>it says <answer>red</answer></description> \\boxed{red}", "leaky_description"),
    ],
)
def test_no_second_pass_without_a_usable_description(tiny_model_dirs, response, status):
    _, server, out = run_sr1(tiny_model_dirs["qwen2_5_vl"], [[response]])
    assert len(server.calls) == 1  # no request was made: the visual reward is 0 without a second pass
    assert out.non_tensor_batch["self_reward_status"][0] == status
    assert out.non_tensor_batch["self_answer"][0] is None


def test_validation_second_pass_is_greedy(tiny_model_dirs):
    _, server, out = run_sr1(tiny_model_dirs["qwen2_5_vl"], [[GOOD], ["\\boxed{red}"]], validate=True)
    assert server.calls[1].sampling_params["temperature"] == 0.0
    assert out.non_tensor_batch["self_reward_status"][0] == "answered"


def test_helpers():
    assert description_status(None) == "no_description"
    assert description_status("a red square") == "answered"
    assert mask_runs([0, 1, 1, 0, 0, 1, 0, 1]) == [(1, 3), (5, 6), (7, 8)]
    assert mask_runs([]) == []
    raw = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " What is it?"}]}]
    assert question_text({}, raw) == "What is it?"
    assert question_text({"question": "Q?"}, raw) == "Q?"
    assert question_text(None, [{"role": "user", "content": "<image>Which?"}]) == "Which?"
