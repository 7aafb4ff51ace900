"""The row: one record of the verl RLHF parquet files visionr3 trains and evaluates on (:class:`VisionRow`).

Who writes rows: the per-format converters (:mod:`visionr3.data.converters`, run by ``visionr3 prepare``), the
synthetic demo task (:mod:`visionr3.demo.synthetic`) and the lmms-eval model (:mod:`visionr3.eval.lmms`, in memory).
Who reads them: the dataset (:class:`visionr3.data.dataset.VisionRLDataset`, verl's ``RLHFDataset``: ``prompt`` and
``images`` become the model input, ``agent_name`` picks the agent loop), the reward (``reward_model.ground_truth``,
``data_source``, ``extra_info.question``) and ``visionr3 eval`` (which re-prompts multiple-choice rows from their
``extra_info``). :func:`validate_row` checks the invariants every written row keeps; :class:`RowError` is how a
producer says one source record cannot become a row.

**Images** are stored as bytes (``{"bytes": ..., "path": None}``, the Hugging Face image dict), so a parquet file is
self-contained for Ray jobs, or as a checked absolute path (``{"image": "/abs/x.jpg"}``, ``--keep-paths``). The prompt
image is always the full-resolution source, so tools never need ``create_kwargs.image``. VisionThink's Smart rows
carry their target size as ``resized_width``/``resized_height`` = 2 × ``(tgt_width, tgt_height)`` on the image dict
(see :func:`visionr3.data.converters.visionthink_smart`).

**Multiple choice** (V*, MMVP, CV-Bench, HR-Bench, MME-RealWorld). Options are kept in their source order —
evaluation shuffles them with a fixed seed, never ``visionr3 prepare`` — and the question the model reads is
:func:`visionr3.data.prompts.mc_prompt`. The ground truth is the option letter (:data:`LETTERS`);
``extra_info.options`` holds the option texts in letter order, which is what :func:`visionr3.reward.grade.grade` needs
to accept either the letter or the option's text. ``extra_info`` keeps everything an evaluator needs to re-shuffle and
re-prompt (:class:`MultipleChoiceInfo`): rebuild the text with :func:`~visionr3.data.prompts.mc_question`/
:func:`~visionr3.data.prompts.mc_prompt` on the permuted options and the prompt with
``STYLES[info["prompt_style"]]`` (:data:`visionr3.data.prompts.STYLES`).
"""

from __future__ import annotations

from typing import Any, TypedDict

IMAGE = "<image>"
"""Where an image goes in a prompt's text: the n-th placeholder is the n-th entry of the row's ``images``."""

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
"""Option letters: option ``i`` of a multiple-choice row is ``LETTERS[i]``, and its ground truth is a letter."""


class VisionRow(TypedDict):
    """One verl RLHF row as visionr3 writes it (``RLHFDataset`` reads these columns)."""

    data_source: str
    agent_name: str
    prompt: list[dict[str, str]]  # chat messages; the user content holds one "<image>" per image
    images: list[dict[str, Any]]  # HF image dicts {"bytes": the file, "path": None}, or {"image": abs path}
    reward_model: dict[str, str]  # {"style": "rule", "ground_truth": answer}
    extra_info: dict[str, Any]  # index, question, and what the producer keeps (MultipleChoiceInfo, the square's box)


class MultipleChoiceInfo(TypedDict):
    """``extra_info`` of an evaluation row: what a scorer and a shuffling evaluator need, options in source order."""

    index: int  # position of the record in the source file
    benchmark: str  # vstar, mmvp, cvbench, hrbench_4k, ...
    source_id: str  # the benchmark's own id ("" when it has none)
    question: str  # mc_question(question_stem, options): what a judge or Vision-SR1's text-only pass reads
    question_stem: str  # the question without options
    options: list[str]  # option texts, A first
    answer: str  # the correct letter (also the ground truth)
    answer_text: str  # the correct option's text
    category: str  # the benchmark's category ("" when it has none)
    prompt_style: str  # the PromptStyle the prompt was written with


class RowError(ValueError):
    """One source record cannot become a row. ``field`` is the source field at fault (dotted for nested fields),
    ``kind`` a short reason that ``visionr3 prepare`` counts in its summary (``image not found``, ``missing field``)."""

    def __init__(self, field: str, message: str, kind: str):
        super().__init__(f"field '{field}': {message}")
        self.field = field
        self.message = message
        self.kind = kind


def validate_row(row: VisionRow) -> None:
    """The invariants every written row keeps, whatever its format (verl asserts some of them much later)."""
    placeholders = sum(str(m.get("content", "")).count(IMAGE) for m in row["prompt"])
    if placeholders != len(row["images"]):
        message = f"{placeholders} {IMAGE} placeholder(s) for {len(row['images'])} image(s)"
        raise RowError("prompt", message, "placeholder mismatch")
    if not any(m.get("role") == "user" for m in row["prompt"]):
        raise RowError("prompt", "no user turn", "missing field")
    if not str(row["reward_model"].get("ground_truth", "")).strip():
        raise RowError("answer", "empty answer", "empty answer")
