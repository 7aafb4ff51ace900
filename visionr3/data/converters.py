"""Converters from the papers' public dataset formats to visionr3's verl rows: one function per format.

Each converter takes one source record (a dict, as the reader in :mod:`visionr3.data.prepare` yields it), its row
index and a :class:`Context`, and returns a :class:`~visionr3.data.rows.VisionRow` — or raises
:class:`~visionr3.data.rows.RowError` naming the source field that is wrong. They share no state, so
``visionr3 prepare`` runs them on a thread pool; the only I/O is reading and decoding the row's images (so a bad image
fails here, with its row, and not hours later inside a Ray worker, where verl's prompt-length filter would silently
drop the row) and, for V*, the annotation file beside each image. Image paths are rewritten by ``--path-map``
(:func:`map_path`) before they are resolved. The prompt each row gets is its :class:`~visionr3.data.prompts.PromptStyle`'s
(:mod:`visionr3.data.prompts`); what a row holds, images and multiple-choice ``extra_info`` included, is
:mod:`visionr3.data.rows`.

The field readers (:func:`field`, :func:`text`, :func:`answer`, :func:`image_entry`, ...) are shared with the SFT
converters (:mod:`visionr3.data.sft_rows`).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from visionr3.data.prompts import PromptStyle, mc_prompt, mc_question
from visionr3.data.rows import IMAGE, LETTERS, MultipleChoiceInfo, RowError, VisionRow
from visionr3.tools.geometry import MAX_ASPECT_RATIO  # Qwen's smart_resize rejects longer images

# --- context -----------------------------------------------------------------------------------------------------


PathMap = tuple[tuple[str, str], ...]
"""``--path-map`` pairs ``(OLD, NEW)``: an image path at or below folder ``OLD`` is read from ``NEW`` instead."""


@dataclass(frozen=True)
class Context:
    """What a converter needs besides the record: where relative image paths start, which path prefixes to rewrite
    first (``--path-map``), how images are stored, the prompt style and agent loop of every row, and the
    ``--data-source`` override (``None``: the source's own label, else the format's or benchmark's name)."""

    image_root: Path
    style: PromptStyle
    agent_name: str
    keep_paths: bool = False
    data_source: str | None = None
    benchmark: str | None = None  # eval sets: the name stored in extra_info.benchmark (default: the format's)
    path_map: PathMap = ()


# --- field access ------------------------------------------------------------------------------------------------


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))  # pandas/CSV readers give NaN


def field(record: Mapping[str, Any], name: str) -> Any:
    """``record[name]``; a dotted name walks nested dicts (``extra_info.question``). Missing or null raises."""
    value: Any = record
    for i, part in enumerate(name.split(".")):
        if not isinstance(value, Mapping):
            parent = ".".join(name.split(".")[:i])
            raise RowError(parent, f"expected an object, got {type(value).__name__}", "wrong type")
        if part not in value or _missing(value[part]):
            raise RowError(name, "missing", "missing field")
        value = value[part]
    return value


def optional(record: Mapping[str, Any], name: str, default: Any = None) -> Any:
    try:
        return field(record, name)
    except RowError as exc:
        if exc.kind == "missing field":
            return default
        raise


def text(record: Mapping[str, Any], name: str) -> str:
    """A required non-empty string field."""
    value = field(record, name)
    if not isinstance(value, str):
        raise RowError(name, f"expected text, got {type(value).__name__}", "wrong type")
    if not value.strip():
        raise RowError(name, "empty", "empty field")
    return value


def optional_text(record: Mapping[str, Any], name: str, default: str = "") -> str:
    """An optional scalar field as text ("" when absent); numbers (ids) are written as text."""
    value = optional(record, name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(name, f"expected text, got {type(value).__name__}", "wrong type")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip() or default


def answer(record: Mapping[str, Any], name: str) -> str:
    """The ground truth as the reward reads it: text, with a VLM-R3 ``<answer>…</answer>`` wrapper removed and a
    list of alternatives joined with ``/`` (VLM-R3's convention, which the grader splits again)."""
    value = field(record, name)
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(v, str) for v in value):
            raise RowError(name, "expected text or a non-empty list of texts", "wrong type")
        value = "/".join(v.strip() for v in value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    elif not isinstance(value, str):
        raise RowError(name, f"expected text, got {type(value).__name__}", "wrong type")
    match = re.fullmatch(r"\s*<answer>(.*)</answer>\s*", value, re.DOTALL)
    value = (match.group(1) if match else value).strip()
    if not value:
        raise RowError(name, "empty answer", "empty answer")
    return value


def check_placeholders(question: str, num_images: int, name: str, *, placed: bool = False) -> None:
    """A question with ``<image>`` placeholders must have one per image (verl's dataset asserts it much later);
    ``placed``: the text is used as it is, so it must have one per image even when it has none."""
    count = question.count(IMAGE)
    if (count or placed) and count != num_images:
        message = f"has {count} {IMAGE} placeholder(s) but the row has {num_images} image(s)"
        raise RowError(name, message, "placeholder mismatch")


def bare_question(question: str) -> str:
    """The question without image placeholders: what a judge and Vision-SR1's text-only pass read."""
    return question.replace(IMAGE, " ").strip()


# --- images ------------------------------------------------------------------------------------------------------


def _decode(data: bytes, name: str, where: str) -> tuple[int, int]:
    """Decode fully (a truncated file fails here, not in training) and return ``(width, height)``."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            width, height = image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise RowError(name, f"cannot decode image{where} ({type(exc).__name__}: {exc})", "image unreadable") from None
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        message = f"image{where} is {width}x{height}: aspect ratio above {MAX_ASPECT_RATIO}"
        raise RowError(name, message, "bad image size")
    return width, height


def map_path(reference: str, path_map: PathMap) -> str:
    """``reference`` with the longest matching ``OLD`` prefix of ``path_map`` replaced by its ``NEW``.

    Sources such as VLM-R3's RL json name images by absolute paths on the authors' machine (``/data/...``), which no
    ``--image-root`` can reach. ``OLD`` matches whole path components only (``/data`` maps ``/data/x.jpg``, never
    ``/database/x.jpg``), and the longest match wins, so a specific folder can be sent elsewhere than its parent.
    """
    best: tuple[str, str] | None = None
    for old, new in path_map:
        inside = reference == old or reference.startswith(old if old.endswith("/") else old + "/")
        if inside and (best is None or len(old) > len(best[0])):
            best = (old, new)
    if best is None:
        return reference
    old, new = best
    rest = reference[len(old):].lstrip("/")
    return new if not rest else f"{new.rstrip('/')}/{rest}"


def _resolve(reference: str, ctx: Context) -> tuple[Path, str | None]:
    """The absolute path of an image reference, and the reference as the source wrote it when ``--path-map``
    rewrote it (for the error message), else ``None``."""
    reference = reference[7:] if reference.startswith("file://") else reference
    mapped = map_path(reference, ctx.path_map)
    path = Path(os.path.expanduser(mapped))
    path = (path if path.is_absolute() else ctx.image_root / path).resolve()
    return path, (reference if mapped != reference else None)


def image_entry(value: Any, name: str, ctx: Context, *, resized: tuple[int, int] | None = None) -> dict[str, Any]:
    """One entry of a row's ``images`` from a source image reference, read and decoded to check it.

    ``value``: a path (rewritten by ``ctx.path_map``, then relative to ``ctx.image_root``), raw bytes, or a Hugging Face
    image dict (``bytes``/``path``).
    Returns ``{"bytes": ..., "path": None}``, or ``{"image": "/abs/path"}`` with ``ctx.keep_paths``; ``resized``
    ``(width, height)`` adds ``resized_width``/``resized_height`` (the size the dataset renders it at).
    """
    data, path = None, None
    if isinstance(value, Mapping):
        if value.get("bytes") is not None:
            data = value["bytes"]
        elif isinstance(value.get("path"), str) and value["path"]:
            value = value["path"]
        else:
            raise RowError(name, "image dict has neither bytes nor a path", "missing field")
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, str):
        if not value.strip():
            raise RowError(name, "empty image path", "empty field")
        path, mapped_from = _resolve(value, ctx)
        if not path.is_file():
            via = f" (--path-map of {mapped_from})" if mapped_from else ""
            raise RowError(name, f"file not found: {path}{via}", "image not found")
        data = path.read_bytes()
    elif data is None:
        raise RowError(name, f"expected an image path, bytes or image dict, got {type(value).__name__}", "wrong type")
    _decode(data, name, f" {path}" if path else "")
    if ctx.keep_paths:
        if path is None:
            message = "--keep-paths needs an image file path; this source stores the image itself"
            raise RowError(name, message, "no image path")
        entry: dict[str, Any] = {"image": str(path)}
    else:
        entry = {"bytes": data, "path": None}
    if resized is not None:
        entry["resized_width"], entry["resized_height"] = resized
    return entry


def image_list(record: Mapping[str, Any], name: str, ctx: Context, *, allow_empty: bool = False) -> list[dict]:
    """A record's list of images (a single image is accepted as a list of one)."""
    value = optional(record, name, [])
    if isinstance(value, (str, bytes, Mapping)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise RowError(name, f"expected a list of images, got {type(value).__name__}", "wrong type")
    if not value and not allow_empty:
        raise RowError(name, "no image", "missing field")
    return [image_entry(item, f"{name}[{i}]" if len(value) > 1 else name, ctx) for i, item in enumerate(value)]


def base64_image(record: Mapping[str, Any], name: str, ctx: Context) -> dict[str, Any]:
    """An image stored as base64 text (HR-Bench's TSV, VLMEvalKit style)."""
    value = field(record, name)
    if isinstance(value, Mapping):  # the Hugging Face parquet release stores an image dict
        return image_entry(value, name, ctx)
    if not isinstance(value, str):
        raise RowError(name, f"expected base64 text, got {type(value).__name__}", "wrong type")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RowError(name, f"not valid base64 ({exc})", "image unreadable") from None
    return image_entry(data, name, ctx)


# --- multiple choice ---------------------------------------------------------------------------------------------


def check_options(options: Any, name: str) -> list[str]:
    """2–26 non-empty option texts, stripped."""
    if not isinstance(options, (list, tuple)) or not all(isinstance(o, str) for o in options):
        raise RowError(name, "expected a list of option texts", "bad options")
    options = [o.strip() for o in options]
    if not 2 <= len(options) <= len(LETTERS):
        raise RowError(name, f"expected 2 to {len(LETTERS)} options, got {len(options)}", "bad options")
    empty = [LETTERS[i] for i, o in enumerate(options) if not o]
    if empty:
        raise RowError(name, f"option {', '.join(empty)} is empty", "bad options")
    return options


def answer_letter(value: Any, num_options: int, name: str) -> str:
    """``"B"``, ``"b"``, ``"(B)"``, ``"(b)"``, ``"B."`` -> ``"B"``, which must name one of the options."""
    if not isinstance(value, str):
        raise RowError(name, f"expected an option letter, got {type(value).__name__}", "wrong type")
    match = re.fullmatch(r"\s*\(?\s*([A-Za-z])\s*\)?\.?\s*", value)
    if not match:
        raise RowError(name, f"expected an option letter like 'B' or '(B)', got {value!r}", "bad answer")
    letter = match.group(1).upper()
    if LETTERS.index(letter) >= num_options:
        raise RowError(name, f"answer {letter} but only options A-{LETTERS[num_options - 1]} exist", "bad answer")
    return letter


_OPTION_LINE = re.compile(r"\s*\(([A-Z])\)\s*(.*?)\s*")


def split_option_lines(prompt: str, name: str) -> tuple[str, list[str]]:
    """``"Q?\\n(A) x\\n(B) y\\nAnswer with ..."`` -> ``("Q?", ["x", "y"])`` (V*, CV-Bench). Lines after the options
    (the source's answer instruction) are dropped; the letters must run A, B, C, ... without gaps."""
    lines = prompt.strip().splitlines()
    first = next((i for i, line in enumerate(lines) if _OPTION_LINE.fullmatch(line)), None)
    if first is None:
        raise RowError(name, "no option lines like '(A) ...' found", "bad options")
    options = []
    for line in lines[first:]:
        match = _OPTION_LINE.fullmatch(line)
        if not match:
            break
        if match.group(1) != LETTERS[len(options)]:
            message = f"option ({match.group(1)}) out of order, expected ({LETTERS[len(options)]})"
            raise RowError(name, message, "bad options")
        options.append(match.group(2))
    question = "\n".join(lines[:first]).strip()
    if not question:
        raise RowError(name, "no question before the options", "empty field")
    return question, check_options(options, name)


_INLINE_OPTION = re.compile(r"\(([A-Za-z])\)\s*")


def split_inline_options(text_: str, name: str) -> list[str]:
    """``"(a) Open (b) Closed"`` -> ``["Open", "Closed"]`` (MMVP)."""
    parts = _INLINE_OPTION.split(text_.strip())
    if parts[0].strip() or len(parts) < 3:
        raise RowError(name, f"expected options like '(a) x (b) y', got {text_!r}", "bad options")
    letters, options = parts[1::2], parts[2::2]
    for i, letter in enumerate(letters):
        if letter.upper() != LETTERS[i]:
            raise RowError(name, f"option ({letter}) out of order, expected ({LETTERS[i].lower()})", "bad options")
    return check_options(options, name)


def lettered_options(value: Any, name: str) -> list[str]:
    """``["(A) red", "(B) blue"]`` -> ``["red", "blue"]`` (MME-RealWorld's option lists, letters written in): every
    option carries its letter, and the letters run A, B, C, ... without gaps."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(o, str) for o in value):
        raise RowError(name, "expected a list of option texts like '(A) red'", "bad options")
    options = []
    for i, option in enumerate(value):
        match = _OPTION_LINE.fullmatch(option)
        if not match:
            raise RowError(name, f"option {option!r} does not start with its letter like '(A) '", "bad options")
        if i >= len(LETTERS) or match.group(1) != LETTERS[i]:
            expected = LETTERS[i] if i < len(LETTERS) else "none"
            raise RowError(name, f"option ({match.group(1)}) out of order, expected ({expected})", "bad options")
        options.append(match.group(2))
    return check_options(options, name)


def mc_row(
    ctx: Context,
    *,
    index: int,
    benchmark: str,
    source_id: str,
    question: str,
    options: list[str],
    letter: str,
    image: dict[str, Any],
    category: str = "",
    extra: Mapping[str, Any] | None = None,
) -> VisionRow:
    """A multiple-choice evaluation row (one image; options in source order; ground truth = the letter)."""
    question = question.strip()
    info: dict[str, Any] = MultipleChoiceInfo(
        index=index,
        benchmark=ctx.benchmark or benchmark,
        source_id=source_id,
        question=mc_question(question, options),
        question_stem=question,
        options=options,
        answer=letter,
        answer_text=options[LETTERS.index(letter)],
        category=category,
        prompt_style=ctx.style.name,
    )
    info.update(extra or {})
    return VisionRow(
        data_source=ctx.data_source or ctx.benchmark or benchmark,
        agent_name=ctx.agent_name,
        prompt=ctx.style.messages(mc_prompt(question, options), 1),
        images=[image],
        reward_model={"style": "rule", "ground_truth": letter},
        extra_info=info,
    )


def _row(
    ctx: Context, default_source: str, question: str, images: list[dict], ground_truth: str, info: dict
) -> VisionRow:
    return VisionRow(
        data_source=ctx.data_source or default_source,
        agent_name=ctx.agent_name,
        prompt=ctx.style.messages(question, len(images)),
        images=images,
        reward_model={"style": "rule", "ground_truth": ground_truth},
        extra_info={**info, "question": bare_question(question), "prompt_style": ctx.style.name},
    )


# --- training sets -----------------------------------------------------------------------------------------------


def visionthink_general(record: Mapping[str, Any], index: int, ctx: Context) -> VisionRow:
    """VisionThink's data (``datasets.load_from_disk``, papers.md §1.6): ``problem`` (with ``<image>``), ``images``,
    ``original_answer`` (the ground truth), ``doc_id``, ``data_source`` (kept: VisionThink routes rewards by it)."""
    problem = text(record, "problem")
    images = image_list(record, "images", ctx)
    check_placeholders(problem, len(images), "problem")
    info = {"index": index, "doc_id": optional_text(record, "doc_id")}
    ground_truth = answer(record, "original_answer")
    return _row(ctx, optional_text(record, "data_source", "visionthink"), problem, images, ground_truth, info)


def visionthink_smart(record: Mapping[str, Any], index: int, ctx: Context) -> VisionRow:
    """VisionThink's Smart set: the General fields plus ``info{tgt_width, tgt_height, use_tool}``.

    VisionThink shows the Smart image at ``(tgt_width, tgt_height)`` and hands back the raw image rendered at twice
    that on a resize call (papers.md §1.2). Here the image keeps its original bytes and asks the dataset for
    ``resized_* = 2 × tgt`` (qwen-vl-utils' per-image size, which wins over ``data.max_pixels``); the
    ``visionr3_visionthink`` loop halves that view (``low_res_factor: 0.5``), so the policy sees ``tgt``, and its
    resize tool re-renders the original at the pre-halving size, ``2 × tgt``. One file, no second copy of the image,
    and the loop's existing entry — a pre-resized prompt image would be halved again and re-rendered only at ``tgt``.
    """
    problem = text(record, "problem")
    sizes = []
    for side in ("tgt_width", "tgt_height"):
        value = field(record, f"info.{side}")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise RowError(f"info.{side}", f"expected an integer, got {type(value).__name__}", "wrong type")
        if value < 28:  # VisionThink asserts both sides >= 28 (one vision token)
            raise RowError(f"info.{side}", f"{value} is below 28 pixels", "bad image size")
        sizes.append(value)
    use_tool = optional(record, "info.use_tool")
    if use_tool is not None and not isinstance(use_tool, bool):
        raise RowError("info.use_tool", f"expected true/false, got {type(use_tool).__name__}", "wrong type")
    raw = optional(record, "images", [])
    raw = [raw] if isinstance(raw, (str, bytes, Mapping)) else raw
    if not isinstance(raw, (list, tuple)) or len(raw) != 1:
        count = len(raw) if isinstance(raw, (list, tuple)) else type(raw).__name__
        raise RowError("images", f"a Smart row with a target size has exactly one image, got {count}", "wrong type")
    images = [image_entry(raw[0], "images", ctx, resized=(2 * sizes[0], 2 * sizes[1]))]
    check_placeholders(problem, 1, "problem")
    info = {
        "index": index,
        "doc_id": optional_text(record, "doc_id"),
        "tgt_width": sizes[0],
        "tgt_height": sizes[1],
        "use_tool": use_tool is True,  # VisionThink's label: the high-resolution image is needed
    }
    ground_truth = answer(record, "original_answer")
    return _row(ctx, optional_text(record, "data_source", "visionthink"), problem, images, ground_truth, info)


def vlm_r3(record: Mapping[str, Any], index: int, ctx: Context) -> VisionRow:
    """VLM-R3's RL json (papers.md §2.4): ``{image_path, question, answer, source}``; the answer's
    ``<answer></answer>`` wrapper is removed; ``source`` (VLM-R3 routes its accuracy check by it) is the data
    source."""
    question = text(record, "question")
    images = [image_entry(text(record, "image_path"), "image_path", ctx)]
    check_placeholders(question, 1, "question")
    source = optional_text(record, "source", "vlm_r3")
    info = {"index": index, "source": source, "image_path": str(record["image_path"])}
    return _row(ctx, source, question, images, answer(record, "answer"), info)


def vision_sr1(record: Mapping[str, Any], index: int, ctx: Context) -> VisionRow:
    """Vision-SR1's EasyR1-style sets (``LMMs-Lab-Turtle/Vision-SR1-47K``, ``zli12321/mmstar``; papers.md §3.3):
    ``images``, ``problem`` (with ``<image>``), ``answer``."""
    problem = text(record, "problem")
    images = image_list(record, "images", ctx)
    check_placeholders(problem, len(images), "problem")
    info = {"index": index}
    ground_truth = answer(record, "answer")
    return _row(ctx, optional_text(record, "data_source", "vision_sr1"), problem, images, ground_truth, info)


TOOL_FREE_AGENT = "single_turn_agent"
"""verl's one-turn loop (built in, no tool block rendered): where DeepEyes' rows without a tool environment go."""


def chat_messages(record: Mapping[str, Any], name: str) -> list[dict[str, str]]:
    """A source's own chat prompt: a non-empty list of ``{role, content}`` with text content and a user turn."""
    value = field(record, name)
    if not isinstance(value, (list, tuple)) or not value:
        raise RowError(name, f"expected a list of chat messages, got {type(value).__name__}", "wrong type")
    messages = []
    for i, message in enumerate(value):
        role = message.get("role") if isinstance(message, Mapping) else None
        content = message.get("content") if isinstance(message, Mapping) else None
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise RowError(f"{name}[{i}]", "expected {role: system|user|assistant, content: text}", "wrong type")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "user" for m in messages):
        raise RowError(name, "no user turn", "missing field")
    return messages


def deepeyes(record: Mapping[str, Any], index: int, ctx: Context) -> VisionRow:
    """DeepEyes' verl parquet (``ChenShawn/DeepEyes-Datasets-47k``, papers.md §4.4): ``extra_info.question``,
    ``reward_model.ground_truth``, ``images``, ``prompt``, ``data_source`` (kept: DeepEyes routes rewards by it),
    ``env_name``.

    DeepEyes gives a row its tools by ``env_name`` (``agent.tool_name_key``): its ``ParallelEnv`` builds no tool for
    an empty one and ends the episode after the first answer, and its dataset feeds the row's own ``prompt`` with
    whatever ``images`` the row carries. So the two kinds of rows differ here too:

    * tool rows (``visual_toolbox_v2``): the prompt is rebuilt from the question in the row's prompt style (their
      ``prompt`` column carries their system prompt, whose tool block our chat template renders from the tool
      YAML), for the style's agent loop;
    * tool-free rows (the ThinkLite reasoning set, ``data_thinklite_reasoning_acc``, empty ``env_name``): the row's
      own ``prompt`` messages, as DeepEyes trained them, its images (none, or as many as its ``<image>``
      placeholders) and :data:`TOOL_FREE_AGENT`, whatever ``--prompt-style``/``--agent-name`` say.
    """
    question = text(record, "extra_info.question")
    ground_truth = answer(record, "reward_model.ground_truth")
    images = image_list(record, "images", ctx, allow_empty=True)
    env_name = optional_text(record, "env_name")
    info = {"index": index, "source_index": optional_text(record, "extra_info.index"), "env_name": env_name}
    data_source = optional_text(record, "data_source", "deepeyes")
    if env_name:
        check_placeholders(question, len(images), "extra_info.question")
        return _row(ctx, data_source, question, images, ground_truth, info)
    prompt = chat_messages(record, "prompt")
    check_placeholders("".join(m["content"] for m in prompt), len(images), "prompt", placed=True)
    return VisionRow(
        data_source=ctx.data_source or data_source,
        agent_name=TOOL_FREE_AGENT,
        prompt=prompt,
        images=images,
        reward_model={"style": "rule", "ground_truth": ground_truth},
        extra_info={**info, "question": bare_question(question), "prompt_style": "source"},  # the row's own prompt
    )


# --- evaluation sets ---------------------------------------------------------------------------------------------


def vstar_annotation(image_path: str, ctx: Context) -> dict[str, list]:
    """V*'s annotation of one image, read from the JSON file beside it (``sa_4690.json`` for ``sa_4690.jpg``, as V*'s
    own eval finds it): ``target_object`` (names) and ``bbox`` (``[x, y, w, h]`` pixels, per V*'s README), returned as
    ``target_objects`` and ``target_boxes`` ``[x1, y1, x2, y2]`` in the image's pixels, the convention of the crop tool
    and the viewer. Both are empty when the image has no such file."""
    json_path = _resolve(image_path, ctx)[0].with_suffix(".json")
    if not json_path.is_file():
        return {"target_objects": [], "target_boxes": []}
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RowError("image", f"annotation {json_path} is not readable JSON ({exc})", "bad annotation") from None
    if not isinstance(data, Mapping):
        raise RowError("image", f"annotation {json_path}: expected a JSON object", "bad annotation")
    objects = data.get("target_object") or []
    objects = [objects] if isinstance(objects, str) else objects
    if not isinstance(objects, list) or not all(isinstance(o, str) for o in objects):
        raise RowError("image", f"annotation {json_path}: 'target_object' is not a list of names", "bad annotation")
    try:
        xywh = boxes(data.get("bbox"), "bbox")
    except RowError as exc:
        raise RowError("image", f"annotation {json_path}: {exc}", "bad annotation") from None
    if any(len(box) != 4 for box in xywh):
        raise RowError("image", f"annotation {json_path}: 'bbox' holds a box without 4 numbers", "bad annotation")
    return {"target_objects": objects, "target_boxes": [[x, y, x + w, y + h] for x, y, w, h in xywh]}


def vstar(record: Mapping[str, Any], index: int, ctx: Context) -> VisionRow:
    """V* Bench ``test_questions.jsonl`` (papers.md §2.4): ``image`` (relative to the bench folder), ``text``
    (question, ``(A) …`` option lines, answer instruction), ``label`` (letter), ``category``. The per-image
    annotation beside the image (target objects and their boxes, :func:`vstar_annotation`) is kept in ``extra_info``."""
    question, options = split_option_lines(text(record, "text"), "text")
    letter = answer_letter(field(record, "label"), len(options), "label")
    image_path = text(record, "image")
    source_id = optional_text(record, "question_id") or Path(image_path).stem
    image = image_entry(image_path, "image", ctx)
    return mc_row(
        ctx, index=index, benchmark="vstar", source_id=source_id, question=question, options=options, letter=letter,
        image=image, category=optional_text(record, "category"), extra=vstar_annotation(image_path, ctx),
    )


def mmvp(record: Mapping[str, Any], index: int, ctx: Context) -> VisionRow:
    """MMVP ``Questions.csv`` (papers.md §2.4): ``Index``, ``Question``, ``Options`` (``"(a) Open (b) Closed"``),
    ``Correct Answer`` (``"(a)"``); the image is ``MMVP Images/<Index>.jpg`` under the image root (or
    ``<Index>.jpg`` when the root is that folder). MMVP scores *pairs* of consecutive questions, so ``pair_id`` =
    ``(Index - 1) // 2`` is kept."""
    question = text(record, "Question")
    options = split_inline_options(text(record, "Options"), "Options")
    letter = answer_letter(field(record, "Correct Answer"), len(options), "Correct Answer")
    number = optional_text(record, "Index") or str(index + 1)  # VLM-R3's loader numbers images by row
    if not number.isdigit():
        raise RowError("Index", f"expected a number, got {number!r}", "wrong type")
    folder = "MMVP Images/" if (ctx.image_root / "MMVP Images").is_dir() else ""
    image = image_entry(f"{folder}{number}.jpg", "Index", ctx)
    return mc_row(
        ctx, index=index, benchmark="mmvp", source_id=number, question=question, options=options, letter=letter,
        image=image, extra={"pair_id": (int(number) - 1) // 2},
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def boxes(value: Any, name: str) -> list[list[float]]:
    """A source's box annotation as a list of boxes: ``None`` -> ``[]``, one box ``[a, b, c, d]`` -> ``[[a, b, c, d]]``,
    a list of boxes as it is; numbers only, each box as the source writes it (its convention is the caller's to
    state)."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise RowError(name, f"expected a box or a list of boxes, got {type(value).__name__}", "wrong type")
    if value and all(_is_number(v) for v in value):
        value = [value]
    if not all(isinstance(box, (list, tuple)) and box and all(_is_number(v) for v in box) for box in value):
        raise RowError(name, "expected a box or a list of boxes of numbers", "wrong type")
    return [[float(v) for v in box] for box in value]


def cvbench(record: Mapping[str, Any], index: int, ctx: Context) -> VisionRow:
    """CV-Bench (``nyu-visionx/CV-Bench``, papers.md §2.4) as its main branch publishes it: ``test_2d.parquet`` /
    ``test_3d.parquet`` with the image embedded in ``image`` (a Hugging Face image dict), or ``test_2d.jsonl`` /
    ``test_3d.jsonl`` whose ``filename`` (``img/2D/count/ade20k_10.png``) is read under the image root. The main
    branch no longer ships ``img/`` (its ``build_img.py`` rebuilds it), so ``image`` wins whenever a record has one.

    ``prompt`` (question and ``(A) …`` lines), ``answer`` (``"(C)"``); ``choices``/``question`` are used when present.
    Kept in ``extra_info``: ``type`` (2D/3D), ``task`` (the category), ``source`` as ``source_dataset`` (ADE20K/COCO/
    Omni3D: CV-Bench averages per source), and where the record has them ``source_filename``, ``target_class`` (COCO
    rows) and ``bbox`` (Omni3D rows: the boxes of the objects its 3D questions highlight, as published)."""
    stem, options = split_option_lines(text(record, "prompt"), "prompt")
    choices = optional(record, "choices")
    if choices is not None:  # the structured options win over the parsed lines (numbers in Count are written as text)
        if isinstance(choices, (list, tuple)):
            choices = [str(c) if isinstance(c, (int, float)) and not isinstance(c, bool) else c for c in choices]
        options = check_options(choices, "choices")
    question = optional_text(record, "question") or stem
    letter = answer_letter(field(record, "answer"), len(options), "answer")
    if optional(record, "image") is not None:
        image = image_entry(record["image"], "image", ctx)
    else:
        try:
            image = image_entry(text(record, "filename"), "filename", ctx)
        except RowError as exc:
            if exc.kind != "image not found":
                raise
            hint = "CV-Bench's main branch ships no img/: prepare test_2d.parquet/test_3d.parquet, which embed it"
            raise RowError(exc.field, f"{exc.message} ({hint})", exc.kind) from None
    return mc_row(
        ctx, index=index, benchmark="cvbench", source_id=optional_text(record, "idx"), question=question,
        options=options, letter=letter, image=image, category=optional_text(record, "task"),
        extra={
            "type": optional_text(record, "type"),
            "source_dataset": optional_text(record, "source"),
            "source_filename": optional_text(record, "source_filename"),
            "target_class": optional_text(record, "target_class"),
            "bbox": boxes(optional(record, "bbox"), "bbox"),
        },
    )


def hrbench(record: Mapping[str, Any], index: int, ctx: Context) -> VisionRow:
    """HR-Bench's TSV (``hr_bench_4k.tsv``/``hr_bench_8k.tsv``, VLMEvalKit style, as lmms-eval's ``hrbench`` task
    reads it): ``index``, ``question``, ``answer`` (letter), options ``A``–``D``, ``category`` (single/cross),
    ``cycle_category`` (HR-Bench averages per cycle), ``image`` (base64)."""
    options = []
    for letter in LETTERS:
        value = optional(record, letter)
        if value is None or (isinstance(value, str) and not value.strip() and letter not in "AB"):
            break
        options.append(str(value) if isinstance(value, (int, float)) else value)
    options = check_options(options, "A")
    return mc_row(
        ctx, index=index, benchmark="hrbench", source_id=optional_text(record, "index"),
        question=text(record, "question"), options=options,
        letter=answer_letter(field(record, "answer"), len(options), "answer"),
        image=base64_image(record, "image", ctx), category=optional_text(record, "category"),
        extra={"cycle_category": optional_text(record, "cycle_category")},
    )


def mme_realworld(record: Mapping[str, Any], index: int, ctx: Context) -> VisionRow:
    """MME-RealWorld (and MME-RealWorld-CN), in either public layout:

    * the official annotation JSON (``MME_RealWorld.json``/``MME_RealWorld_CN.json``): ``Question_id``, ``Image``
      (relative to the image root), ``Text``, ``Question Type`` (``Multiple Choice``; anything else is refused),
      ``Answer choices`` (``["(A) red", ...]``), ``Ground truth`` (letter), ``Task`` (Perception/Reasoning),
      ``Subtask`` (the domain: Remote Sensing, Monitoring, ...), ``Category`` (the fine task: color, count, ...),
      ``Dataset`` where a record has it (the public set the image comes from: nuScenes, ...);
    * lmms-eval's parquet (``yifanzhang114/MME-RealWorld-Lmms-eval``): ``index``, ``question``, ``bytes`` (the image
      as base64 text; ``image`` bytes or an image dict are read too), ``multi-choice options``, ``answer``,
      ``category`` (``Task/Subtask``; the task is read the way lmms-eval's scorer reads it) and ``l2-category``
      (the fine task).

    ``category`` is ``Subtask/Category`` (``Remote Sensing/color``), the unit MME-RealWorld reports; ``task``,
    ``subtask``, ``fine_category`` and ``Dataset`` (as ``source_dataset``, "" when absent) are kept apart too. The last option is often MME-RealWorld's "the image does not
    feature ..." choice; it is an ordinary option here."""
    if "Text" in record or "Question_id" in record:
        question_type = optional_text(record, "Question Type", "Multiple Choice")
        if question_type.lower() != "multiple choice":
            raise RowError("Question Type", f"only multiple choice is supported, got {question_type!r}", "bad options")
        question = text(record, "Text")
        options = lettered_options(field(record, "Answer choices"), "Answer choices")
        letter = answer_letter(field(record, "Ground truth"), len(options), "Ground truth")
        task, subtask = optional_text(record, "Task"), optional_text(record, "Subtask")
        fine = optional_text(record, "Category")
        image = image_entry(text(record, "Image"), "Image", ctx)
        source_id = optional_text(record, "Question_id")
    else:
        question = text(record, "question")
        options = lettered_options(field(record, "multi-choice options"), "multi-choice options")
        letter = answer_letter(field(record, "answer"), len(options), "answer")
        source_category = optional_text(record, "category")
        task = "Perception" if "perception" in source_category.lower() else "Reasoning" if source_category else ""
        subtask = source_category.split("/")[-1].strip()
        fine = optional_text(record, "l2-category")
        image_field = "bytes" if optional(record, "bytes") is not None else "image"
        if isinstance(optional(record, image_field), str):
            image = base64_image(record, image_field, ctx)
        else:
            image = image_entry(field(record, image_field), image_field, ctx)
        source_id = optional_text(record, "index")
    return mc_row(
        ctx, index=index, benchmark="mme_realworld", source_id=source_id, question=question, options=options,
        letter=letter, image=image, category="/".join(part for part in (subtask, fine) if part),
        extra={
            "task": task, "subtask": subtask, "fine_category": fine, "source_dataset": optional_text(record, "Dataset")
        },
    )
