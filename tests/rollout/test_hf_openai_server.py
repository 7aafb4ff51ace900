"""The OpenAI-compatible HTTP endpoint of the hf rollout server, spoken to by the official ``openai`` SDK.

A standalone :class:`~visionr3.rollout.hf.replica.HFReplica` (``init_standalone``, the way verl starts a GenRM judge
without a resource pool) serves the tiny text-only Qwen3 judge (``tiny_model_dir("qwen3")``) on the shared session
Ray; every request goes over real HTTP to ``replica.server_address``. The judge's weights are random, so its text is
gibberish: tests compare the endpoint with itself and with the actor's token-in/token-out ``generate``, never with
expected words.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

ray = pytest.importorskip("ray")
openai = pytest.importorskip("openai")

PROMPT_LENGTH = 512
RESPONSE_LENGTH = 32
MESSAGES = [
    {"role": "system", "content": "You are a strict grader. Reply YES or NO."},
    {"role": "user", "content": "Reference: 42. Candidate: The answer is 42. Is the candidate correct?"},
]
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}


@pytest.fixture(scope="module")
def judge_dir():
    from visionr3.testing.tiny_model import tiny_model_dir

    return tiny_model_dir("qwen3")


@pytest.fixture(scope="module")
def tokenizer(judge_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(judge_dir)


@pytest.fixture(scope="module")
def replica(ray_cluster, judge_dir):
    """The judge as verl's ``RewardModelManager`` starts it without a pool: ``HFModelConfig`` + ``init_standalone``."""
    from verl.workers.config import HFModelConfig

    from visionr3.rollout.hf.replica import HFReplica
    from visionr3.testing.agent_harness import compose_verl_config

    config = compose_verl_config(
        [
            f"actor_rollout_ref.model.path={judge_dir}",
            "reward.reward_model.rollout.name=hf",
            "reward.reward_model.rollout.tensor_model_parallel_size=1",
            f"reward.reward_model.rollout.prompt_length={PROMPT_LENGTH}",
            f"reward.reward_model.rollout.response_length={RESPONSE_LENGTH}",
        ]
    )
    replica = HFReplica(
        replica_rank=0,
        config=config.reward.reward_model.rollout,
        model_config=HFModelConfig(path=str(judge_dir)),
        gpus_per_node=1,
        is_reward_model=True,
        name_suffix="openai_test",
    )
    asyncio.run(replica.init_standalone())
    yield replica
    ray.kill(replica.server_handle)


@pytest.fixture
async def client(replica):
    async with openai.AsyncOpenAI(base_url=f"http://{replica.server_address}/v1", api_key="unused", max_retries=0) as c:
        yield c


def post(replica, path, **kwargs) -> httpx.Response:
    return httpx.post(f"http://{replica.server_address}{path}", timeout=60, **kwargs)


def greedy_ids(replica, prompt_ids, **sampling):
    out = ray.get(
        replica.server_handle.generate.remote(
            prompt_ids=prompt_ids, sampling_params={"temperature": 0, **sampling}, request_id="direct"
        )
    )
    return out.token_ids


# ---------------------------------------------------------------------------------------------------------------------
# the endpoint
# ---------------------------------------------------------------------------------------------------------------------


async def test_models_lists_the_served_model(client, replica, judge_dir):
    models = await client.models.list()
    assert [m.id for m in models.data] == [str(judge_dir)]  # the model path, vLLM's default served name
    assert httpx.get(f"http://{replica.server_address}/health", timeout=10).status_code == 200


async def test_chat_completion_is_the_generate_path_over_http(client, replica, tokenizer, judge_dir):
    """Same prompt ids (chat template with ``enable_thinking=False``) and same tokens as the actor's ``generate``."""
    completion = await client.chat.completions.create(
        model=str(judge_dir), messages=MESSAGES, max_tokens=12, temperature=0, extra_body=NO_THINKING
    )
    prompt_ids = tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, tokenize=False, enable_thinking=False
    )
    prompt_ids = tokenizer.encode(prompt_ids, add_special_tokens=False)
    token_ids = greedy_ids(replica, prompt_ids, max_tokens=12)

    (choice,) = completion.choices
    assert completion.object == "chat.completion" and completion.model == str(judge_dir)
    assert choice.message.role == "assistant"
    assert completion.usage.prompt_tokens == len(prompt_ids)
    assert completion.usage.completion_tokens == len(token_ids) >= 1
    finished_by_eos = token_ids[-1] == tokenizer.eos_token_id
    text_ids = token_ids[:-1] if finished_by_eos else token_ids
    assert choice.message.content == tokenizer.decode(text_ids, skip_special_tokens=True)
    assert choice.finish_reason == ("stop" if finished_by_eos else "length")


async def test_chat_template_kwargs_reach_the_template(client, tokenizer):
    """Qwen3's template pre-fills an empty think block when ``enable_thinking`` is false."""
    think_block = len(tokenizer.encode("<think>\n\n</think>\n\n", add_special_tokens=False))
    thinking = await client.chat.completions.create(model="judge", messages=MESSAGES, max_tokens=1, temperature=0)
    not_thinking = await client.chat.completions.create(
        model="judge", messages=MESSAGES, max_tokens=1, temperature=0, extra_body=NO_THINKING
    )
    assert not_thinking.usage.prompt_tokens == thinking.usage.prompt_tokens + think_block


async def test_greedy_and_seeded_sampling_are_reproducible(client):
    async def reply(**sampling):
        completion = await client.chat.completions.create(
            model="judge", messages=MESSAGES, max_tokens=16, extra_body={"ignore_eos": True}, **sampling
        )
        return completion.choices[0].message.content, completion.usage.completion_tokens

    assert await reply(temperature=0, seed=3) == await reply(temperature=0, seed=3)
    first = await reply(temperature=1.0, top_p=0.95, seed=7)
    assert first == await reply(temperature=1.0, top_p=0.95, seed=7)
    assert first[1] == 16


async def test_max_tokens_is_respected(client):
    for budget in ({"max_tokens": 3}, {"max_completion_tokens": 3}):
        completion = await client.chat.completions.create(
            model="judge", messages=MESSAGES, temperature=0, extra_body={"ignore_eos": True}, **budget
        )
        assert completion.usage.completion_tokens == 3
        assert completion.choices[0].finish_reason == "length"


async def test_stop_string_cuts_the_text(client):
    kwargs = dict(model="judge", messages=MESSAGES, temperature=0, max_tokens=8, extra_body={"ignore_eos": True})
    full = (await client.chat.completions.create(**kwargs)).choices[0].message.content
    assert full, "the greedy reply of the tiny judge is expected to be non-empty text"
    stop = full[-1]
    cut = await client.chat.completions.create(**kwargs, stop=[stop])
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


async def test_logprobs_one_per_generated_token(client):
    completion = await client.chat.completions.create(
        model="judge", messages=MESSAGES, temperature=0, max_tokens=4, logprobs=True, extra_body={"ignore_eos": True}
    )
    content = completion.choices[0].logprobs.content
    assert len(content) == completion.usage.completion_tokens == 4
    assert all(entry.logprob <= 0 for entry in content)


@pytest.mark.parametrize(
    "body,needle",
    [
        ({"model": "judge"}, "'messages'"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "text-only"),
        ({"messages": MESSAGES, "n": 2}, "n=2"),
        ({"messages": MESSAGES, "stream": True}, "streaming"),
        ({"messages": MESSAGES, "temperature": "hot"}, "'temperature'"),
        ({"messages": MESSAGES, "max_tokens": 0}, "'max_tokens'"),
        ({"messages": MESSAGES, "presence_penalty": 0.5}, "presence_penalty"),
        ({"messages": MESSAGES, "chat_template_kwargs": {"tokenize": True}}, "tokenize"),
        ({"messages": [{"role": "user", "content": " a" * 33000}]}, "context length"),
    ],
    ids=["no-messages", "image", "n", "stream", "bad-type", "zero-budget", "penalty", "reserved-kwarg", "too-long"],
)
def test_bad_requests_get_400_and_the_server_keeps_serving(replica, body, needle):
    response = post(replica, "/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert needle in error["message"] and error["code"] == 400
    ok = post(replica, "/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2, "temperature": 0})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1


def test_malformed_json_gets_400(replica):
    response = post(replica, "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


async def test_sdk_raises_bad_request_for_images(client):
    with pytest.raises(openai.BadRequestError, match="text-only"):
        await client.chat.completions.create(
            model="judge",
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}],
        )


# ---------------------------------------------------------------------------------------------------------------------
# request parsing (pure)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra,expected",
    [
        ({}, {}),
        ({"max_tokens": 5, "max_completion_tokens": 7}, {"max_tokens": 7}),
        ({"stop": "END"}, {"stop": ["END"]}),
        ({"stop": ["a", ""], "seed": 3, "top_k": 20}, {"stop": ["a"], "seed": 3, "top_k": 20}),
        ({"temperature": 0, "top_p": 1}, {"temperature": 0.0, "top_p": 1.0}),
    ],
)
def test_chat_request_sampling_params(extra, expected):
    from visionr3.rollout.hf.openai_http import chat_request

    assert dict(chat_request({"messages": MESSAGES, **extra}).sampling_params) == expected


def test_chat_request_flattens_text_parts_and_lists_ignored_fields():
    from visionr3.rollout.hf.openai_http import chat_request

    chat = chat_request(
        {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
            "user": "me",
            "frobnicate": 1,
        }
    )
    assert chat.messages == ({"role": "user", "content": "a\nb"},)
    assert chat.add_generation_prompt and not chat.continue_final_message
    assert chat.ignored_fields == ("frobnicate",)


@pytest.mark.parametrize(
    "text,stop,include,expected",
    [
        ("hello world", [], False, ("hello world", None)),
        ("hello world", ["o"], False, ("hell", "o")),
        ("hello world", ["wor", "l"], False, ("he", "l")),
        ("hello world", ["wor"], True, ("hello wor", "wor")),
        ("hello", ["xyz"], False, ("hello", None)),
    ],
)
def test_truncate_at_stop(text, stop, include, expected):
    from visionr3.rollout.hf.openai_http import truncate_at_stop

    assert truncate_at_stop(text, stop, include) == expected
