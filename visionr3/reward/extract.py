"""Answer extraction: which part of a response is "the answer" — pure string functions, no grading.

The formulas disagree on where the answer lives, and the disagreement changes scores, so each convention is its own
function and the formula (:mod:`visionr3.reward.formulas`) names the one it uses:

- :func:`answer_tag` — ``<answer>…</answer>``: the first (the Qwen3 judge of VisionThink), the last (VLM-R3,
  visionr3's demo), or VisionThink/DeepEyes' ``split`` idiom, which also accepts an unclosed final tag;
- :func:`boxed` — the last balanced ``\\boxed{…}`` (Vision-SR1, Vision-R1, mathruler's ``extract_boxed_content``);
- :func:`last_line` — VLM-R3's fallback when no ``<answer>`` was written;
- :func:`description` — Vision-SR1's ``<description>`` block, which its second pass answers from;
- :func:`final_answer` — visionr3's default: the last ``<answer>`` (its ``\\boxed{}`` if it has one), else the last
  ``\\boxed{}``. No last-line fallback: grading an arbitrary last line of reasoning rewards answers the model never
  committed to, so only VLM-R3 (which did it) gets it.

Every function returns ``None`` when its marker is absent — never the whole response. The released VisionThink and
DeepEyes code judged the whole response when there was no tag, which lets a policy hand the judge its reasoning
instead of an answer; a missing answer is a missing answer here.
"""

from __future__ import annotations

import re
from typing import Literal

ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_BOXED = re.compile(r"\\boxed\s*\{")


def tag_contents(text: str, open_tag: str, close_tag: str) -> list[str]:
    """Every ``open_tag…close_tag`` content, left to right, unstripped: ``re.findall(open(.*?)close, DOTALL)``.

    Written with ``str.find`` because the regex is quadratic on degenerate samples (thousands of unclosed
    ``<answer>``s from a policy stuck in a loop), and a reward function must not stall a training step.
    """
    contents, position = [], 0
    while (start := text.find(open_tag, position)) != -1:
        start += len(open_tag)
        end = text.find(close_tag, start)
        if end == -1:
            break
        contents.append(text[start:end])
        position = end + len(close_tag)
    return contents


def answer_tag(text: str, which: Literal["first", "last", "split"] = "last") -> str | None:
    """The content of an ``<answer>…</answer>`` pair, stripped; ``None`` when there is none.

    ``which="split"`` is VisionThink's and DeepEyes' ``text.split("<answer>")[-1].split("</answer>")[0]``: the text
    after the last opening tag, up to the next closing tag *if any* — so a final answer cut off by the length limit
    still counts. Unlike that code it returns ``None`` when there is no ``<answer>`` at all (see the module docstring).
    """
    if which == "split":
        if ANSWER_OPEN not in text:
            return None
        return text.split(ANSWER_OPEN)[-1].split(ANSWER_CLOSE)[0].strip()
    if which == "first":
        start = text.find(ANSWER_OPEN)
        end = text.find(ANSWER_CLOSE, start + len(ANSWER_OPEN)) if start != -1 else -1
        return text[start + len(ANSWER_OPEN) : end].strip() if end != -1 else None
    if which == "last":
        matches = tag_contents(text, ANSWER_OPEN, ANSWER_CLOSE)
        return matches[-1].strip() if matches else None
    raise ValueError(f"answer_tag: which must be 'first', 'last' or 'split', got {which!r}")


def boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{…}``, braces balanced (``\\boxed{\\frac{1}{2}}`` → ``\\frac{1}{2}``).

    ``None`` when there is no ``\\boxed{`` or the last one is never closed: a truncated final box is not an answer,
    and silently falling back to an earlier box would grade an intermediate result.
    """
    starts = [match.end() for match in _BOXED.finditer(text)]
    if not starts:
        return None
    start = starts[-1]
    depth = 1
    for index in range(start, len(text)):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:index].strip()
    return None


def last_line(text: str) -> str | None:
    """The last non-empty line, stripped (VLM-R3's answer when no ``<answer>`` was written)."""
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return None


def description(text: str) -> str | None:
    """The content of the first ``<description>…</description>``, stripped; ``None`` if missing.

    Vision-SR1's code returned the *whole response* when the tag was missing, so the text-only second pass saw the
    answer and the visual reward came free; callers must treat ``None`` as "no description".
    """
    start = text.find("<description>")
    end = text.find("</description>", start + len("<description>")) if start != -1 else -1
    return text[start + len("<description>") : end].strip() if end != -1 else None


def final_answer(text: str) -> str | None:
    """visionr3's default answer: the last ``<answer>`` (or the ``\\boxed{}`` inside it), else the last ``\\boxed{}``.

    VisionThink's prompts ask for ``<answer>\\boxed{B}</answer>`` on math and multiple choice, so the box inside the tag
    is the answer proper; the tag's text is kept when it has no box.
    """
    tagged = answer_tag(text, "last")
    if tagged is not None:
        inner = boxed(tagged)
        return inner if inner is not None else tagged
    return boxed(text)
