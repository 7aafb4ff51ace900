"""Typed contracts of the reward stage: what a scorer reads (:class:`RewardInput`) and returns (:class:`RewardScore`).

The verl custom reward function (:func:`visionr3.reward.score.compute_score`) builds a ``RewardInput`` from verl's
arguments (``solution_str``, ``ground_truth``, ``extra_info`` — which carries the agent loop's ``extra_fields``), the
pure scorers and the judge turn it into a ``RewardScore``, and :meth:`RewardScore.as_verl_dict` is what verl logs:
``score`` is the scalar verl puts on the last response token, every other key becomes its own metric
(``visionr3/reward/<key>/mean`` in training, ``val-aux/...`` in validation) and is available to group-level shaping
(:mod:`visionr3.reward.shaping`) at the advantage step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

AccuracySource = Literal["rule", "judge", "fallback", "failed", "none"]
"""Where an accuracy came from: a rule decided it; the judge did; the judge failed and the rule decided instead
(``fallback``); the judge failed and the sample is excluded from its group (``failed``); nothing to grade (``none``,
e.g. no answer at all)."""

SelfRewardStatus = Literal["answered", "no_description", "empty_description", "leaky_description", "failed", "off"]
"""Vision-SR1's second pass: ``answered`` — the policy answered from its description; the others earn a visual
reward of 0 without a second pass (``leaky_description``: the description contains ``\\boxed{}``/``<answer>``, i.e. it
would hand the answer to the text-only pass); ``failed`` — the second generation itself failed; ``off`` — not run."""


@dataclass(frozen=True)
class RewardInput:
    """One finished trajectory, as the reward stage sees it.

    - ``response``: the whole response decoded with special tokens skipped (tool turns included as text), as verl
      passes it in ``solution_str``;
    - ``turns``: the assistant's own segments in order (the response-mask-1 runs, decoded), so per-turn format rules
      need not re-split the text; empty means "treat ``response`` as one turn";
    - ``ground_truth``: the reference answer as a string (a list in the dataset is joined with ``"/"``, VLM-R3's
      convention for alternatives);
    - ``question``: the question text without image placeholders, for the judge prompt;
    - ``options``: multiple-choice option texts in letter order (``A`` first), when the row has them;
    - ``tool_calls`` / ``valid_tool_calls`` / ``tool_images``: the agent loop's counters (images a tool inserted);
    - ``self_answer`` / ``self_status``: Vision-SR1's text-only second pass (see :data:`SelfRewardStatus`).
    """

    response: str
    ground_truth: str
    data_source: str = ""
    question: str = ""
    options: tuple[str, ...] = ()
    turns: tuple[str, ...] = ()
    tool_calls: int = 0
    valid_tool_calls: int = 0
    tool_images: int = 0
    self_answer: str | None = None
    self_status: SelfRewardStatus = "off"

    @property
    def called_tool(self) -> bool:
        return self.tool_calls > 0


@dataclass
class RewardScore:
    """A scored trajectory: the scalar verl trains on plus every component as its own number.

    ``components`` keys are fixed per formula and always present (a missing term is reported as 0.0, never left out,
    so means are comparable across steps): e.g. ``accuracy``, ``format``, ``tool``, ``visual``, ``region``,
    ``length``, ``penalty``. ``accuracy_source`` says who decided the accuracy; ``excluded`` marks a sample whose
    judge failed under ``on_failure: exclude`` — its advantage is set to 0 and it is left out of its group's
    statistics at the advantage step.
    """

    score: float
    components: dict[str, float] = field(default_factory=dict)
    accuracy_source: AccuracySource = "rule"
    excluded: bool = False
    judge_attempts: int = 0

    def as_verl_dict(self) -> dict[str, float]:
        """``{"score": ..., <components>..., "judge_failed": 0/1, "excluded": 0/1, "judged": 0/1}`` — numbers only, so
        verl's metric reduction and TransferQueue handle every key."""
        out = {"score": float(self.score)}
        out.update({key: float(value) for key, value in self.components.items()})
        out["judged"] = float(self.accuracy_source in ("judge", "fallback", "failed"))
        out["judge_failed"] = float(self.accuracy_source in ("fallback", "failed"))
        out["excluded"] = float(self.excluded)
        return out
