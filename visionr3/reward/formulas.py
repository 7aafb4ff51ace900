"""The reward formulas over a :class:`~visionr3.reward.types.RewardInput`, as data plus pure functions.

A *formula* (chosen by ``visionr3.reward.formula``) is one paper's reward; a *recipe* is a folder under ``recipes/``
that picks one. A :class:`Formula` answers three questions for :mod:`visionr3.reward.score`:

1. *which text is the answer* (:meth:`Formula.prediction`) — the grader and the judge see the same text;
2. *what do the rules say* (:meth:`Formula.grade`) — :func:`visionr3.reward.grade.grade` for every formula except
   ``exact_match_plus_format``, whose demo reward is a plain exact match;
3. *how do accuracy and the other terms combine* (:meth:`Formula.combine`) — the accuracy comes in from the caller
   (rules or judge), everything else (format, tool, region, ...) is computed here from the trajectory.

Weights and switches are the formula's ``defaults`` and can be overridden per call (``visionr3.reward.params``); an
unknown key is an error, not a silent no-op. Every term is returned as its own component, unweighted (``format`` is
the 0/1 — or DeepEyes' 0/−1 — check, ``tool`` the gated 0/1), so metrics are comparable across weightings;
``penalty`` is the amount actually subtracted.

The formulas (papers.md §1.3, §2.3, §3.2, §4.3, §5) and where they knowingly differ from the released code:

- ``visionthink``: ``(acc_weight − tool_call_penalty·[called])·acc + format_weight·format +
  use_tool_reward_weight·[called]``; ``[called]`` is the agent loop's call counter (a call with broken JSON still
  counts, as in the code).
- ``visionthink_general``: ``acc + 0.5·format``.
- ``vlm_r3``: ``acc + 0.5·format + region + length``; region is gated on ``acc == 1`` as the trainer did.
- ``vision_sr1``: ``0.9·acc + 0.1·format + 1.0·visual``; the visual reward is paid only for an ``answered`` second
  pass — the released code let a response without ``<description>`` hand its whole text, answer included, to the
  text-only pass.
- ``vision_r1``: ``0.9·acc + 0.1·format``.
- ``deepeyes``: ``variant="code"`` ``0.8·acc + 0.2·format + 1.2·tool`` or ``variant="paper"`` ``acc + format +
  1[acc>0]·tool``; tool credit comes from the agent's inserted-image counter, never from vision tokens in the text
  (which a policy can write); answers of ≥ 1000 characters get ``acc = 0`` and ``format = −1``.
- ``mini_o3``: accuracy only.
- ``exact_match_plus_format`` (the default; ``visionr3`` until the next release, see :data:`DEPRECATED_NAMES`): the
  CPU demo's reward, exact match of the last ``<answer>`` plus 0.1 for having one — numerically identical to
  ``visionr3.reward.rules.answer_match``.

Formulas read the model's own text — the assistant turns joined, or the response when the loop did not report turns
— so prompt text echoed in tool responses (VisionThink's and DeepEyes' observations both spell out ``<answer>``) is
never mistaken for an answer.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from visionr3.reward.extract import answer_tag, boxed, final_answer, last_line, tag_contents
from visionr3.reward.formats import (
    deepeyes_format,
    vision_r1_format,
    vision_sr1_format,
    visionthink_format,
    visionthink_general_format,
    vlm_r3_format,
)
from visionr3.reward.grade import Grade, grade
from visionr3.reward.types import RewardInput, RewardScore

logger = logging.getLogger(__name__)

Predictor = Callable[[RewardInput], "str | None"]
"""The answer text of a trajectory (``None``: no answer)."""
Combiner = Callable[[RewardInput, float, Mapping[str, Any]], "tuple[float, dict[str, float]]"]
"""``(input, accuracy, params) -> (score, components)``."""
Grader = Callable[["str | None", str, Sequence[str]], Grade]
"""``(prediction, ground_truth, options) -> Grade``."""


def _rule_grade(prediction: str | None, ground_truth: str, options: Sequence[str]) -> Grade:
    return grade(prediction, ground_truth, options=options)


@dataclass(frozen=True)
class Formula:
    """One paper's reward: which text is the answer, how the rules grade it, and how the terms combine."""

    name: str
    components: tuple[str, ...]
    defaults: Mapping[str, Any]
    predict: Predictor = field(repr=False)
    combiner: Combiner = field(repr=False)
    grader: Grader = field(default=_rule_grade, repr=False)

    def prediction(self, inp: RewardInput) -> str | None:
        """The answer text the grader *and* the judge see."""
        return self.predict(inp)

    def grade(self, inp: RewardInput) -> Grade:
        """The rules' verdict on :meth:`prediction` (exact match for ``exact_match_plus_format``, :func:`grade`
        otherwise)."""
        return self.grader(self.prediction(inp), inp.ground_truth, inp.options)

    def params(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``defaults`` updated with ``overrides``; an unknown key raises, naming the config key."""
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"visionr3.reward.params: unknown key(s) {unknown} for formula {self.name!r}; "
                f"known: {sorted(self.defaults)}"
            )
        return {**self.defaults, **overrides}

    def combine(self, inp: RewardInput, accuracy: float, params: Mapping[str, Any] | None = None) -> RewardScore:
        """Score plus every component (all of :attr:`components`, missing ones as 0.0); ``accuracy_source`` is left at
        its default — the caller knows who decided the accuracy."""
        score, terms = self.combiner(inp, float(accuracy), self.params(params))
        extra = sorted(set(terms) - set(self.components))
        if extra:
            raise AssertionError(f"formula {self.name!r} reported undeclared components {extra}")
        return RewardScore(score=float(score), components={key: float(terms.get(key, 0.0)) for key in self.components})


def _formula(
    name: str,
    components: Sequence[str],
    defaults: Mapping[str, Any],
    predict: Predictor,
    combiner: Combiner,
    grader: Grader = _rule_grade,
) -> Formula:
    return Formula(name, tuple(components), MappingProxyType(dict(defaults)), predict, combiner, grader)


def assistant_text(inp: RewardInput) -> str:
    """The model's own text: its turns joined with a space (as VisionThink joined them), else the response."""
    return " ".join(inp.turns) if inp.turns else inp.response


# --- exact_match_plus_format (the CPU demo) -------------------------------------------------------------------------


def _last_answer_tag(inp: RewardInput) -> str | None:
    return answer_tag(inp.response, "last")


def _exact_grade(prediction: str | None, ground_truth: str, options: Sequence[str]) -> Grade:
    """``answer_match``'s rule: the answer equals the ground truth, case and surrounding whitespace ignored."""
    if prediction is None:
        return Grade(False, True, "none")
    return Grade(prediction.lower() == str(ground_truth).strip().lower(), True, "exact")


def _exact_match_plus_format(inp: RewardInput, accuracy: float, p: Mapping[str, Any]) -> tuple[float, dict[str, float]]:
    has_format = float(answer_tag(inp.response, "last") is not None)
    return accuracy + p["format_weight"] * has_format, {"accuracy": accuracy, "format": has_format}


# --- VisionThink ----------------------------------------------------------------------------------------------------


def _split_answer(inp: RewardInput) -> str | None:
    return answer_tag(assistant_text(inp), "split")


def _visionthink(inp: RewardInput, accuracy: float, p: Mapping[str, Any]) -> tuple[float, dict[str, float]]:
    called = float(inp.called_tool)
    fmt = visionthink_format(inp.turns or (inp.response,))
    penalty = p["tool_call_penalty"] * called * accuracy
    score = (p["acc_weight"] - p["tool_call_penalty"] * called) * accuracy
    score += p["format_weight"] * fmt + p["use_tool_reward_weight"] * called
    return score, {"accuracy": accuracy, "format": fmt, "tool": called, "penalty": penalty}


def _visionthink_general(inp: RewardInput, accuracy: float, p: Mapping[str, Any]) -> tuple[float, dict[str, float]]:
    fmt = visionthink_general_format(assistant_text(inp))
    return p["acc_weight"] * accuracy + p["format_weight"] * fmt, {"accuracy": accuracy, "format": fmt}


# --- VLM-R3 ---------------------------------------------------------------------------------------------------------

# VLM-R3's r'\{"bbox_2d":\s*\[[^\]]*\]\}', with brackets and braces also excluded inside the list: the original is
# quadratic on a sample of many unclosed calls, and no valid box contains them.
_BBOX_CALL = re.compile(r'\{"bbox_2d":\s*\[[^\][{}]*\]\}')


def vlm_r3_unique_boxes(text: str) -> int | None:
    """Distinct region calls in the text; ``None`` if any ``{…}`` mentioning ``bbox`` is not JSON with ``bbox_2d``.

    VLM-R3's ``repeat_reward``: one malformed call voids the whole region reward.
    """
    unique: set[str] = set()
    for inner in tag_contents(text, "{", "}"):  # re.findall(r"\{.*?\}", DOTALL), in linear time
        chunk = "{" + inner + "}"
        if "bbox" not in chunk:
            continue
        try:
            obj = json.loads(chunk)
            obj["bbox_2d"]
            unique.add(json.dumps(obj, sort_keys=True))
        except Exception:  # noqa: BLE001 - any failure (bad JSON, a list, no key) is a malformed call
            return None
    return len(unique)


def vlm_r3_min_segment_chars(text: str) -> int:
    """Length of the shortest reasoning segment between region calls (VLM-R3's ``length_reward``).

    The text before ``<answer>``, think tags removed, whitespace collapsed, split on ``{"bbox_2d": […]}``; empty
    segments are dropped except the first and last — so reasoning that *ends* on a call has a 0-length last segment
    and earns nothing, while a crop-free answer earns the full bonus (papers.md §2.5 lists both as weaknesses; kept
    for fidelity).
    """
    thinking = text.split("<answer>")[0].strip().replace("<think>", "").replace("</think>", "")
    thinking = re.sub(r"\s+", " ", thinking).strip()
    segments = re.split(_BBOX_CALL, thinking)
    last = len(segments) - 1
    kept = [segment.strip() for i, segment in enumerate(segments) if segment.strip() or i in (0, last)]
    return min((len(segment) for segment in kept), default=0)


def _vlm_r3_prediction(inp: RewardInput) -> str | None:
    text = assistant_text(inp)
    tagged = answer_tag(text, "last")
    return tagged if tagged is not None else last_line(text)


def _vlm_r3(inp: RewardInput, accuracy: float, p: Mapping[str, Any]) -> tuple[float, dict[str, float]]:
    text = assistant_text(inp)
    fmt = vlm_r3_format(text)
    boxes = vlm_r3_unique_boxes(text)
    region = p["region_weight"] * min(1, boxes) if boxes else 0.0
    if p["region_requires_correct"] and accuracy < 1.0:
        region = 0.0
    length = max(0.0, min(p["length_cap"], p["length_per_char"] * vlm_r3_min_segment_chars(text)))
    score = p["acc_weight"] * accuracy + p["format_weight"] * fmt + region + length
    return score, {"accuracy": accuracy, "format": fmt, "region": region, "length": length}


# --- Vision-SR1 / Vision-R1 ------------------------------------------------------------------------------------------


def boxed_after_think(text: str) -> str | None:
    """The last ``\\boxed{}`` after the last ``</think>`` (the whole text if there is none), else
    :func:`~visionr3.reward.extract.final_answer`."""
    inner = boxed(text.split("</think>")[-1])
    return inner if inner is not None else final_answer(text)


def _boxed_prediction(inp: RewardInput) -> str | None:
    return boxed_after_think(assistant_text(inp))


def visual_reward(inp: RewardInput) -> float:
    """Vision-SR1's visual term: 1.0 iff the text-only second pass, answering from the description alone, is right.

    Only an ``answered`` second pass can earn it; a missing, empty or leaky description (see
    :data:`~visionr3.reward.types.SelfRewardStatus`) earns 0 without being graded.
    """
    if inp.self_status != "answered" or not inp.self_answer:
        return 0.0
    answer = boxed(inp.self_answer)
    if answer is None:
        answer = final_answer(inp.self_answer)
    return float(grade(answer, inp.ground_truth, options=inp.options).correct)


def _vision_sr1(inp: RewardInput, accuracy: float, p: Mapping[str, Any]) -> tuple[float, dict[str, float]]:
    fmt = vision_sr1_format(assistant_text(inp))
    visual = visual_reward(inp)
    score = p["acc_weight"] * accuracy + p["format_weight"] * fmt + p["visual_weight"] * visual
    return score, {"accuracy": accuracy, "format": fmt, "visual": visual}


def _vision_r1(inp: RewardInput, accuracy: float, p: Mapping[str, Any]) -> tuple[float, dict[str, float]]:
    fmt = vision_r1_format(assistant_text(inp))
    return p["acc_weight"] * accuracy + p["format_weight"] * fmt, {"accuracy": accuracy, "format": fmt}


# --- DeepEyes ---------------------------------------------------------------------------------------------------------

DEEPEYES_WEIGHTS = {"code": (0.8, 0.2, 1.2), "paper": (1.0, 1.0, 1.0)}
"""(accuracy, format, tool) weights per variant: the released ``vl_agent.py`` and the paper's formula (issue #83)."""


def _deepeyes(inp: RewardInput, accuracy: float, p: Mapping[str, Any]) -> tuple[float, dict[str, float]]:
    variant = p["variant"]
    if variant not in DEEPEYES_WEIGHTS:
        raise ValueError(f"visionr3.reward.params.variant must be one of {sorted(DEEPEYES_WEIGHTS)}, got {variant!r}")
    acc_weight, format_weight, tool_weight = (
        default if p[key] is None else p[key]
        for key, default in zip(("acc_weight", "format_weight", "tool_weight"), DEEPEYES_WEIGHTS[variant])
    )
    text = assistant_text(inp)
    fmt = deepeyes_format(text)
    answer = answer_tag(text, "split")
    # The guard reads what the released code judged: the tagged answer, or the whole text when there is no tag.
    if len(answer if answer is not None else text) >= p["max_answer_chars"]:
        accuracy, fmt = 0.0, -1.0
    threshold = 0.5 if variant == "code" else 0.0
    tool = float(inp.tool_images >= 1 and accuracy > threshold)
    score = acc_weight * accuracy + format_weight * fmt + tool_weight * tool
    return score, {"accuracy": accuracy, "format": fmt, "tool": tool}


# --- Mini-o3 ----------------------------------------------------------------------------------------------------------


def _final_answer_prediction(inp: RewardInput) -> str | None:
    return final_answer(assistant_text(inp))


def _accuracy_only(inp: RewardInput, accuracy: float, p: Mapping[str, Any]) -> tuple[float, dict[str, float]]:
    return accuracy, {"accuracy": accuracy}


_ALL = (
    _formula(
        "exact_match_plus_format",
        ("accuracy", "format"),
        {"format_weight": 0.1},
        _last_answer_tag,
        _exact_match_plus_format,
        _exact_grade,
    ),
    _formula(
        "visionthink",
        ("accuracy", "format", "tool", "penalty"),
        {"acc_weight": 1.0, "tool_call_penalty": 0.1, "format_weight": 0.5, "use_tool_reward_weight": 0.0},
        _split_answer,
        _visionthink,
    ),
    _formula(
        "visionthink_general",
        ("accuracy", "format"),
        {"acc_weight": 1.0, "format_weight": 0.5},
        _split_answer,
        _visionthink_general,
    ),
    _formula(
        "vlm_r3",
        ("accuracy", "format", "region", "length"),
        {
            "acc_weight": 1.0,
            "format_weight": 0.5,
            "region_weight": 0.5,
            "region_requires_correct": True,
            "length_per_char": 0.01,
            "length_cap": 0.10,
        },
        _vlm_r3_prediction,
        _vlm_r3,
    ),
    _formula(
        "vision_sr1",
        ("accuracy", "format", "visual"),
        {"acc_weight": 0.9, "format_weight": 0.1, "visual_weight": 1.0},
        _boxed_prediction,
        _vision_sr1,
    ),
    _formula(
        "vision_r1", ("accuracy", "format"), {"acc_weight": 0.9, "format_weight": 0.1}, _boxed_prediction, _vision_r1
    ),
    _formula(
        "deepeyes",
        ("accuracy", "format", "tool"),
        {"variant": "code", "acc_weight": None, "format_weight": None, "tool_weight": None, "max_answer_chars": 1000},
        _split_answer,
        _deepeyes,
    ),
    _formula("mini_o3", ("accuracy",), {}, _final_answer_prediction, _accuracy_only),
)
FORMULAS: Mapping[str, Formula] = MappingProxyType({formula.name: formula for formula in _ALL})
"""Every formula by name. DeepEyes' ``None`` weights mean "the variant's" (see :data:`DEEPEYES_WEIGHTS`)."""

DEFAULT_FORMULA = "exact_match_plus_format"
"""What ``visionr3.reward.formula: null`` (and a call that names none) scores with."""

DEPRECATED_NAMES: Mapping[str, str] = MappingProxyType({"visionr3": "exact_match_plus_format"})
"""Old formula names still accepted until the next release, with a deprecation warning: old -> new."""

_warned: set[str] = set()


def warn_deprecated(message: str) -> None:
    """A ``DeprecationWarning`` and a logged warning, once per process per message (verl calls the reward function
    once per trajectory; Python hides ``DeprecationWarning`` outside ``__main__`` by default, so it is logged too)."""
    if message in _warned:
        return
    _warned.add(message)
    warnings.warn(message, DeprecationWarning, stacklevel=3)
    logger.warning(message)


def get_formula(name: str) -> Formula:
    """The formula called ``name`` (a deprecated name warns and maps to its successor); a ``KeyError`` lists the
    known names."""
    if name in DEPRECATED_NAMES:
        new = DEPRECATED_NAMES[name]
        warn_deprecated(
            f"visionr3.reward.formula={name} is deprecated, use visionr3.reward.formula={new} "
            "(the old name is removed in the next release)"
        )
        name = new
    try:
        return FORMULAS[name]
    except KeyError:
        raise KeyError(
            f"unknown reward formula {name!r} (visionr3.reward.formula); known: {sorted(FORMULAS)}"
        ) from None
