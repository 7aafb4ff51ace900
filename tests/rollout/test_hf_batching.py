"""The HF replica batches requests that wait together into one ``generate`` call (``engine_kwargs.hf.max_batch_size``).

:class:`~visionr3.rollout.hf.server.HFServer` in this process (Ray only wraps it; ``tests/rollout/test_hf_rollout.py``
runs the same class as verl's actor), on the tiny Qwen2.5-VL. Concurrent requests are ``asyncio.gather``-ed
``generate`` calls, the path verl's client takes. The server's own counter (``generate_calls`` in ``get_info``) shows
how many model calls served them. Greedy rows must come out token-identical to the one-at-a-time server; log-probs
may differ in the last bits (padding changes float summation order), so they are compared with a tolerance.
"""

from __future__ import annotations

import asyncio

import pytest
import torch
from PIL import Image

RESPONSE_LENGTH = 24


@pytest.fixture(scope="module")
def server():
    from verl.utils.config import omega_conf_to_dataclass

    from visionr3.rollout.hf.server import HFServer
    from visionr3.testing.agent_harness import compose_verl_config
    from visionr3.testing.tiny_model import tiny_model_dir

    model_dir = tiny_model_dir("qwen2_5_vl")
    config = compose_verl_config(
        [
            f"actor_rollout_ref.model.path={model_dir}",
            "actor_rollout_ref.rollout.name=hf",
            "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
            "data.max_prompt_length=256",
            f"data.max_response_length={RESPONSE_LENGTH}",
            # a batch waits for every request that has arrived: deterministic here, whatever the machine's load
            "+actor_rollout_ref.rollout.engine_kwargs.hf.batch_wait_ms=60000",
        ]
    )
    return HFServer(omega_conf_to_dataclass(config.actor_rollout_ref.rollout), str(model_dir))


def prompt_ids(processor, text: str, images=()) -> list[int]:
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    rendered = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    return processor(text=[rendered], images=list(images) or None, return_tensors="pt")["input_ids"][0].tolist()


def ragged_rows(processor, count: int = 4) -> list[tuple[list[int], list]]:
    """Prompts of different lengths, each with its own image of a different size (so rows are left-padded)."""
    rows = []
    for i in range(count):
        image = Image.new("RGB", (64 + 28 * i, 56 + 14 * i), (200 - 40 * i, 30 + 50 * i, 90))
        rows.append((prompt_ids(processor, "What colour is it?" + " Look closely." * i, [image]), [image]))
    return rows


def serve(server, requests: list[tuple[list[int], list, dict]], max_batch_size: int) -> tuple[list, int]:
    """``(outputs, model calls)`` for ``(prompt_ids, images, sampling_params)`` requests made concurrently."""
    server.max_batch_size = max_batch_size
    before = server.generate_calls

    async def all_at_once():
        return await asyncio.gather(
            *[
                server.generate(ids, params, f"req-{i}", image_data=images or None)
                for i, (ids, images, params) in enumerate(requests)
            ],
            return_exceptions=True,
        )

    outputs = asyncio.run(all_at_once())
    return outputs, server.generate_calls - before


def test_concurrent_greedy_requests_are_one_call_and_equal_one_at_a_time(server):
    greedy = {"temperature": 0.0, "logprobs": True, "ignore_eos": True}
    requests = [(ids, images, {**greedy, "max_tokens": 8 + 3 * i}) for i, (ids, images) in enumerate(ragged_rows(server.processor))]
    alone, alone_calls = serve(server, requests, max_batch_size=1)
    batched, batched_calls = serve(server, requests, max_batch_size=8)
    assert (alone_calls, batched_calls) == (4, 1)
    for i, (a, b) in enumerate(zip(alone, batched)):
        assert len(a.token_ids) == 8 + 3 * i  # each row keeps its own budget
        assert b.token_ids == a.token_ids and b.stop_reason == a.stop_reason == "completed"
        assert torch.allclose(torch.tensor(b.log_probs), torch.tensor(a.log_probs), atol=1e-4)
    info = asyncio.run(server.get_info())
    assert info["generate_calls"] == server.generate_calls and info["max_batch_size"] == 8


def test_stop_strings_and_stop_tokens_end_each_row_where_one_at_a_time_does(server):
    tokenizer = server.tokenizer
    rows = ragged_rows(server.processor, 3)
    base = {"temperature": 0.0, "ignore_eos": True, "max_tokens": 16}
    full, _ = serve(server, [(ids, images, base) for ids, images in rows], max_batch_size=1)
    requests = []
    for (ids, images), out in zip(rows, full):  # a stop string from the middle of each row's own continuation
        text = tokenizer.decode(out.token_ids, skip_special_tokens=True)
        middle = len(tokenizer.decode(out.token_ids[:6], skip_special_tokens=True))
        requests.append((ids, images, {**base, "stop": [text[middle - 2 : middle + 1]]}))
    alone, _ = serve(server, requests, max_batch_size=1)
    batched, calls = serve(server, requests, max_batch_size=8)
    assert calls == 1
    assert [b.token_ids for b in batched] == [a.token_ids for a in alone]
    assert any(len(a.token_ids) < 16 for a in alone)  # the stop strings did stop something

    # stop token ids are per call in transformers: requests with different ones are not batched together
    stop_tokens = [{**base, "stop_token_ids": [out.token_ids[4]]} for out in full]
    requests = [(ids, images, params) for (ids, images), params in zip(rows, stop_tokens)]
    alone, _ = serve(server, requests, max_batch_size=1)
    batched, calls = serve(server, requests, max_batch_size=8)
    assert [b.token_ids for b in batched] == [a.token_ids for a in alone]
    assert calls == len({params["stop_token_ids"][0] for params in stop_tokens})


def test_seeded_and_text_only_requests_are_batched_only_with_their_kind(server):
    processor = server.processor
    (image_ids, images), (other_ids, other_images) = ragged_rows(processor, 2)
    text_ids = prompt_ids(processor, "Say something.")
    sampled = {"temperature": 1.0, "max_tokens": 6, "ignore_eos": True}
    requests = [
        (image_ids, images, sampled),
        (text_ids, [], sampled),
        (other_ids, other_images, sampled),
        (text_ids, [], sampled),
        (image_ids, images, {**sampled, "seed": 5}),
        (image_ids, images, {**sampled, "seed": 5}),
    ]
    outputs, calls = serve(server, requests, max_batch_size=8)
    assert calls == 4  # the two image rows, the two text rows, and each seeded request alone
    assert all(len(out.token_ids) == 6 for out in outputs)
    seeded_alone, _ = serve(server, [requests[4]], max_batch_size=8)
    assert outputs[4].token_ids == outputs[5].token_ids == seeded_alone[0].token_ids


def test_a_failing_request_fails_alone(server, monkeypatch):
    rows = ragged_rows(server.processor, 3)
    greedy = {"temperature": 0.0, "max_tokens": 4, "ignore_eos": True}
    expected, _ = serve(server, [(ids, images, greedy) for ids, images in rows], max_batch_size=1)
    original = server._generate_blocking

    def fails_on_the_middle_row(requests):
        if any(request.request_id == "req-1" for request in requests):
            raise RuntimeError("boom")
        return original(requests)

    monkeypatch.setattr(server, "_generate_blocking", fails_on_the_middle_row)
    outputs, _ = serve(server, [(ids, images, greedy) for ids, images in rows], max_batch_size=8)
    assert isinstance(outputs[1], RuntimeError)
    assert [outputs[0].token_ids, outputs[2].token_ids] == [expected[0].token_ids, expected[2].token_ids]
