"""The judge's prompt presets and verdict parsers: pure text in, a verdict out (no I/O, no client).

**Only the judge's final verdict counts.** Each preset's parser takes the *last* verdict in its own format
(VisionThink's last ``Score: 0|1``, Qwen3's last ``[[YES]]``/``[[NO]]`` after the last ``</think>``, ...), never
``'1' in reply``. A chatty judge that quotes the prediction — and the prediction contains ``Score: 1`` — therefore
cannot flip a verdict, and a reply without a verdict is a *failed attempt* (the client retries it,
:mod:`visionr3.reward.judge.client`), never a silent 0 or 1.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

VerdictParser = Callable[[str], "float | None"]
"""``parse(reply) -> 1.0 | 0.0 | None``: the judge's final verdict, ``None`` when the reply carries none."""


# ====================================================================================================================
# Verdict parsers. Each returns the LAST verdict in its format, or None. They never look for a bare digit anywhere in
# the reply, so a quoted prediction cannot supply the verdict unless the judge ends its reply with it.
# ====================================================================================================================

# "Score: 1", "score:0.0", "**Score:** 1", "Score: **1**" — not "Score: 1.5", "Score: 10".
_SCORE = re.compile(r"score(?:\*\*)?\s*:\s*(?:\*\*)?\s*([01])(?:\.0+)?(?!\.?\d)", re.IGNORECASE)
_YES_NO = re.compile(r"\[\[\s*(YES|NO)\s*\]\]", re.IGNORECASE)
_FLOAT_01 = re.compile(r"(?<![\d.])([01])\.0+(?!\.?\d)")
_JUDGEMENT = re.compile(r"judg?ement\s*:\s*(?:\*\*)?\s*([01])(?:\.0+)?(?!\.?\d)", re.IGNORECASE)
_JUDGMENT_TAG = re.compile(r"<judgment>(.*?)</judgment>", re.IGNORECASE | re.DOTALL)
_NEGATIVE = re.compile(r"\b(?:incorrect|not correct|wrong)\b", re.IGNORECASE)
_POSITIVE = re.compile(r"\bcorrect\b", re.IGNORECASE)


def _last(pattern: re.Pattern[str], text: str) -> str | None:
    found = pattern.findall(text)
    return found[-1] if found else None


def parse_score(reply: str) -> float | None:
    """VisionThink's GPT judge: the last ``Score: 0|1`` (papers.md §1.3; theirs fell back to 0 when none matched)."""
    value = _last(_SCORE, reply)
    return None if value is None else float(value)


def parse_yes_no(reply: str) -> float | None:
    """Qwen3 verifier: the last ``[[YES]]``/``[[NO]]`` after the last ``</think>``.

    A reply that opened ``<think>`` but never closed it ran out of tokens while thinking: no verdict (VisionThink
    scored that 0). A reply with no think block at all (thinking off, or vLLM's reasoning parser moved it out of
    ``content``) is read whole.
    """
    if "</think>" in reply:
        reply = reply.rsplit("</think>", 1)[1]
    elif "<think>" in reply:
        return None
    value = _last(_YES_NO, reply)
    return None if value is None else float(value.upper() == "YES")


def parse_float_verdict(reply: str) -> float | None:
    """VLM-R3: the last standalone ``1.0``/``0.0``; or a reply that is exactly ``1``/``0``."""
    value = _last(_FLOAT_01, reply)
    if value is not None:
        return float(value)
    bare = reply.strip()
    return float(bare) if bare in ("0", "1") else None


def parse_judgement(reply: str) -> float | None:
    """DeepEyes: the last ``Judgement: 0|1`` (also the prompt's own spelling ``Judement``); or a bare ``1``/``0``.

    Theirs took the text after ``Judgement:`` and asked ``'1' in`` it, else ``'0' in`` it, else scored 0.
    """
    value = _last(_JUDGEMENT, reply)
    if value is not None:
        return float(value)
    bare = reply.strip()
    return float(bare) if bare in ("0", "1") else None


def parse_judgment_tag(reply: str) -> float | None:
    """Vision-SR1: the last ``<judgment>…</judgment>``; ``incorrect``/``not correct``/``wrong`` → 0; ``correct`` → 1.

    Theirs counted anything without "incorrect" as correct — an empty or failed judgment included (§3.4).
    """
    value = _last(_JUDGMENT_TAG, reply)
    if value is None:
        return None
    if _NEGATIVE.search(value):
        return 0.0
    return 1.0 if _POSITIVE.search(value) else None


# ====================================================================================================================
# Prompt presets: the papers' exact texts (papers.md §1.3, §1.5, §2.3, §4.3, §3.3). Templates are str.format()ted
# once, so braces inside the *values* are never re-interpreted.
# ====================================================================================================================


@dataclass(frozen=True)
class JudgePrompt:
    """A judge preset: its messages and its verdict parser.

    ``user`` (and ``system``) are ``str.format`` templates over ``{question}``, ``{ground_truth}``, ``{prediction}``.
    ``empty_prediction`` replaces a blank prediction (Qwen3's "Invalid Answer. Please output [[NO]]." sentinel).
    """

    name: str
    user: str
    parse: VerdictParser = field(repr=False, compare=False)
    system: str | None = None
    empty_prediction: str | None = None

    def messages(self, question: str, ground_truth: str, prediction: str) -> list[dict[str, str]]:
        """The chat messages for one judgement."""
        if self.empty_prediction is not None and not prediction.strip():
            prediction = self.empty_prediction
        values = {"question": question, "ground_truth": ground_truth, "prediction": prediction}
        out = [] if self.system is None else [{"role": "system", "content": self.system.format(**values)}]
        out.append({"role": "user", "content": self.user.format(**values)})
        return out


VISIONTHINK_SYSTEM = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for question-answer "
    "pairs.\nYour task is to compare the predicted answer with the correct answer and determine if they match "
    "meaningfully. Here's how you can accomplish the task:\n------\n##INSTRUCTIONS:\n- Focus on the meaningful match "
    "between the predicted answer and the correct answer.\n- Consider synonyms or paraphrases as valid matches.\n"
    "- Evaluate the correctness of the prediction compared to the answer."
)
VISIONTHINK_USER = (
    "I will give you a question related to an image and the following text as inputs:\n\n"
    "1. **Question Related to the Image**: {question}\n2. **Ground Truth Answer**: {ground_truth}\n"
    "3. **Model Predicted Answer**: {prediction}\n\n"
    "Your task is to evaluate the model's predicted answer against the ground truth answer, based on the context "
    "provided by the question related to the image. Consider the following criteria for evaluation:\n"
    "- **Relevance**: Does the predicted answer directly address the question posed, considering the information "
    "provided by the given question?\n"
    "- **Accuracy**: Compare the predicted answer to the ground truth answer. You need to evaluate from the following "
    "two perspectives:\n"
    "(1) If the ground truth answer is open-ended, consider whether the prediction accurately reflects the information "
    "given in the ground truth without introducing factual inaccuracies. If it does, the prediction should be "
    "considered correct.\n"
    "(2) If the ground truth answer is a definitive answer, strictly compare the model's prediction to the actual "
    "answer. Pay attention to unit conversions such as length and angle, etc. As long as the results are consistent, "
    "the model's prediction should be deemed correct.\n"
    "**Output Format**:\n"
    "Your response should include an integer score indicating the correctness of the prediction: 1 for correct and 0 "
    "for incorrect. Note that 1 means the model's prediction strictly aligns with the ground truth, while 0 means it "
    "does not.\n"
    'The format should be "Score: 0 or 1"'
)

QWEN3_SYSTEM = (
    "You are an expert in verifying if two answers are the same.\n"
    "Your input is a problem and two answers, Answer 1 (**Model Predicted Answer**) and Answer 2 (**Ground Truth "
    "Answer**).\n"
    "Your need to evaluate the model's predicted answer against the ground truth answer.\n"
    "Your task is to determine if two answers are equivalent, without attempting to solve the original problem.\n"
    "Compare the answers to verify they represent identical values or meaning, even when written in different forms "
    "or notations.\n\n"
    "Your output should be only: [[YES]] if the answers are equivalent, or [[NO]] if they are not."
)
QWEN3_USER = (
    "\nProblem: {question}\nAnswer 1 (**Model Predicted Answer**): {prediction}\n"
    "Answer 2 (**Ground Truth Answer**): {ground_truth}\n"
)
QWEN3_EMPTY_PREDICTION = "Invalid Answer. Please output [[NO]]."

VLM_R3_USER = (
    "You are a evaluation expert. Compare the student's answer with the correct answer. Output ONLY '1.0' if the "
    "student's answer matches the correct answer in meaning, or '0.0' if the student's answer does not contain a "
    "correct answer. No other output is allowed.\n" + " " * 20 + "Question: {question}\n"
    "Student's answer: {prediction}\nCorrect answer: {ground_truth}\nOutput only 1.0 or 0.0:"
)

# DeepEyes (verl/utils/reward_score/vl_agent.py, identical at 6c5e796's neighbours fdd3c42 and 04dbb92): the header,
# typos included, then 7 GQA shots, then the item. Byte for byte as their code builds it — including the literal
# backslash-n pair ("\\n\\n") their non-raw triple-quoted header ends with, and the blank lines between shots.
DEEPEYES_SYSTEM = "You are a helpful assistant."
DEEPEYES_HEADER = (
    "Below are two answers to a question. Question is [Question], [Standard Answer] is the standard answer to the "
    "question, and [Model_answer] is the answer extracted from a model's output to this question.  Determine whether "
    "these two answers are consistent.\nNote that [Model Answer] is consistent with [Standard Answer] whenever they "
    "are essentially the same. If the meaning is expressed in the same way, it is considered consistent, for example, "
    "'pink' and 'it is pink'.\nIf they are consistent, Judement is 1; if they are different, Judement is 0. Just "
    "output Judement and don't output anything else."
)
DEEPEYES_SHOTS: tuple[tuple[str, str, str, int], ...] = (
    ("Is the countertop tan or blue?", "The countertop is tan.", "tan", 1),
    ("On which side of the picture is the barrier?", "The barrier is on the left side of the picture.", "left", 1),
    ("Is the kite brown and large?", "Yes, the kite is brown and large.", "Yes", 1),
    ("Are the spots on a giraffe?", "No, the spots are on a banana.", "no", 1),
    ("Who is wearing pants?", "The boy is wearing pants.", "The person in the picture is wearing pants.", 1),
    ("Is the man phone both blue and closed?", "Yes, the man phone is both blue and closed.", "No.", 0),
    (
        "What color is the towel in the center of the picture?",
        "The towel in the center of the picture is blue.",
        "The towel in the center of the picture is pink.",
        0,
    ),
)
"""(question, standard answer, model answer, judgement) of DeepEyes' in-context examples, in their order."""


def _deepeyes_user() -> str:
    shots = "".join(
        f"\n[Question]: {q}\n[Standard Answer]: {a}\n[Model_answer] : {m}\nJudgement: {j}\n\n\n"
        for q, a, m, j in DEEPEYES_SHOTS
    )
    item = "\n[Question]: {question}\n[Standard Answer]: {ground_truth}\n[Model_answer] : {prediction}\nJudgement:"
    return "\n" + DEEPEYES_HEADER + "\\n\\n\n" + shots + item


SR1_USER = (
    "You are provided a question, a gold answer, and a candidate answer. Your task is to judge the correctness of the "
    "candidate answer. Return your judgment enclosed with <judgment> </judgment>.\nQuestion:{question}\n"
    "Reference Answer: {ground_truth}\nCandidate Answer: {prediction}"
)

PROMPTS: dict[str, JudgePrompt] = {
    "visionthink": JudgePrompt("visionthink", VISIONTHINK_USER, parse_score, system=VISIONTHINK_SYSTEM),
    "qwen3": JudgePrompt(
        "qwen3", QWEN3_USER, parse_yes_no, system=QWEN3_SYSTEM, empty_prediction=QWEN3_EMPTY_PREDICTION
    ),
    "vlm_r3": JudgePrompt("vlm_r3", VLM_R3_USER, parse_float_verdict),
    "deepeyes": JudgePrompt("deepeyes", _deepeyes_user(), parse_judgement, system=DEEPEYES_SYSTEM),
    "sr1": JudgePrompt("sr1", SR1_USER, parse_judgment_tag),
}
"""The presets by name. ``visionthink`` (GPT-4o, "Score: 0 or 1") is the default."""
