"""The evaluation protocol: every knob that moves a benchmark number, with its default, written into every result.

Peers' V*/HR-Bench numbers move 3–7 points with the option order (DeepEyes' V* script always put the answer first),
the judge and the image caps (papers.md §4.5, §2.5). :class:`EvalProtocol` names all of them; ``visionr3 eval``
writes ``protocol.as_dict()`` into every JSONL record and into the summary, and refuses to resume a file written
under a different protocol.

Option shuffling is a pure function of ``(shuffle_seed, benchmark, sample_id)`` (:func:`option_order`): the same
question gets the same order in every run, on every machine and whatever the row order or batch size, and the k
samples of one question see the same order (so Avg@k averages sampling noise, not option-order noise).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from visionr3.data.prompts import STYLES, mc_prompt, mc_question
from visionr3.data.rows import IMAGE, LETTERS


@dataclass(frozen=True)
class EvalProtocol:
    """What one evaluation run promises; ``None`` means "the recipe's value" (resolved before writing)."""

    recipe: str = "zoom"  # which training recipe's agent loop, tools, prompt style and reward formula
    agent_loop: str = ""  # the agent loop name (resolved from the recipe)
    samples: int = 1  # k: answers per question; accuracy is the mean over them (Avg@k)
    temperature: float = 0.0  # 0 = greedy in every turn
    top_p: float = 1.0
    top_k: int = -1
    seed: int = 0  # sampling seed (request i of sample k uses seed + k; unused when greedy)
    shuffle_options: bool = True
    shuffle_seed: int = 0
    max_turns: int | None = None  # assistant turns per trajectory (the loop's cap)
    max_response_tokens: int = 2048  # all turns together
    max_prompt_tokens: int = 8192
    min_pixels: int | None = None  # main image budget (Qwen smart_resize)
    max_pixels: int | None = None
    crop_min_pixels: int | None = None  # crop/resize tool output budget
    crop_max_pixels: int | None = None
    scoring: str = "rules"  # rules | judge
    judge_model: str | None = None
    backend: str = "hf"  # hf | vllm | openai
    extra: dict[str, Any] = field(default_factory=dict)  # other Hydra overrides the run was given

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if self.scoring not in ("rules", "judge"):
            raise ValueError(f"scoring must be 'rules' or 'judge', got {self.scoring!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.samples > 1 and self.temperature == 0:
            raise ValueError("samples > 1 with temperature 0 gives k identical greedy answers; set --temperature")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, other: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """``{knob: (this run's value, the other's)}`` for every knob that differs from a recorded protocol, compared
        as a JSON record stores them (tuples read back as lists)."""
        mine = json.loads(json.dumps(self.as_dict()))
        return {k: (mine.get(k), other.get(k)) for k in sorted(set(mine) | set(other)) if mine.get(k) != other.get(k)}

    def mismatch(self, other: Mapping[str, Any]) -> str:
        """``""`` when a recorded protocol is this one, else ``"knob: file X vs now Y, ..."`` for error messages."""
        return ", ".join(f"{k}: file {b!r} vs now {a!r}" for k, (a, b) in self.differences(other).items())


def option_order(num_options: int, *, seed: int, benchmark: str, sample_id: str) -> list[int]:
    """The permutation shown for one question: shown option ``i`` is source option ``order[i]``.

    Seeded by a hash of ``(seed, benchmark, sample_id)`` — not Python's salted ``hash`` — so it is the same in every
    process and every run."""
    digest = hashlib.sha256(f"{seed}\x00{benchmark}\x00{sample_id}".encode()).digest()
    order = list(range(num_options))
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    return order


@dataclass(frozen=True)
class ShownQuestion:
    """A multiple-choice row as the model will see it."""

    options: list[str]
    answer: str  # letter after shuffling
    answer_text: str
    order: list[int]
    prompt: list[dict[str, Any]]  # the row's chat messages with the shuffled options
    question: str  # mc_question with the shuffled options (the judge and Vision-SR1's text-only pass read it)


def shuffle_row(
    prompt: Sequence[Mapping[str, Any]], info: Mapping[str, Any], *, seed: int, sample_id: str, shuffle: bool = True
) -> ShownQuestion:
    """Re-prompt a multiple-choice row of ``visionr3 prepare`` (``extra_info`` = ``MultipleChoiceInfo``) with its
    options in :func:`option_order` (or in source order when ``shuffle`` is false).

    The prompt is rebuilt with the row's own prompt style (``STYLES[info["prompt_style"]]``); system messages the
    row had are kept. Raises ``ValueError`` naming the missing field when the row is not a multiple-choice row."""
    for name in ("options", "answer", "question_stem", "prompt_style"):
        if name not in info or info[name] in (None, ""):
            raise ValueError(f"extra_info.{name} is missing: not a multiple-choice row of `visionr3 prepare`")
    options = [str(o) for o in info["options"]]
    gold = LETTERS.index(str(info["answer"]).strip().upper())
    order = (
        option_order(len(options), seed=seed, benchmark=str(info.get("benchmark", "")), sample_id=sample_id)
        if shuffle
        else list(range(len(options)))
    )
    shown = [options[i] for i in order]
    letter = LETTERS[order.index(gold)]
    style = STYLES[str(info["prompt_style"])]
    num_images = sum(str(m.get("content", "")).count(IMAGE) for m in prompt) or 1
    messages = style.messages(mc_prompt(str(info["question_stem"]), shown), num_images)
    systems = [dict(m) for m in prompt if m.get("role") == "system"]
    if systems and not any(m.get("role") == "system" for m in messages):
        messages = systems + messages
    return ShownQuestion(
        options=shown,
        answer=letter,
        answer_text=options[gold],
        order=order,
        prompt=messages,
        question=mc_question(str(info["question_stem"]), shown),
    )


__all__ = ["EvalProtocol", "ShownQuestion", "option_order", "shuffle_row"]
