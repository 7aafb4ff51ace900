"""visionr3's verl reward function: rule scores, an optional LLM judge, and the reward formula, per trajectory.

verl calls it once per finished trajectory (``reward.custom_reward_function``; the arguments below the ``*`` come
from ``reward.custom_reward_function.reward_kwargs``, which visionr3's configs fill from the ``visionr3.reward``
block)::

    reward:
      custom_reward_function:
        path: pkg://visionr3.reward.score
        name: compute_score
        reward_kwargs: {formula: visionthink, params: {...}, judge: {...}}

(``recipe:`` is the formula's old name, accepted until the next release with a deprecation warning; see
:func:`formula_name`.)

What it does, in order:

1. :func:`reward_input` turns verl's arguments into a typed :class:`~visionr3.reward.types.RewardInput` — the
   response, the assistant's own turns and the agent loop's counters (verl forwards the loop's ``extra_fields`` in
   ``extra_info``), and Vision-SR1's second-pass answer.
2. The formula (:mod:`visionr3.reward.formulas`) says which text is the answer; the rules
   (:func:`visionr3.reward.grade.grade`) grade it.
3. The judge (:mod:`visionr3.reward.judge.client`) is asked when ``judge.use`` says so: ``always`` (VisionThink, DeepEyes),
   ``undecided`` (only when the rules cannot tell — VLM-R3's exact-match-then-judge) or ``never``. The *same* client
   serves a remote API (``judge.backend: api``: any OpenAI-compatible ``base_url``, key from ``judge.api_key_env``)
   and the local judge verl serves inside the job (``judge.backend: local``: verl's generative reward model,
   ``reward.reward_model.enable=True``; its router address arrives as ``reward_router_address``).
   A judgement that still fails after the client's retries is counted (``judge_failed``) and then either graded by
   the rules (``judge.on_failure: rule``, the default) or marked ``excluded`` (``exclude``: the trainer gives it
   advantage 0 and leaves it out of its group's statistics). It never crashes the step and never becomes a silent 0.
4. The formula combines accuracy, format, tool, visual and other terms; every term is returned as its own
   key (verl logs each as a metric; :mod:`visionr3.train.trainer` logs them as ``visionr3/reward/<key>/mean``).

Secrets: the judge config holds the *name* of the environment variable with the API key, never the key, so nothing
verl dumps (configs, Ray job metadata, generations) can contain it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from visionr3.agent.trajectory import (
    ASSISTANT_TURNS,
    SELF_ANSWER,
    SELF_REWARD_STATUS,
    TOOL_CALLS,
    TOOL_IMAGES,
    VALID_TOOL_CALLS,
)
from visionr3.config import plain
from visionr3.reward.formulas import DEFAULT_FORMULA, get_formula, warn_deprecated
from visionr3.reward.rules import ECHOED_TOOL_METRICS
from visionr3.reward.types import RewardInput, RewardScore

logger = logging.getLogger(__name__)

JudgeUse = Literal["never", "undecided", "always"]




@dataclass(frozen=True)
class JudgeSettings:
    """``visionr3.reward.judge``: when to ask, what to do on failure, and the client config (see
    :class:`visionr3.reward.judge.config.JudgeConfig` for ``base_url``, ``model``, ``prompt``, retries, ...)."""

    use: JudgeUse = "never"
    backend: Literal["api", "local"] = "api"
    on_failure: Literal["rule", "exclude"] = "rule"
    client: Mapping[str, Any] | None = None

    @classmethod
    def from_dict(cls, raw: Mapping | None) -> "JudgeSettings":
        raw = dict(plain(raw) or {})
        use = raw.pop("use", "never")
        backend = raw.pop("backend", "api")
        on_failure = raw.pop("on_failure", "rule")
        if use not in ("never", "undecided", "always"):
            raise ValueError(f"visionr3.reward.judge.use must be never|undecided|always, got {use!r}")
        if backend not in ("api", "local"):
            raise ValueError(f"visionr3.reward.judge.backend must be api|local, got {backend!r}")
        if on_failure not in ("rule", "exclude"):
            raise ValueError(f"visionr3.reward.judge.on_failure must be rule|exclude, got {on_failure!r}")
        return cls(use=use, backend=backend, on_failure=on_failure, client=raw)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def ground_truth_text(value: Any) -> str:
    """A dataset ground truth as one string (a list is joined with ``"/"``, VLM-R3's convention for alternatives)."""
    value = plain(value)
    if isinstance(value, (list, tuple)):
        return "/".join(str(v) for v in value)
    return "" if value is None else str(value)


def reward_input(data_source: str, solution_str: str, ground_truth: Any, extra_info: Mapping | None) -> RewardInput:
    """verl's reward-function arguments as a :class:`RewardInput`.

    ``extra_info`` is the dataset row's ``extra_info`` (``question``, optional ``options``) merged with the agent
    loop's ``extra_fields`` (``assistant_turns``, tool counters, ``self_answer``/``self_reward_status``).
    """
    info = dict(plain(extra_info) or {})
    options = info.get("options") or info.get("choices") or ()
    if isinstance(options, Mapping):  # {"A": "...", "B": "..."}
        options = [options[key] for key in sorted(options)]
    turns = info.get(ASSISTANT_TURNS) or ()
    self_answer = info.get(SELF_ANSWER)
    return RewardInput(
        response=solution_str or "",
        ground_truth=ground_truth_text(ground_truth),
        data_source=str(data_source or ""),
        question=str(info.get("question") or ""),
        options=tuple(str(option) for option in options),
        turns=tuple(str(turn) for turn in turns),
        tool_calls=_int(info.get(TOOL_CALLS)),
        valid_tool_calls=_int(info.get(VALID_TOOL_CALLS)),
        tool_images=_int(info.get(TOOL_IMAGES)),
        self_answer=None if self_answer is None else str(self_answer),
        self_status=str(info.get(SELF_REWARD_STATUS) or "off"),  # type: ignore[arg-type]
    )


def formula_name(formula: str | None = None, recipe: str | None = None) -> str:
    """The formula to score with: ``formula``, else the deprecated ``recipe`` (its old name, with a warning), else
    :data:`~visionr3.reward.formulas.DEFAULT_FORMULA`; both set and different is an error naming both keys."""
    if recipe is None:
        return DEFAULT_FORMULA if formula is None else formula
    if formula is not None and formula != recipe:
        raise ValueError(
            f"visionr3.reward.formula={formula} and the deprecated visionr3.reward.recipe={recipe} disagree: "
            "set only visionr3.reward.formula"
        )
    warn_deprecated("visionr3.reward.recipe is deprecated, use visionr3.reward.formula")
    return recipe


def configured_formula(config) -> str:
    """:func:`formula_name` of a composed trainer config's ``visionr3.reward`` block (``formula``, else the deprecated
    ``recipe``)."""
    from omegaconf import OmegaConf

    select = OmegaConf.select
    return formula_name(select(config, "visionr3.reward.formula"), select(config, "visionr3.reward.recipe"))


async def score_input(
    inp: RewardInput,
    formula: str | None = None,
    params: Mapping[str, Any] | None = None,
    judge: Mapping[str, Any] | JudgeSettings | None = None,
    reward_router_address: str | None = None,
    *,
    recipe: str | None = None,
) -> RewardScore:
    """Score one trajectory (see the module docstring); never raises for a judge failure.

    ``formula`` names a :data:`~visionr3.reward.formulas.FORMULAS` entry (``None``: the default); ``recipe`` is its
    deprecated old name (:func:`formula_name`)."""
    spec = get_formula(formula_name(formula, recipe))
    settings = judge if isinstance(judge, JudgeSettings) else JudgeSettings.from_dict(judge)
    prediction = spec.prediction(inp)
    ruled = spec.grade(inp)  # the formula's rule (exact_match_plus_format: the demo's plain exact match)
    accuracy, source, excluded, attempts = float(ruled.correct), "rule", False, 0
    if prediction is None or not prediction.strip():
        source = "none"
    elif settings.use == "always" or (settings.use == "undecided" and not ruled.decisive):
        verdict = await _judge(settings, inp, prediction, reward_router_address)
        attempts = verdict.attempts
        if verdict.score is not None:
            accuracy, source = float(verdict.score), "judge"
        elif settings.on_failure == "exclude":
            source, excluded = "failed", True
        else:
            source = "fallback"
    result = spec.combine(inp, accuracy, plain(params) or None)
    result.accuracy_source = source  # type: ignore[assignment]
    result.excluded = excluded
    result.judge_attempts = attempts
    return result


async def _judge(settings: JudgeSettings, inp: RewardInput, prediction: str, reward_router_address: str | None):
    from visionr3.reward.judge.client import judge_client
    from visionr3.reward.judge.config import JudgeConfig

    client_config = dict(settings.client or {})
    if settings.backend == "local":
        if not reward_router_address:
            raise ValueError(
                "visionr3.reward.judge.backend=local needs verl's generative reward model: set "
                "reward.reward_model.enable=True and reward.reward_model.model_path=<judge checkpoint>"
            )
        client_config["base_url"] = f"http://{reward_router_address}/v1"
        client_config["api_key_env"] = None  # verl's router inside the job needs no key
    client = judge_client(JudgeConfig.from_dict(client_config))
    return await client.judge(inp.question, inp.ground_truth, prediction)


async def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping | None = None,
    *,
    formula: str | None = None,
    params: Mapping[str, Any] | None = None,
    judge: Mapping[str, Any] | None = None,
    reward_router_address: str | None = None,
    reward_model_tokenizer: Any = None,
    recipe: str | None = None,
    **_: Any,
) -> dict[str, float]:
    """verl's custom reward function: ``{"score": ..., <component>: ..., judge_failed, excluded, ...}``.

    ``recipe`` is the deprecated name of ``formula`` (:func:`formula_name`)."""
    inp = reward_input(data_source, solution_str, ground_truth, extra_info)
    result = await score_input(inp, formula, params, judge, reward_router_address, recipe=recipe)
    out = result.as_verl_dict()
    info = extra_info or {}
    for key in ECHOED_TOOL_METRICS:
        value = info.get(key)
        if isinstance(value, (int, float)) and key not in out:
            out[key] = float(value)
    return out
