"""A GenRM-style custom reward function for the local-judge tests: asks the judge behind verl's reward router.

verl's ``RewardLoopWorker`` loads it by file path (``reward.custom_reward_function.path``) and, with
``reward.reward_model.enable=True``, calls it with ``reward_router_address=`` (verl's naive FastAPI router in front
of the judge replicas' OpenAI endpoints) and ``reward_model_tokenizer=`` (the judge's tokenizer). Placeholder until
the project's judge client (``visionr3.reward.judge``) takes its place; it records the raw reply so tests can see
that the request made the whole trip.
"""

from __future__ import annotations

JUDGE_SYSTEM = "You are a strict grader. Reply YES if the candidate answer matches the reference answer, else NO."
JUDGE_SAMPLING = {"max_tokens": 8, "temperature": 0.0, "seed": 0}
JUDGE_EXTRA_BODY = {"chat_template_kwargs": {"enable_thinking": False}}


def judge_messages(solution_str: str, ground_truth: str) -> list[dict]:
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {"role": "user", "content": f"Reference answer: {ground_truth}\nCandidate answer: {solution_str}"},
    ]


async def compute_score(
    data_source, solution_str, ground_truth, extra_info, reward_router_address=None, reward_model_tokenizer=None,
    **kwargs,
):
    from openai import AsyncOpenAI

    if reward_router_address is None:
        raise ValueError("no reward_router_address: the local judge needs reward.reward_model.enable=True")
    # The served model name is the judge's local path (vLLM's default, and the hf server's); the tokenizer knows it.
    model = getattr(reward_model_tokenizer, "name_or_path", None) or "judge"
    async with AsyncOpenAI(base_url=f"http://{reward_router_address}/v1", api_key="unused", max_retries=0) as client:
        completion = await client.chat.completions.create(
            model=model,
            messages=judge_messages(solution_str, ground_truth),
            extra_body=JUDGE_EXTRA_BODY,
            **JUDGE_SAMPLING,
        )
    reply = completion.choices[0].message.content or ""
    return {
        "score": 1.0 if reply.strip().upper().startswith("YES") else 0.0,
        "judge_reply": reply,
        "judge_model": completion.model,
        "judge_completion_tokens": completion.usage.completion_tokens,
    }
