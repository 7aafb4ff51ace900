"""SFT rows for verl's multi-turn SFT trainer, and the converters from the papers' cold-start formats.

The row (:class:`SFTRow`, read by :class:`visionr3.data.sft_dataset.VisionSFTDataset`):

- ``messages``: ``[{"role": "system"|"user"|"assistant"|"tool", "content": str}]``. Each image is an ``<image>``
  placeholder in the text, in user, assistant and tool turns alike; the n-th placeholder of the chat is the n-th
  entry of ``images``. A tool call is written in the assistant's text exactly as Qwen's hermes templates render a
  ``tool_calls`` entry (``<tool_call>\\n{"name": …, "arguments": …}\\n</tool_call>``): the tokens are the same, and
  the parquet schema stays ``{role, content}`` for every format.
- ``images``: Hugging Face image dicts ``{"bytes": <the encoded file>, "path": None}`` (files are stored as they are,
  not re-encoded), or ``{"image": "/abs/path"}`` with ``visionr3 prepare --keep-paths``.
- ``tools``: a JSON list of OpenAI tool schemas, or ``""``. JSON, because schemas differ in shape from tool to tool
  and a parquet struct column would null-pad them into a different schema per file.

Converters, with :mod:`visionr3.data.converters`' signature ``(record, index, ctx) -> row`` so ``visionr3 prepare``
runs them like its RL converters (images read, decoded and checked by :func:`visionr3.data.converters.image_entry`;
errors are :class:`~visionr3.data.rows.RowError` naming the field):

- :func:`vlir` — VLM-R3's VLIR SFT set ``{image_path, question, response_list, img_crop_list}`` (papers.md §2.4;
  ``qwen_vl_finetune/qwenvl/data/data_qwen.py``): user = the image, then the question and VLM-R3's crop-tool
  instruction; one assistant turn = segment 1, crop 1, segment 2, crop 2, …, every segment ending in ``\\n``. That is
  where the ``visionr3_vlm_r3`` agent loop puts crops at RL time: inside the assistant turn, right after the box.
- :func:`sr1_coldstart` — Vision-SR1's cold-start files (its LLaMA-Factory ``data/``, papers.md §3.3): the sharegpt
  files ``{messages: [{role, content}], images: [path]}`` with ``<image>`` in the user text (``A-vision_see_think``,
  ``A-vision_reasoner``), and the alpaca file ``{instruction, input, output}`` (``A-caption_reasoners(text)``: caption
  → CoT + answer, no image). Texts are kept byte for byte.

:func:`chat_row` turns an in-memory chat (PIL images in content lists, ``tool_calls``) into a row; the CPU demo's
demonstrations use it. :func:`write_sft_parquet` writes rows with the schema above.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypedDict

from visionr3.data.converters import Context, field, image_entry, text
from visionr3.data.prompts import VLM_R3_PROMPT
from visionr3.data.rows import IMAGE, RowError
from visionr3.demo.synthetic import png_bytes

ROLES = ("system", "user", "assistant", "tool")
_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "observation": "tool", "function_call": "assistant"}


class SFTRow(TypedDict):
    messages: list[dict[str, str]]  # {"role", "content"}; "<image>" placeholders, in order, match ``images``
    images: list[dict[str, Any]]  # {"bytes", "path"} (or {"image": path} with --keep-paths)
    tools: str  # JSON list of OpenAI tool schemas, or ""


def validate_sft_row(row: Mapping[str, Any]) -> None:
    """The invariants of every SFT row (verl's dataset asserts the placeholder count only when it reads the row)."""
    messages = row["messages"]
    if messages is None or len(messages) == 0:
        raise RowError("messages", "no messages", "missing field")
    for turn, message in enumerate(messages):
        if message.get("role") not in ROLES:
            raise RowError(f"messages[{turn}].role", f"{message.get('role')!r} is not one of {', '.join(ROLES)}",
                           "wrong type")
        if not isinstance(message.get("content"), str):
            raise RowError(f"messages[{turn}].content", "expected text (images are <image> placeholders)", "wrong type")
    if not any(message["role"] == "assistant" for message in messages):
        raise RowError("messages", "no assistant turn (nothing to train on)", "missing field")
    placeholders = sum(message["content"].count(IMAGE) for message in messages)
    if placeholders != len(row["images"]):
        message = f"{placeholders} {IMAGE} placeholder(s) for {len(row['images'])} image(s)"
        raise RowError("messages", message, "placeholder mismatch")


def vlir(record: Mapping[str, Any], index: int, ctx: Context) -> SFTRow:
    """One VLM-R3 VLIR record -> :class:`SFTRow` (module docstring). ``index`` is unused (SFT rows carry no
    ``extra_info``); it is there for ``visionr3 prepare``'s converter signature."""
    question = text(record, "question")
    segments = field(record, "response_list")
    crops = record.get("img_crop_list") or []
    if not isinstance(segments, list) or not segments:
        raise RowError("response_list", "expected a non-empty list of text segments", "wrong type")
    if not isinstance(crops, list):
        raise RowError("img_crop_list", f"expected a list of image paths, got {type(crops).__name__}", "wrong type")
    if len(crops) > len(segments):
        message = f"{len(crops)} crops for {len(segments)} segments (crop i follows response_list[i])"
        raise RowError("img_crop_list", message, "placeholder mismatch")
    if IMAGE in question:
        raise RowError("question", f"contains a literal {IMAGE} (the image goes before the question)", "wrong type")
    parts = []
    for i, segment in enumerate(segments):
        if not isinstance(segment, str):
            raise RowError(f"response_list[{i}]", f"expected text, got {type(segment).__name__}", "wrong type")
        if IMAGE in segment:
            raise RowError(f"response_list[{i}]", f"contains a literal {IMAGE}", "wrong type")
        parts.append(segment if segment.endswith("\n") else segment + "\n")  # VLM-R3: every segment ends in \n
        if i < len(crops):
            parts.append(IMAGE)
    images = [image_entry(text(record, "image_path"), "image_path", ctx)]
    images += [image_entry(crop, f"img_crop_list[{i}]", ctx) for i, crop in enumerate(crops)]
    row: SFTRow = {
        "messages": [
            {"role": "user", "content": IMAGE + question + VLM_R3_PROMPT},
            {"role": "assistant", "content": "".join(parts)},
        ],
        "images": images,
        "tools": "",
    }
    validate_sft_row(row)
    return row


def sr1_coldstart(record: Mapping[str, Any], index: int, ctx: Context) -> SFTRow:
    """One Vision-SR1 cold-start record (sharegpt ``messages``/``images``, or alpaca ``instruction``/``input``/
    ``output``) -> :class:`SFTRow`, texts unchanged. ``index`` is unused (see :func:`vlir`)."""
    if "messages" in record or "conversations" in record:
        key = "messages" if "messages" in record else "conversations"
        messages = field(record, key)
        if not isinstance(messages, list):
            raise RowError(key, f"expected a list of turns, got {type(messages).__name__}", "wrong type")
        out = []
        for turn, message in enumerate(messages):
            if not isinstance(message, Mapping):
                raise RowError(f"{key}[{turn}]", "expected an object with role and content", "wrong type")
            role = message.get("role", message.get("from"))
            content = message.get("content", message.get("value"))
            if not isinstance(content, str):
                raise RowError(f"{key}[{turn}].content", "expected text", "wrong type")
            out.append({"role": _SHAREGPT_ROLES.get(role, role), "content": content})
        references = record.get("images") or []
        if isinstance(references, (str, Mapping)):
            references = [references]
        images = [image_entry(ref, f"images[{i}]", ctx) for i, ref in enumerate(references)]
        row: SFTRow = {"messages": out, "images": images, "tools": ""}
    elif "instruction" in record:
        instruction = text(record, "instruction")
        extra = record.get("input") or ""
        prompt = f"{instruction}\n{extra}" if extra else instruction  # LLaMA-Factory's alpaca join
        messages = [{"role": "system", "content": str(record["system"])}] if record.get("system") else []
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": text(record, "output")}]
        row = {"messages": messages, "images": [], "tools": ""}
    else:
        raise RowError("messages", "neither a sharegpt record (messages) nor an alpaca record (instruction)",
                       "missing field")
    validate_sft_row(row)
    return row


def chat_row(messages: Iterable[Mapping[str, Any]], tools: Iterable[Mapping[str, Any]] | None = None) -> SFTRow:
    """An in-memory chat -> :class:`SFTRow`.

    Content is text or a list of ``{"type": "text", "text"}`` / ``{"type": "image", "image": PIL image}`` items (PIL
    images are stored as PNG); an assistant's ``tool_calls`` become the ``<tool_call>`` text the chat template renders.
    """
    images: list[dict[str, Any]] = []
    out = []
    for message in messages:
        content = message.get("content") or ""
        if isinstance(content, list):
            pieces = []
            for item in content:
                if item.get("type") == "image" or "image" in item:
                    images.append({"bytes": _png(item["image"]), "path": None})
                    pieces.append(IMAGE)
                else:
                    pieces.append(item.get("text", ""))
            content = "".join(pieces)
        calls = [render_tool_call(call) for call in message.get("tool_calls") or []]
        if calls:
            content = "\n".join(([content] if content else []) + calls)
        out.append({"role": message["role"], "content": content})
    row: SFTRow = {"messages": out, "images": images, "tools": json.dumps(list(tools)) if tools else ""}
    validate_sft_row(row)
    return row


def render_tool_call(call: Mapping[str, Any]) -> str:
    """A tool call as Qwen's hermes templates render it (their ``tojson`` is ``json.dumps``' default separators)."""
    function = call.get("function", call)
    arguments = function.get("arguments", {})
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return f'<tool_call>\n{{"name": "{function["name"]}", "arguments": {arguments}}}\n</tool_call>'


def _png(image: Any) -> bytes:
    return bytes(image) if isinstance(image, (bytes, bytearray)) else png_bytes(image)


def sft_schema():
    """The Arrow schema of SFT rows (stated, so a first batch of text-only rows cannot fix ``images`` as nulls)."""
    import pyarrow as pa

    return pa.schema([
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
        ("tools", pa.string()),
    ])


def write_sft_parquet(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> tuple[Path, int]:
    """Write rows (validated) to a parquet file verl's SFT dataset reads; returns ``(path, number of rows)``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [dict(row) for row in rows]
    for i, row in enumerate(rows):
        try:
            validate_sft_row(row)
        except RowError as exc:
            raise RowError(exc.field, f"row {i}: {exc.message}", exc.kind) from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=sft_schema()), path)
    return path, len(rows)
