"""The OpenAI backend against a real OpenAI-compatible server: our hf server's chat endpoint, over loopback HTTP.

An :class:`~visionr3.rollout.hf.server.HFServer` for the tiny Qwen2.5-VL (random weights, real Qwen vocabulary and
chat template) runs in this process on an event loop of its own thread, serving uvicorn on its node address; the
``openai`` SDK and :class:`~visionr3.eval.openai_backend.OpenAIChatClient` talk to it over HTTP from the tests' loop.
Its text is gibberish, so every check compares two paths through the same weights: the chat endpoint (text + images
in, text out) against the server's own token-in/token-out ``generate`` — the path verl's agent loop uses with an hf
or vLLM rollout — on prompts built the way verl builds them (chat template, processor's image-token expansion, and
VLM-R3's inline crop appended inside the assistant turn).
"""

from __future__ import annotations

import base64
import io
import re
import socket

import httpx
import pytest
from PIL import Image, ImageDraw

openai = pytest.importorskip("openai")

from visionr3.testing.hf_http import ServedHF  # noqa: E402
from visionr3.eval.openai_backend import (  # noqa: E402
    OpenAIBackendError,
    OpenAIChatClient,
    image_data_url,
    prompt_messages,
    reply_token_ids,
)

MAX_TOKENS = 10


def picture(size, colour, mark) -> Image.Image:
    image = Image.new("RGB", size, (230, 230, 225))
    ImageDraw.Draw(image).rectangle(mark, fill=colour)
    return image


IMAGE_1 = picture((140, 112), "red", (20, 20, 60, 50))
IMAGE_2 = picture((84, 112), "blue", (10, 60, 40, 100))
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the square?"}]},
    {"role": "assistant", "content": "It looks red."},
    {
        "role": "user",
        "content": [{"type": "text", "text": "And here? "}, {"type": "image"}, {"type": "text", "text": "Be brief."}],
    },
]


# ---------------------------------------------------------------------------------------------------------------------
# fixtures: the tiny VL model served over HTTP by an in-process HFServer
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir():
    from visionr3.testing.tiny_model import tiny_model_dir

    return tiny_model_dir("qwen2_5_vl")


@pytest.fixture(scope="module")
def processor(model_dir):
    from visionr3.processing import load_processor

    return load_processor(model_dir)


@pytest.fixture(scope="module")
def tokenizer(processor):
    return processor.tokenizer


@pytest.fixture(scope="module")
def served(model_dir):
    served = ServedHF(model_dir)
    yield served
    served.close()


@pytest.fixture
async def backend(served, tokenizer):
    client = OpenAIChatClient(served.base_url, None, tokenizer=tokenizer, max_retries=0, api_key_env=None)
    yield client
    await client.aclose()


# ---------------------------------------------------------------------------------------------------------------------
# prompts built the way verl builds them
# ---------------------------------------------------------------------------------------------------------------------


def verl_prompt(processor, messages, images) -> list[int]:
    """Chat template + the processor's own image-token expansion (verl's agent loop / RLHFDataset)."""
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=[text], images=images, return_tensors="pt")["input_ids"][0].tolist()


def vision_run(processor, image) -> list[int]:
    """An inline image exactly as ``visionr3_agent._insert_inline_observation`` writes it (VLM-R3)."""
    tokenizer = processor.tokenizer
    (grid,) = processor.image_processor(images=[image])["image_grid_thw"]
    count = int(grid.prod()) // processor.image_processor.merge_size**2
    ids = tokenizer.convert_tokens_to_ids(["<|vision_start|>"]) + [processor.image_token_id] * count
    return ids + tokenizer.convert_tokens_to_ids(["<|vision_end|>"])


def prompt_case(processor, case: str) -> tuple[list[int], list[Image.Image]]:
    tokenizer = processor.tokenizer
    ids = verl_prompt(processor, CONVERSATION, [IMAGE_1, IMAGE_2])
    if case == "new_turn":  # ends with "<|im_start|>assistant\n"
        return ids, [IMAGE_1, IMAGE_2]
    ids += tokenizer.encode('Looking closer: {"bbox_2d": [10, 60, 40, 100]}', add_special_tokens=False)
    if case == "continue_text":  # a partial assistant turn to continue
        return ids, [IMAGE_1, IMAGE_2]
    crop = IMAGE_2.crop((10, 60, 40, 100)).resize((56, 84))
    # "inline_crop": the loop appends "\n" (tokenised on its own) and the crop; the turn continues after <|vision_end|>
    ids += tokenizer.encode("\n", add_special_tokens=False) + vision_run(processor, crop)
    return ids, [IMAGE_1, IMAGE_2, crop]


def canonical_prompt(tokenizer, prompt_ids: list[int]) -> list[int]:
    """The tokeniser's own split of the prompt's text: what any text-based server builds from it. It differs from
    verl's ids where the agent loop joined separately tokenised pieces — VLM-R3's "\n" after a box that ends with
    "]}" (the tokeniser has one token for "]}\n"; the loop wrote "]}" + "\n")."""
    text = tokenizer.decode(prompt_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return tokenizer.encode(text, add_special_tokens=False)


def canonical(tokenizer, token_ids: list[int]) -> list[int]:
    """What the OpenAI backend must return for a turn that ``generate`` produced as ``token_ids``: the text
    re-tokenised, and an end-of-sequence turn closed with ``<|im_end|>`` (the documented lossy step)."""
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eos = {im_end, tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    ended = bool(token_ids) and token_ids[-1] in eos
    body = token_ids[:-1] if ended else token_ids
    text = tokenizer.decode(body, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return tokenizer.encode(text, add_special_tokens=False) + ([im_end] if ended else [])


# ---------------------------------------------------------------------------------------------------------------------
# (a) the chat endpoint takes images
# ---------------------------------------------------------------------------------------------------------------------


async def test_image_chat_through_the_sdk_is_deterministic_at_temperature_0(served, processor):
    messages = [
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image_data_url(IMAGE_1)}},
            {"type": "text", "text": "What colour is the square?"},
        ]}
    ]
    async with openai.AsyncOpenAI(base_url=served.base_url, api_key="unused", max_retries=0) as client:
        replies = [
            await client.chat.completions.create(
                model="tiny", messages=messages, max_tokens=MAX_TOKENS, temperature=0, extra_body={"ignore_eos": True}
            )
            for _ in range(2)
        ]
    content = [{"type": "image"}, {"type": "text", "text": "What colour is the square?"}]
    question = [{"role": "user", "content": content}]
    expected_prompt = verl_prompt(processor, question, [IMAGE_1])
    first, second = replies
    assert isinstance(first.choices[0].message.content, str) and first.choices[0].message.content
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.usage.prompt_tokens == second.usage.prompt_tokens == len(expected_prompt)  # image tokens expanded
    assert first.usage.completion_tokens == MAX_TOKENS and first.choices[0].finish_reason == "length"


@pytest.mark.parametrize("case", ["new_turn", "continue_text", "inline_crop"])
def test_the_server_renders_the_backends_messages_back_to_verls_prompt_ids(served, processor, tokenizer, case):
    """No HTTP: the messages the client builds, rendered and expanded by the endpoint's code, are verl's ids — up to
    the tokeniser's own split of the text, which differs from verl's ids in the inline-crop case only."""
    from visionr3.rollout.hf.openai_http import chat_request

    prompt_ids, images = prompt_case(processor, case)
    decoded = tokenizer.decode(prompt_ids, skip_special_tokens=False)
    chat = prompt_messages(decoded, [image_data_url(image) for image in images])
    assert chat.continue_final_message == (case != "new_turn")
    parsed = chat_request({
        "messages": chat.messages,
        "add_generation_prompt": chat.add_generation_prompt,
        "continue_final_message": chat.continue_final_message,
    })
    assert len(parsed.images) == len(images)
    assert served.server._render_chat(parsed) == canonical_prompt(tokenizer, prompt_ids)
    assert (canonical_prompt(tokenizer, prompt_ids) == prompt_ids) == (case != "inline_crop")


# ---------------------------------------------------------------------------------------------------------------------
# (b) OpenAIChatClient.generate == HFServer.generate (token in/token out), up to the documented re-tokenisation
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["new_turn", "continue_text", "inline_crop"])
async def test_generate_matches_the_token_path(served, processor, tokenizer, backend, case):
    """Greedy, the sampling parameters verl's agent loop sends. The server generates from the canonical prompt
    (identical to verl's ids except in the inline-crop case, where it is one token shorter and the client counts the
    mismatch); the reply comes back as the canonical ids of the same text."""
    prompt_ids, images = prompt_case(processor, case)
    server_prompt = canonical_prompt(tokenizer, prompt_ids)
    sampling = {"temperature": 0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "max_tokens": MAX_TOKENS}
    direct = await served.acall(
        served.server.generate(prompt_ids=server_prompt, sampling_params=sampling, request_id="d", image_data=images)
    )
    out = await backend.generate(
        request_id="viahttp", prompt_ids=prompt_ids, sampling_params=sampling, image_data=images, video_data=None
    )

    assert backend.stats.prompt_token_mismatches == (len(server_prompt) != len(prompt_ids))
    assert out.stop_reason == "completed" and out.log_probs is None
    assert out.token_ids == canonical(tokenizer, direct.token_ids)  # == direct.token_ids where they are canonical


async def test_sampling_with_a_seed_is_reproducible_and_stop_strings_stay_in_the_ids(served, processor, backend):
    prompt_ids, images = prompt_case(processor, "new_turn")
    sampling = {"temperature": 1.0, "top_p": 0.9, "seed": 11, "max_tokens": MAX_TOKENS, "ignore_eos": True}
    first = await backend.generate(request_id="s1", prompt_ids=prompt_ids, sampling_params=sampling, image_data=images)
    again = await backend.generate(request_id="s2", prompt_ids=prompt_ids, sampling_params=sampling, image_data=images)
    assert first.token_ids == again.token_ids and backend.stats.finish_reasons == {"length": 2}

    tokenizer = backend.tokenizer
    text = tokenizer.decode(first.token_ids, skip_special_tokens=False)
    assert text.strip(), f"the {MAX_TOKENS} sampled tokens decode to whitespace only: {first.token_ids}"
    stop = text.strip()[-1]  # a character the (gibberish) reply is known to contain
    cut = await backend.generate(
        request_id="s3", prompt_ids=prompt_ids, sampling_params={**sampling, "stop": [stop]}, image_data=images
    )
    cut_text = tokenizer.decode(cut.token_ids, skip_special_tokens=False)
    assert cut_text == text[: text.index(stop) + 1]  # cut after the stop string, which is kept; no <|im_end|>
    assert backend.stats.finish_reasons == {"length": 2, "stop": 1}


# ---------------------------------------------------------------------------------------------------------------------
# (c) bad inputs
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra_images,needle", [(-1, "image_data has 1"), (1, "image_data has 3")])
async def test_image_count_mismatch_is_a_clear_error_before_any_request(processor, backend, extra_images, needle):
    prompt_ids, images = prompt_case(processor, "new_turn")
    images = images[:extra_images] if extra_images < 0 else images + [IMAGE_1]
    attempts = backend.stats.attempts
    with pytest.raises(ValueError, match=needle):
        await backend.generate(request_id="bad", prompt_ids=prompt_ids, sampling_params={}, image_data=images)
    assert backend.stats.attempts == attempts


def _image_message(url):
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "hi"}]
    return [{"role": "user", "content": parts}]


@pytest.mark.parametrize(
    "messages,needle",
    [
        (_image_message("https://example.com/cat.png"), "does not fetch remote images"),
        (_image_message("http://192.0.2.1/cat.png"), "does not fetch remote images"),
        (_image_message("file:///etc/hosts"), "only inline base64 images"),
        (_image_message("data:image/png;base64,%%%"), "not valid base64"),
        (_image_message("data:image/png;base64," + base64.b64encode(b"not an image").decode()), "does not decode"),
        (
            [{"role": "user", "content": [
                {"type": "text", "text": "<|vision_start|><|image_pad|><|vision_end|>"},
                {"type": "image_url", "image_url": {"url": image_data_url(IMAGE_1)}},
            ]}],
            "2 <|image_pad|> placeholder(s) for 1 image part(s)",
        ),
        ([{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "data:,"}}]}], "'video_url' part"),
    ],
    ids=["https", "http", "file", "bad-base64", "not-an-image", "placeholder-count", "video"],
)
def test_bad_image_requests_get_400_with_a_message(served, messages, needle):
    body = {"messages": messages, "max_tokens": 2}
    response = httpx.post(f"{served.base_url}/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]["message"]


async def test_the_sdk_sees_bad_request_and_the_backend_does_not_retry_a_4xx(served, processor, backend):
    async with openai.AsyncOpenAI(base_url=served.base_url, api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError, match="does not fetch remote images"):
            await client.chat.completions.create(model="tiny", messages=_image_message("https://example.com/a.png"))
    prompt_ids, images = prompt_case(processor, "new_turn")
    retrying = OpenAIChatClient(served.base_url, "tiny", tokenizer=backend.tokenizer, max_retries=3, api_key_env=None)
    with pytest.raises(OpenAIBackendError, match=r"HTTP 400\): 'top_k' must be"):
        await retrying.generate(request_id="k", prompt_ids=prompt_ids, sampling_params={"top_k": -5}, image_data=images)
    assert retrying.stats.attempts == 1 and retrying.stats.failures == 1
    await retrying.aclose()


# ---------------------------------------------------------------------------------------------------------------------
# (d) failures of the endpoint
# ---------------------------------------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_a_server_that_is_down_is_retried_then_a_clear_error(tokenizer):
    client = OpenAIChatClient(
        f"http://127.0.0.1:{_closed_port()}/v1", "tiny", tokenizer=tokenizer, max_retries=2, backoff_base=0.01,
        api_key_env=None,
    )
    prompt_ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    with pytest.raises(OpenAIBackendError, match=r"failed for r1 after 3 attempt\(s\): cannot connect"):
        await client.generate(request_id="r1", prompt_ids=prompt_ids, sampling_params={"max_tokens": 4})
    assert (client.stats.attempts, client.stats.retries, client.stats.failures) == (3, 2, 1)
    await client.aclose()
    unnamed = OpenAIChatClient(client.base_url, None, tokenizer=tokenizer, api_key_env=None)
    with pytest.raises(OpenAIBackendError, match="cannot list the models at http://127.0.0.1:"):
        await unnamed.generate(request_id="r1", prompt_ids=prompt_ids, sampling_params={"max_tokens": 4})
    await unnamed.aclose()


async def test_a_server_error_is_retried_and_the_key_is_sent_but_never_shown(tokenizer, monkeypatch):
    from visionr3.testing.openai_server import OpenAIStubServer

    key = "sk-test-0123456789abcdef"
    monkeypatch.setenv("VR3_TEST_OPENAI_KEY", key)
    with OpenAIStubServer(faults={"server_error": 1.0}, faults_on_first_attempt_only=True,
                          reply=lambda messages, model: "The square is red.") as stub:
        client = OpenAIChatClient(
            stub.base_url, "stub", tokenizer=tokenizer, max_retries=2, backoff_base=0.01,
            api_key_env="VR3_TEST_OPENAI_KEY",
        )
        prompt_ids = tokenizer.encode(
            "<|im_start|>user\nWhat colour?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False
        )
        out = await client.generate(request_id="r2", prompt_ids=prompt_ids, sampling_params={"max_tokens": 8})
        await client.aclose()
        assert stub.last_authorization == f"Bearer {key}"
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert out.token_ids == tokenizer.encode("The square is red.", add_special_tokens=False) + [im_end]
    assert (client.stats.attempts, client.stats.retries, client.stats.failures) == (2, 1, 0)
    assert key not in repr(client) and key not in repr(vars(client).get("stats"))


# ---------------------------------------------------------------------------------------------------------------------
# the pure translation steps
# ---------------------------------------------------------------------------------------------------------------------

RUN = "<|vision_start|><|image_pad|><|image_pad|><|vision_end|>"


@pytest.mark.parametrize(
    "prompt,urls,expected",
    [
        (
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n",
            [],
            ([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}], False, True),
        ),
        (
            f"<|im_start|>user\n{RUN}Q{RUN}<|im_end|>\n<|im_start|>assistant\nA",
            ["u1", "u2"],
            ([{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "u1"}}, {"type": "text", "text": "Q"},
                {"type": "image_url", "image_url": {"url": "u2"}},
            ]}, {"role": "assistant", "content": "A"}], True, False),
        ),
        (
            f"<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nbox\n{RUN}",
            ["u1"],
            ([{"role": "user", "content": "Q"}, {"role": "assistant", "content": [
                {"type": "text", "text": "box\n"}, {"type": "image_url", "image_url": {"url": "u1"}},
                {"type": "text", "text": ""},
            ]}], True, False),
        ),
        ("<|im_start|>user\nQ<|im_end|>\n", [], ([{"role": "user", "content": "Q"}], False, False)),
    ],
    ids=["text", "images-continue", "ends-with-image", "closed"],
)
def test_prompt_messages(prompt, urls, expected):
    chat = prompt_messages(prompt, urls)
    assert (chat.messages, chat.continue_final_message, chat.add_generation_prompt) == expected


@pytest.mark.parametrize(
    "prompt,urls,needle",
    [
        ("hello<|im_start|>user\nQ<|im_end|>\n", [], "does not start with"),
        ("<|im_start|>user\nQ", [], "open 'user' message"),
        ("<|im_start|>user\nQ<|im_end|>x<|im_start|>assistant\n", [], "exactly one newline"),
        ("<|im_start|>user\nQ<|im_start|>assistant\n", [], "not closed"),
        (f"<|im_start|>user\n{RUN}<|im_end|>\n<|im_start|>assistant\n", [], "but image_data has 0"),
        (f"<|im_start|>user\n{RUN}<|im_end|>\n<|im_start|>assistant\n", ["a", "b"], "image_data has 2"),
        ("<|im_start|>user\n<|image_pad|><|im_end|>\n<|im_start|>assistant\n", [], "outside a complete"),
    ],
)
def test_prompt_messages_refuses_what_it_cannot_express(prompt, urls, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        prompt_messages(prompt, urls)


def test_prompt_messages_refuses_videos():
    with pytest.raises(NotImplementedError, match="video"):
        prompt_messages("<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|><|im_end|>\n", [])


@pytest.mark.parametrize(
    "text,finish,stop_reason,stop,suffix",
    [
        ("abc", "length", None, [], None),  # budget exhausted: nothing appended
        ("abc", "stop", None, [], "<|im_end|>"),  # end of sequence
        ("abc<|im_end|>", "stop", None, [], "<|im_end|>"),  # EOS text written by include_stop_str_in_output
        ('x {"bbox_2d": [1, 2, 3, 4]}', "stop", "]}", ["]}"], None),  # vLLM names the stop string
        ('x {"bbox_2d": [1, 2, 3, 4]}', "stop", None, ["]}"], None),  # a server that does not: inferred
    ],
)
def test_reply_token_ids(tokenizer, text, finish, stop_reason, stop, suffix):
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = reply_token_ids(text, finish, stop_reason, stop, tokenizer, im_end)
    body = text.removesuffix("<|im_end|>")
    assert ids == tokenizer.encode(body, add_special_tokens=False) + ([im_end] if suffix else [])


def test_reply_token_ids_appends_a_matched_stop_token(tokenizer):
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = reply_token_ids("ab<|endoftext|>", "stop", end_of_text, [], tokenizer, im_end)
    assert ids == tokenizer.encode("ab", add_special_tokens=False) + [end_of_text]


def test_image_data_url_is_lossless():
    url = image_data_url(IMAGE_2)
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.mode == "RGB" and decoded.tobytes() == IMAGE_2.tobytes()


def test_plain_endpoints_refuse_what_they_cannot_express(tokenizer):
    client = OpenAIChatClient("http://127.0.0.1:9/v1", "m", tokenizer=tokenizer, vllm_extensions=False)
    new_turn = prompt_messages("<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n", [])
    body = client._request_body(new_turn, {"temperature": 0, "top_k": -1, "max_tokens": 3}, 5, None)
    assert body == {"model": "m", "messages": new_turn.messages, "n": 1, "max_tokens": 3, "temperature": 0}
    with pytest.raises(ValueError, match="top_k"):
        client._request_body(new_turn, {"top_k": 20}, 5, None)
    with pytest.raises(ValueError, match="stop strings"):
        client._request_body(new_turn, {"stop": ["]}"]}, 5, None)
    continuing = prompt_messages("<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA", [])
    with pytest.raises(ValueError, match="continue_final_message"):
        client._request_body(continuing, {}, 5, None)
