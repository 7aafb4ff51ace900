"""How a row's prompt is worded: the papers' prompt texts and the prompt styles that put a question into them.

A row's prompt is built by a :class:`PromptStyle`, which also names the agent loop it is written for:

============================ ======================== ===============================================================
style                        agent loop               user turn (``{q}``: the question, ``<image>`` where it goes)
============================ ======================== ===============================================================
``zoom`` (DeepEyes)          ``visionr3_agent``       ``<image>\\n{q}`` + DeepEyes' ``USER_PROMPT_V2``
``vlm_r3``                   ``visionr3_vlm_r3``      ``<image>{q}`` + VLM-R3's crop-tool instruction
``visionthink``              ``visionr3_visionthink`` VisionThink's ``tool_agent`` template around ``<image>\\n{q}``
``visionthink_general``      ``single_turn_agent``    system: ``GENERAL_QA_SYSTEM_PROMPT``; user: ``<image>\\n{q}``
``vision_sr1``               ``visionr3_vision_sr1``  ``{q}<image>`` + Vision-SR1's description/think/boxed format
============================ ======================== ===============================================================

A question that already holds ``<image>`` placeholders (VisionThink's ``problem``) keeps them where they are; their
number must equal the row's image count. The exception is Vision-SR1's, whose dataset moves a single ``<image>`` to
the end of the problem (:func:`sr1_question`). No system prompt is written for the tool styles: the chat
template renders the tool block from the job's tool YAML (papers.md §1.1, §4.1 — the papers' system prompts are that
block).

A multiple-choice question is worded by :func:`mc_prompt` (options in the order given; the row contract is in
:mod:`visionr3.data.rows`)::

    {question}
    A. {first option}
    B. {second option}
    Answer with the option's letter from the given choices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from visionr3.data.rows import IMAGE, LETTERS

# --- the papers' prompt texts (papers.md) ------------------------------------------------------------------------

VISIONTHINK_TOOL_PROMPT = (
    "Answer the question based on the image provided. You must conduct reasoning within <think> and </think> first "
    "in each of your reasoning steps. You may call ONE function tool per step to help you better solve the problem. "
    "Place the function tool within <tool_call> and </tool_call> at the end of each step to perform a function call. "
    "You should continue your reasoning process based on the content returned by the function tool. Once you confirm "
    "your final answer, place the final answer inside <answer> and </answer>. For mathematical or multiple-choice "
    "problem, wrap the answer value or choice with \\boxed{}. Here is the image and question:\n{Question}"
)
"""VisionThink's ``prompt_template_dict["tool_agent"]`` (papers.md §1.1); ``{Question}`` is ``problem``."""

VISIONTHINK_GENERAL_SYSTEM_PROMPT = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer.\n"
    "The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put within "
    "<answer> </answer> tags. For mathematical or multiple-choice problem, wrap the answer value or choice with "
    "\\boxed{}."
)
"""VisionThink's ``GENERAL_QA_SYSTEM_PROMPT`` (the no-tool general track, papers.md §1.1)."""

VLM_R3_PROMPT = (
    "\nYou need to first think about the reasoning process in your mind, and then provide the answer. When thinking, "
    'you should call the "crop" tool (format: {"bbox_2d": [x1, y1, x2, y2]}) to focus on the key areas in the '
    "image. The reasoning process and the answer are included in the <think> </think> and <answer> </answer> tags "
    "respectively."
)
"""VLM-R3's suffix to the question (``AgentVLMVLLM``, papers.md §2.1)."""

DEEPEYES_USER_PROMPT = (
    "\nThink first, call **image_zoom_in_tool** if needed, then answer. Format strictly as:  <think>...</think>  "
    "<tool_call>...</tool_call> (if tools needed)  <answer>...</answer> "
)
"""DeepEyes' ``USER_PROMPT_V2`` (papers.md §4.1; the double and trailing spaces are the source's)."""

SR1_FORMAT = (
    " You are tasked with analyzing an image/video to generate a detailed description to help you answer the question. "
    "First analyze the image/video and produce a self-contained description\u2014detailed enough that can lead to the "
    "correct answer. Wrap the entire description in <description> </description> tags.\\n Next, engage in an internal "
    "dialogue and include self-reflection or verification in your reasoning process. Provide your detailed, "
    "step-by-step reasoning based on the image/video description information and image/video, and enclose this part "
    "within <think> </think> tags.\\n Finally, provide a single word or phrase answer to the question in \\boxed{}."
    "\\nThe output format should be: <description> image/video description here </description> <think> reasoning "
    "process here </think> \\boxed{FINAL ANSWER here}."
)
"""Vision-SR1's ``see_think_format.jinja`` suffix (papers.md §3.1; its ``\\n`` are literal backslash-n, as there)."""

MC_INSTRUCTION = "Answer with the option's letter from the given choices."


@dataclass(frozen=True)
class PromptStyle:
    """How a question becomes chat messages, and the agent loop (``agent_name``) those messages are written for."""

    name: str
    agent_name: str
    build: Callable[[str, int], list[dict[str, str]]]  # (question text, number of images) -> messages

    def messages(self, text: str, num_images: int) -> list[dict[str, str]]:
        return self.build(text, num_images)


def with_images(text: str, num_images: int, where: str = "front", sep: str = "\n") -> str:
    """``text`` with ``num_images`` ``<image>`` placeholders put ``where`` (``front``/``back``), unless it already has
    them (then it is returned as it is; :func:`~visionr3.data.converters.check_placeholders` has checked their
    number)."""
    if IMAGE in text or num_images == 0:
        return text
    placeholders = IMAGE * num_images
    return placeholders + sep + text if where == "front" else text + sep + placeholders


def sr1_question(text: str, num_images: int) -> str:
    """The user text Vision-SR1 puts before its format suffix: its dataset (``verl/utils/dataset.py``,
    ``_prefix_image_token``) takes a single ``<image>`` out of ``problem`` wherever it stands and appends it at the end,
    and its jinja trims the content. A question with several placeholders keeps them where they are (Vision-SR1
    leaves those alone); one without any gets them at the end, as Vision-SR1 appends one."""
    if num_images == 1 and text.count(IMAGE) == 1:
        text = text.replace(IMAGE, "")
    return with_images(text.strip(), num_images, "back", "")


def _user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


STYLES: dict[str, PromptStyle] = {
    style.name: style
    for style in (
        PromptStyle("zoom", "visionr3_agent", lambda q, n: _user(with_images(q, n) + DEEPEYES_USER_PROMPT)),
        PromptStyle("vlm_r3", "visionr3_vlm_r3", lambda q, n: _user(with_images(q, n, sep="") + VLM_R3_PROMPT)),
        PromptStyle(
            "visionthink",
            "visionr3_visionthink",
            lambda q, n: _user(VISIONTHINK_TOOL_PROMPT.replace("{Question}", with_images(q, n))),
        ),
        PromptStyle(
            "visionthink_general",
            "single_turn_agent",
            lambda q, n: [{"role": "system", "content": VISIONTHINK_GENERAL_SYSTEM_PROMPT}, *_user(with_images(q, n))],
        ),
        # Vision-SR1's jinja trims the content ({{ content | trim }}) and the format text starts with a space.
        PromptStyle("vision_sr1", "visionr3_vision_sr1", lambda q, n: _user(sr1_question(q, n) + SR1_FORMAT)),
    )
}


def mc_question(question: str, options: Sequence[str]) -> str:
    """The question with its options, one per line as ``A. text`` (the documented multiple-choice form)."""
    return "\n".join([question.strip(), *(f"{LETTERS[i]}. {option}" for i, option in enumerate(options))])


def mc_prompt(question: str, options: Sequence[str]) -> str:
    """:func:`mc_question` plus the answer instruction: the text the prompt style wraps."""
    return f"{mc_question(question, options)}\n{MC_INSTRUCTION}"
