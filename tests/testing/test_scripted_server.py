"""ScriptedServer: vLLM-like replay of scripted assistant turns behind verl's ``server_manager.generate`` interface."""

import asyncio

import pytest
from PIL import Image
from verl.workers.rollout.replica import TokenOutput

from visionr3.testing.scripted_server import SCRIPTED_LOG_PROB, ScriptedServer, ScriptExhaustedError, ServerCall

PROMPT_LENGTH, RESPONSE_LENGTH = 1024, 512


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dirs):
    from visionr3.processing import load_tokenizer

    return load_tokenizer(tiny_model_dirs["qwen2_5_vl"])


@pytest.fixture
def make_server(tokenizer):
    def make(scripts, **kwargs):
        kwargs.setdefault("prompt_length", PROMPT_LENGTH)
        kwargs.setdefault("response_length", RESPONSE_LENGTH)
        return ScriptedServer(tokenizer, scripts, **kwargs)

    return make


def generate(server, request_id, *, prompt_ids=(1, 2, 3), sampling_params=None, **kwargs):
    params = {"temperature": 1.0, "logprobs": True} if sampling_params is None else sampling_params
    return asyncio.run(server.generate(request_id, prompt_ids=list(prompt_ids), sampling_params=params, **kwargs))


def ids(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def test_finished_turn_is_text_tokens_plus_im_end(make_server, tokenizer):
    server = make_server([["Hello there."]])
    out = generate(server, "a")
    assert isinstance(out, TokenOutput)
    assert out.token_ids == ids(tokenizer, "Hello there.") + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert out.stop_reason == "completed"
    assert out.extra_fields == {"global_steps": 0, "min_global_steps": 0, "max_global_steps": 0}


def test_scripts_are_assigned_fifo_per_request_id_and_turns_follow_per_request(make_server, tokenizer):
    server = make_server([["a1", "a2"], ["b1", "b2"]])
    decode = lambda out: tokenizer.decode(out.token_ids)  # noqa: E731
    # interleaved like concurrent trajectories: each request id keeps its own script
    assert decode(generate(server, "first")) == "a1<|im_end|>"
    assert decode(generate(server, "second")) == "b1<|im_end|>"
    assert decode(generate(server, "second")) == "b2<|im_end|>"
    assert decode(generate(server, "first")) == "a2<|im_end|>"
    assert [(c.request_id, c.script_index, c.turn) for c in server.calls] == [
        ("first", 0, 0), ("second", 1, 0), ("second", 1, 1), ("first", 0, 1)
    ]
    server.assert_exhausted()


def test_stop_string_cuts_after_earliest_stop_and_leaves_turn_open(make_server, tokenizer):
    text = 'I look closer. {"bbox_2d": [1, 2, 3, 4]} and then more text <answer>x</answer>'
    server = make_server([[text, text, text]])
    out = generate(server, "r", sampling_params={"stop": ["</answer>", "]}"]})
    assert out.token_ids == ids(tokenizer, 'I look closer. {"bbox_2d": [1, 2, 3, 4]}')  # no <|im_end|> appended
    # a single string is accepted as vLLM does
    assert generate(server, "r", sampling_params={"stop": "</answer>"}).token_ids == ids(tokenizer, text)
    # a stop string that does not occur: a normal finished turn
    out = generate(server, "r", sampling_params={"stop": ["<zoom>"]})
    assert out.token_ids == ids(tokenizer, text) + [server.im_end_id]


def test_text_after_an_eos_or_stop_token_is_never_generated(make_server, tokenizer):
    server = make_server([["done<|im_end|>garbage", "<tool_call>x</tool_call> tail"]])
    assert tokenizer.decode(generate(server, "r").token_ids) == "done<|im_end|>"
    stop_id = tokenizer.convert_tokens_to_ids("</tool_call>")
    out = generate(server, "r", sampling_params={"stop_token_ids": [stop_id]})
    assert tokenizer.decode(out.token_ids) == "<tool_call>x</tool_call>"


def test_token_budget_follows_vllm(make_server, tokenizer):
    long_text = "word " * 100
    full = ids(tokenizer, long_text) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    server = make_server([[long_text] * 4], prompt_length=50, response_length=40)
    # default: min(response_length, prompt_length + response_length - len(prompt_ids))
    assert generate(server, "r", prompt_ids=range(10)).token_ids == full[:40]
    assert generate(server, "r", prompt_ids=range(70)).token_ids == full[:20]
    # clamped to at least one token when the context is full
    assert generate(server, "r", prompt_ids=range(200)).token_ids == full[:1]
    # an explicit max_tokens wins
    assert generate(server, "r", sampling_params={"max_tokens": 7}).token_ids == full[:7]


def test_log_probs_present_iff_requested_and_one_per_token(make_server):
    server = make_server([["one two", "three"], ["four", "five six"]])
    with_lp = [generate(server, "a", sampling_params={"logprobs": True}) for _ in range(2)]
    without = [generate(server, "b", sampling_params={"logprobs": False}) for _ in range(2)]
    for out in with_lp:
        assert out.log_probs == [SCRIPTED_LOG_PROB] * len(out.token_ids)
    assert all(out.log_probs is None for out in without)


def test_calls_are_recorded_as_copies(make_server):
    server = make_server([["t1", "t2"]])
    images = [Image.new("RGB", (56, 28))]
    params = {"temperature": 1.0, "logprobs": False}
    generate(server, "r", prompt_ids=range(5), sampling_params=params, image_data=images)
    images.append(Image.new("RGB", (28, 84)))  # verl appends tool images to the same live list
    params["temperature"] = 0.0
    generate(server, "r", prompt_ids=range(9), sampling_params=params, image_data=images, mm_processor_output=None,
             video_data=None, audio_data=None, mm_processor_kwargs={})
    first, second = server.calls
    assert isinstance(first, ServerCall)
    assert (first.num_images, first.image_sizes, first.prompt_length) == (1, ((56, 28),), 5)
    assert (second.num_images, second.image_sizes, second.prompt_length) == (2, ((56, 28), (28, 84)), 9)
    assert first.sampling_params["temperature"] == 1.0 and second.sampling_params["temperature"] == 0.0
    assert params == {"temperature": 0.0, "logprobs": False}, "the caller's sampling_params must not be mutated"
    with pytest.raises(AttributeError):
        first.turn = 5  # frozen


def test_running_out_of_scripts_or_turns_raises_clearly(make_server):
    server = make_server([["only turn"]])
    generate(server, "a")
    with pytest.raises(ScriptExhaustedError, match="asked for assistant turn 2, but its script has only 1 turn"):
        generate(server, "a")
    with pytest.raises(ScriptExhaustedError, match=r"starts trajectory #2, but only 1 script\(s\) were given"):
        generate(server, "b")


def test_unused_turns_are_reported(make_server):
    server = make_server([["a1", "a2"], ["b1"]])
    generate(server, "a")
    assert server.unused_turns() == {0: 1, 1: 1}
    with pytest.raises(AssertionError, match="never requested"):
        server.assert_exhausted()


def test_bad_scripts_are_rejected(make_server):
    with pytest.raises(TypeError):
        make_server(["a flat list of turns"])
    with pytest.raises(ValueError, match="empty"):
        make_server([["x"], []])
