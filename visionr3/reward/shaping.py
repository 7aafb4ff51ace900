"""Group-level reward shaping and GRPO advantages over a batch of scored trajectories — pure functions.

Some rewards depend on the other rollouts of the same prompt, so they cannot be computed by a per-trajectory reward
function (verl scores each trajectory as soon as it finishes). visionr3 applies them at the advantage step, through
its registered trainer mode (:mod:`visionr3.train.trainer`), where all ``n`` rollouts of every prompt are present:

- **VisionThink's apply-ratio penalty** (:func:`apply_ratio_penalties`), in both published forms:

  * ``paper`` (arXiv 2507.13348, Eq. 5): ``P = penalty · (1_direct · I(r < θ) + 1_tool · I(r ≥ θ))`` subtracted from
    every rollout, where ``r`` is the share of the prompt's *correct* rollouts that answered directly. When few correct
    answers come without the tool, direct answers are penalised (asking for the high-resolution image is preferred);
    otherwise tool use is. ``r`` is undefined when no rollout is correct; then nothing is penalised (Eq. 5's
    ``0/0`` has no meaning, and penalising a group that learned nothing only adds noise). Pair it with the
    ``visionthink`` formula's ``tool_call_penalty: 0``, or the tool's 0.1 discount is paid twice.
  * ``code`` (the released trainer, ``ray_trainer.py`` ``fit()``): ``r = #correct direct / (#correct + 1e-4)``, and
    when ``0 < r < θ`` every *correct direct* rollout loses ``penalty``. Since the formula already discounts correct
    tool answers by 0.1, direct and tool answers then tie; nothing ever favours the tool (see papers.md §1.4). Kept
    because reproducing the released numbers needs it.

- **Exclusion** (:func:`grpo_advantages`): a trajectory whose judge failed after every retry, under
  ``judge.on_failure: exclude``, gets advantage 0 and is left out of its group's mean and std — never a silent 0
  reward that the group would learn from.

- **Decoupled advantages** (Vision-SR1's v2): the advantage is the sum of separately normalised advantages of reward
  *terms* (e.g. the answer reward and the visual reward) instead of the advantage of their sum (the released code).

- **Zero-variance groups** (:func:`zero_variance_groups`): groups whose rewards are all equal (std < 1e-4, as in
  VisionThink) carry no GRPO signal. GRPO already gives them advantage 0; dropping and *refilling* them (DAPO) is
  verl's own ``algorithm.filter_groups`` (see docs/rewards-and-judges.md), this function only measures them.

Every function takes plain arrays and returns new ones; nothing here knows about verl or Ray.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from visionr3.agent.trajectory import TOOL_CALLS

ApplyRatioVariant = Literal["paper", "code"]
ZERO_VARIANCE_STD = 1e-4
"""VisionThink's rejection-sampling threshold on a group's reward std."""


@dataclass(frozen=True)
class ApplyRatioConfig:
    """``visionr3.shaping.apply_ratio``: ``theta`` (θ, 0.2 in the paper), ``penalty`` (0.1), ``variant``."""

    enable: bool = False
    variant: ApplyRatioVariant = "paper"
    theta: float = 0.2
    penalty: float = 0.1
    correct_threshold: float = 0.5  # accuracy above this counts as correct (judge scores are 0/1)

    @classmethod
    def from_dict(cls, raw: Mapping | None) -> "ApplyRatioConfig":
        raw = dict(raw or {})
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"visionr3.shaping.apply_ratio: unknown keys {sorted(unknown)}")
        config = cls(**raw)
        if config.variant not in ("paper", "code"):
            raise ValueError(f"visionr3.shaping.apply_ratio.variant must be 'paper' or 'code', got {config.variant!r}")
        return config


def group_indices(uids: Sequence[str]) -> dict[str, np.ndarray]:
    """``{uid: row indices}``, in first-appearance order."""
    groups: dict[str, list[int]] = {}
    for row, uid in enumerate(uids):
        groups.setdefault(str(uid), []).append(row)
    return {uid: np.asarray(rows, dtype=np.int64) for uid, rows in groups.items()}


def direct_answer_ratio(correct: np.ndarray, called_tool: np.ndarray) -> float | None:
    """Share of the correct rollouts that answered without the tool; ``None`` when none is correct."""
    n_correct = int(correct.sum())
    if n_correct == 0:
        return None
    return float((correct & ~called_tool).sum()) / n_correct


def apply_ratio_penalties(
    uids: Sequence[str],
    accuracy: Sequence[float],
    called_tool: Sequence[bool],
    config: ApplyRatioConfig,
    valid: Sequence[bool] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row penalties (≥ 0, to subtract from the score) and per-row group ratio ``r`` (NaN where undefined).

    ``valid`` (default: all) leaves rows out of the ratio and unpenalised (excluded or padding rows).
    """
    accuracy = np.asarray(accuracy, dtype=np.float64)
    called = np.asarray(called_tool, dtype=bool)
    valid_rows = np.ones(len(accuracy), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    correct = (accuracy > config.correct_threshold) & valid_rows
    penalties = np.zeros(len(accuracy))
    ratios = np.full(len(accuracy), np.nan)
    if not config.enable:
        return penalties, ratios
    for rows in group_indices(uids).values():
        group_valid = valid_rows[rows]
        if config.variant == "paper":
            r = direct_answer_ratio(correct[rows], called[rows])
            if r is None:
                continue
            ratios[rows] = r
            punish = ~called[rows] if r < config.theta else called[rows]
            penalties[rows] = config.penalty * (punish & group_valid)
        else:  # the released code: r = #(pen == 1.0) / (#(pen > 0) + 1e-4), penalising correct direct answers only
            correct_direct = correct[rows] & ~called[rows]
            r = float(correct_direct.sum()) / (float(correct[rows].sum()) + 1e-4)
            ratios[rows] = r
            if 0.0 < r < config.theta:
                penalties[rows] = config.penalty * correct_direct
    return penalties, ratios


def zero_variance_groups(uids: Sequence[str], scores: Sequence[float], eps: float = ZERO_VARIANCE_STD) -> set[str]:
    """Groups (of ≥ 2 rollouts) whose scores have std < ``eps``: no GRPO signal."""
    scores = np.asarray(scores, dtype=np.float64)
    return {uid for uid, rows in group_indices(uids).items() if len(rows) > 1 and scores[rows].std() < eps}


def grpo_advantages(
    uids: Sequence[str],
    scores: Sequence[float],
    valid: Sequence[bool] | None = None,
    *,
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> np.ndarray:
    """Outcome advantages per row, as verl's ``compute_grpo_outcome_advantage`` but with excluded rows.

    Valid rows: ``(s - mean) / (std + eps)`` over the group's valid rows (``std`` unbiased, as torch's default,
    which verl uses). Invalid rows get 0 and do not enter the statistics. A group of one row keeps verl's convention
    (mean 0, std 1: the advantage is the score); a group left with fewer than 2 valid rows *by exclusion* gets 0, as
    there is nothing to compare against.
    """
    scores = np.asarray(scores, dtype=np.float64)
    valid_rows = np.ones(len(scores), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    advantages = np.zeros(len(scores))
    for rows in group_indices(uids).values():
        kept = rows[valid_rows[rows]]
        if len(rows) == 1:
            advantages[kept] = scores[kept]
            continue
        if len(kept) < 2:
            continue
        values = scores[kept]
        centred = values - values.mean()
        advantages[kept] = centred / (values.std(ddof=1) + eps) if norm_by_std else centred
    return advantages


def decoupled_advantages(
    uids: Sequence[str],
    terms: Mapping[str, Sequence[float]],
    valid: Sequence[bool] | None = None,
    *,
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> np.ndarray:
    """Sum over reward terms of each term's own GRPO advantage (Vision-SR1 v2's decoupled advantages)."""
    if not terms:
        raise ValueError("decoupled advantages need at least one reward term")
    total = np.zeros(len(uids))
    for values in terms.values():
        total += grpo_advantages(uids, values, valid, norm_by_std=norm_by_std, eps=eps)
    return total


def shape_scores(
    uids: Sequence[str], scores: np.ndarray, rewards: Sequence[Mapping[str, Any]], valid: np.ndarray, config: Any
) -> tuple[np.ndarray, dict[str, float]]:
    """Scores after the apply-ratio penalty, and its metrics. ``config`` is ``visionr3.shaping`` (or ``None``)."""
    apply_ratio = ApplyRatioConfig.from_dict((config or {}).get("apply_ratio"))
    if not apply_ratio.enable:
        return scores, {}
    accuracy = [float(r.get("accuracy", 0.0)) for r in rewards]
    called = [float(r.get(TOOL_CALLS, r.get("tool", 0.0)) or 0.0) > 0 for r in rewards]
    penalties, ratios = apply_ratio_penalties(uids, accuracy, called, apply_ratio, valid)
    defined = ratios[~np.isnan(ratios)]
    metrics = {
        "visionr3/shaping/apply_ratio_penalty/mean": float(penalties[valid].mean()) if valid.any() else 0.0,
        "visionr3/shaping/penalised_rate": float((penalties[valid] > 0).mean()) if valid.any() else 0.0,
        "visionr3/shaping/direct_answer_ratio/mean": float(defined.mean()) if defined.size else float("nan"),
    }
    return scores - penalties, metrics


def custom_advantages(
    uids: Sequence[str],
    scores: np.ndarray,
    rewards: Sequence[Mapping[str, Any]],
    valid: np.ndarray,
    decouple: Mapping[str, float] | None,
    *,
    norm_by_std: bool = True,
) -> np.ndarray:
    """Per-row scalar advantages with excluded rows left out, decoupled by reward term when asked."""
    if not decouple:
        return grpo_advantages(uids, scores, valid, norm_by_std=norm_by_std)
    terms: dict[str, np.ndarray] = {}
    rest = scores.astype(np.float64).copy()
    for name, weight in decouple.items():
        values = np.array([float(r.get(name, 0.0)) for r in rewards])
        terms[name] = values
        rest -= float(weight) * values
    terms["rest"] = rest
    return decoupled_advantages(uids, terms, valid, norm_by_std=norm_by_std)
