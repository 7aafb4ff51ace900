"""The API judge client against a real ``vllm serve`` (vLLM's CPU build) of the small tiny Qwen3 judge, over loopback.

The judge's weights are random, so its verdict means nothing; what is asserted is the path: a real chat completion
comes back through each HTTP path (the SDK's and aiohttp's), the preset's parser reads it — a verdict, or an
``unparseable`` attempt, never a transport error — and the client counts what happened. Greedy decoding makes the
outcome the same on every attempt, so both paths agree.
"""

from __future__ import annotations

import pytest

from visionr3.reward.judge.client import JudgeClient
from visionr3.reward.judge.config import JudgeConfig

TRANSPORT_ERRORS = {"timeout", "connection", "rate_limit", "server_error", "retryable_status", "client_error", "malformed"}


@pytest.fixture(scope="module")
def vllm_model() -> str:
    """What tests/conftest.py's ``vllm_server`` serves for this module: the small Qwen3 judge (head_dim 64)."""
    from visionr3.testing.tiny_model import tiny_model_dir

    return str(tiny_model_dir("qwen3", size="small"))


@pytest.mark.parametrize("http", ["openai", "aiohttp"])
async def test_judge_client_reads_a_real_vllm_reply(vllm_server, http):
    config = JudgeConfig(base_url=vllm_server.base_url, model=vllm_server.served_model, api_key_env=None, http=http,
                         max_tokens=24, max_retries=1, timeout=120.0, backoff_base=0.01)
    client = JudgeClient(config)
    try:
        verdict = await client.judge("What colour is the small square?", "red", "red")
        again = await client.judge("What colour is the small square?", "red", "red")
    finally:
        await client.aclose()
    stats = client.stats
    assert verdict.raw, f"no reply text came back: {verdict}"
    assert not TRANSPORT_ERRORS & set(stats.errors), f"the request itself failed: {dict(stats.errors)}; {verdict.error}"
    if verdict.ok:  # the parser found a verdict in the random model's text: one attempt, and the second call is cached
        assert verdict.score in (0.0, 1.0) and verdict.attempts == 1 and not verdict.error
        assert again.cached and stats.cache_hits == 1 and stats.attempts == 1 and stats.failures == 0
    else:  # every attempt was read and refused by the parser; a failure is not cached, so the second call asks again
        assert verdict.error.startswith("unparseable") and verdict.attempts == config.max_retries + 1
        assert not again.ok and not again.cached and stats.failures == 2
        assert stats.errors == {"unparseable": 2 * (config.max_retries + 1)} and stats.retries == 2 * config.max_retries
    metrics = stats.as_metrics()
    assert metrics["judge/requests"] == 2 and metrics["judge/attempts"] == stats.attempts
    print(f"judge over {http}: {'verdict ' + str(verdict.score) if verdict.ok else verdict.error}; raw {verdict.raw[:80]!r}")
