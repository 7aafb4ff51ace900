"""What ``visionr3 view`` shows, read from its inputs: one :class:`Card` per sample, and the command line's filters.

Inputs, detected per line:

- eval results (:mod:`visionr3.eval.records`, ``"schema": "visionr3.eval.sample/1"``): image paths are relative to
  the JSONL's folder; ``images[0]`` is the question image, the rest are what the tools returned, in order.
- verl rollout dumps (``trainer.rollout_data_dir``: ``<step>.jsonl`` with ``input``, ``output``, ``gts``, ``score``,
  ``step`` and every reward-extra key): shown as present. Optional keys ``assistant_turns`` (list of text),
  ``crop_boxes`` (``[x1, y1, x2, y2]`` in the image's pixels, or ``image_size``'s when given), ``image`` (a path
  relative to the dump's folder, or a ``data:`` URL, or a list of them), ``data_source``, ``uid``. Numeric keys form
  the reward breakdown; ``accuracy``/``acc`` decide correct/wrong; ``tool_calls``/``crop_boxes`` decide tool use.

A directory is read as all its ``*.jsonl`` files, numeric names (steps) in numeric order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from visionr3.agent.trajectory import (
    ASSISTANT_TURNS,
    CROP_BOXES,
    DUMP_IMAGE,
    DUMP_IMAGE_SIZE,
    TOOL_CALL_LOG,
    TOOL_CALLS,
)
from visionr3.eval.records import SCHEMA, SampleRecord, ToolCall, Turn, iter_jsonl

Kind = Literal["eval", "rollout"]
_ROLLOUT_CORE = ("input", "output", "gts", "score", "step")
_ROLLOUT_SHOWN = set(_ROLLOUT_CORE) | {ASSISTANT_TURNS, CROP_BOXES, DUMP_IMAGE, DUMP_IMAGE_SIZE, "data_source", TOOL_CALL_LOG}


class ViewError(ValueError):
    """An input the viewer cannot read; the message names the file (and line)."""


# --- the typed card: what one sample shows, whichever file it came from -------------------------------------------


@dataclass
class Card:
    """One sample as the report shows it. Eval records and rollout lines are both turned into this, so the renderer
    has one shape to draw. ``images`` are resolved sources (an absolute path or a ``data:`` URL; ``""`` = none) and
    ``image_labels`` what the input wrote for each (for placeholders); ``images[0]`` is the question image and
    ``boxes`` are in the pixels of ``frame`` (the source image's ``[width, height]``; ``None`` = the image's own)."""

    kind: Kind
    source: str  # "file:line"
    benchmark: str
    key: str
    category: str = ""
    question: str = ""
    prompt: str = ""  # what the model read (eval: the user text; rollout: the decoded input)
    options: list[str] = field(default_factory=list)
    answer: str = ""
    answer_text: str = ""
    prediction: str = ""
    correct: bool | None = None  # None: the input does not say
    used_tool: bool | None = None
    score: float | None = None
    reward: dict[str, Any] = field(default_factory=dict)
    turns: list[Turn] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    boxes: list[Any] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    image_labels: list[str] = field(default_factory=list)
    frame: tuple[int, int] | None = None
    seen_size: tuple[int, int] | None = None
    output: str = ""  # rollout: the whole decoded response (shown when there are no turns, or folded)
    model: str = ""
    protocol: dict[str, Any] = field(default_factory=dict)
    other: dict[str, Any] = field(default_factory=dict)  # fields shown as they are (ids, extra, strings)
    error: str | None = None
    step: int | None = None


def _resolve(value: Any, base: Path) -> str:
    if not isinstance(value, str) or not value:
        return ""
    if value.startswith("data:"):
        return value
    path = Path(value)
    return str(path if path.is_absolute() else base / path)


def _size(value: Any) -> tuple[int, int] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        if all(isinstance(v, (int, float)) and v > 0 for v in value):
            return int(value[0]), int(value[1])
    return None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def card_from_record(record: SampleRecord, base: Path, source: str) -> Card:
    """An eval record's card; image paths are resolved against ``base`` (the JSONL's folder)."""
    boxes = list(record.crop_boxes or []) or [call.box for call in record.tool_calls if call.box]
    turns = record.turns
    return Card(
        kind="eval",
        source=source,
        benchmark=_text(record.benchmark),
        key=_text(record.key),
        category=_text(record.category),
        question=_text(record.question),
        prompt=_text(record.prompt),
        options=[_text(option) for option in record.options or []],
        answer=_text(record.answer),
        answer_text=_text(record.answer_text),
        prediction=_text(record.prediction),
        correct=bool(record.correct),
        used_tool=record.used_tool,
        score=record.score if _is_number(record.score) else None,
        reward=dict(record.reward or {}),
        turns=[Turn(_text(t.role), _text(t.text), [i for i in t.images or [] if isinstance(i, int)]) for t in turns],
        tool_calls=list(record.tool_calls),
        boxes=boxes,
        images=[_resolve(path, base) for path in record.images or []],
        image_labels=[_text(path) for path in record.images or []],
        frame=_size(record.image_size),
        seen_size=_size(record.seen_size),
        model=_text(record.model),
        protocol=dict(record.protocol or {}),
        other=dict(record.extra or {}),
        error=record.error,
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))  # bool included: 0/1 flags such as ``excluded`` are reward terms too


def card_from_rollout(row: dict[str, Any], base: Path, source: str) -> Card:
    """A verl rollout-dump line's card: what is present is shown, nothing is invented.

    Correct/wrong comes from an ``accuracy`` (or ``acc``) number (>= 0.5, as the eval records count it), tool use
    from ``tool_calls`` or ``crop_boxes``; without them the card says "unknown" and the correct/wrong and tool
    filters leave it out."""
    numbers = {k: v for k, v in row.items() if k not in _ROLLOUT_SHOWN and _is_number(v)}
    accuracy = next((row[k] for k in ("accuracy", "acc") if _is_number(row.get(k))), None)
    boxes = row.get(CROP_BOXES)
    boxes = boxes if isinstance(boxes, list) else []
    if _is_number(row.get(TOOL_CALLS)):
        used_tool: bool | None = row[TOOL_CALLS] > 0 or bool(boxes)
    elif CROP_BOXES in row:
        used_tool = bool(boxes)
    else:
        used_tool = None
    image = row.get(DUMP_IMAGE)
    labels = [v if isinstance(v, str) else "" for v in (image if isinstance(image, list) else [image] if image else [])]
    turns = row.get(ASSISTANT_TURNS)
    turns = [Turn(role="assistant", text=str(t)) for t in turns] if isinstance(turns, list) else []
    calls = row.get(TOOL_CALL_LOG)  # visionr3's trainer adds it (visionr3/agent/trajectory.py dump_columns)
    tool_calls = [ToolCall.from_log(c) for c in (calls if isinstance(calls, list) else []) if isinstance(c, dict)]
    step = row.get("step")
    ident = row.get("uid") or row.get("request_id") or source.rsplit(":", 1)[-1]
    gts = row.get("gts")
    return Card(
        kind="rollout",
        source=source,
        benchmark=str(row.get("data_source") or "rollouts"),
        key=f"step {step} · {ident}",
        prompt=str(row.get("input") or ""),
        answer="" if gts is None else gts if isinstance(gts, str) else json.dumps(gts, ensure_ascii=False),
        correct=None if accuracy is None else accuracy >= 0.5,
        used_tool=used_tool,
        score=row["score"] if _is_number(row.get("score")) else None,
        reward=numbers,
        turns=turns,
        tool_calls=tool_calls,
        boxes=boxes,
        images=[_resolve(label, base) for label in labels],
        image_labels=[label[:40] + "…" if label.startswith("data:") else label for label in labels],
        frame=_size(row.get(DUMP_IMAGE_SIZE)),
        output=str(row.get("output") or ""),
        other={k: v for k, v in row.items() if k not in _ROLLOUT_SHOWN and not _is_number(v)},
        step=step if isinstance(step, int) else None,
    )


def _jsonl_files(path: Path) -> list[Path]:
    """A file as itself; a folder as its ``*.jsonl`` files, step-numbered names (``12.jsonl``) in step order first."""
    if not path.exists():
        raise ViewError(f"{path}: no such file or directory")
    if path.is_file():
        return [path]
    files = [p for p in path.glob("*.jsonl") if p.is_file()]
    if not files:
        raise ViewError(f"{path}: a directory with no *.jsonl files (expected eval results or verl rollout dumps)")
    return sorted(files, key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.name))


def load_cards(inputs: Iterable[str | Path]) -> tuple[list[Card], list[tuple[Path, int, str]]]:
    """Every sample of every input, in order, plus ``(file, samples, kinds)`` per file read.

    The kind is decided per line: a ``schema`` key means an eval record (and must be ours), ``input`` and ``output``
    keys mean a verl rollout dump line; anything else is a :class:`ViewError` naming the file and line, because a
    report that silently drops lines would misstate what a run did."""
    cards: list[Card] = []
    files: list[tuple[Path, int, str]] = []
    for given in inputs:
        for path in _jsonl_files(Path(given)):
            base, kinds, before = path.parent, set(), len(cards)
            try:
                lines = list(iter_jsonl(path))
            except (ValueError, UnicodeDecodeError) as exc:
                raise ViewError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from exc
            for number, data in lines:
                where = f"{path}:{number}"
                if not isinstance(data, dict):
                    raise ViewError(f"{where}: expected a JSON object, got {type(data).__name__}")
                if "schema" in data:
                    if data["schema"] != SCHEMA:
                        raise ViewError(f"{where}: schema is {data['schema']!r}; this viewer reads {SCHEMA!r}")
                    try:
                        cards.append(card_from_record(SampleRecord.from_dict(data), base, where))
                    except (TypeError, ValueError, AttributeError) as exc:
                        raise ViewError(f"{where}: not a valid {SCHEMA} record ({exc})") from exc
                    kinds.add("eval")
                elif "input" in data and "output" in data:
                    try:
                        cards.append(card_from_rollout(data, base, where))
                    except (TypeError, ValueError, AttributeError) as exc:
                        raise ViewError(f"{where}: not a readable verl rollout dump line ({exc})") from exc
                    kinds.add("rollout")
                else:
                    keys = ", ".join(sorted(map(str, data))[:8]) or "none"
                    raise ViewError(
                        f"{where}: neither a visionr3 eval record (a 'schema' key) nor a verl rollout dump line "
                        f"('input' and 'output' keys); its keys: {keys}"
                    )
            files.append((path, len(cards) - before, "+".join(sorted(kinds)) or "empty"))
    return cards, files


def select(
    cards: Sequence[Card],
    *,
    benchmark: str | Sequence[str] | None = None,
    only: str | None = None,
    tool: str | None = None,
    limit: int | None = None,
) -> list[Card]:
    """The cards the command line asked for, in order; ``limit`` counts after the other filters. A card whose
    correctness (or tool use) is unknown is left out by ``only`` (or ``tool``); a benchmark name that no input has
    is an error."""
    if only not in (None, "correct", "wrong"):
        raise ValueError(f"only must be 'correct' or 'wrong', got {only!r}")
    if tool not in (None, "used", "unused"):
        raise ValueError(f"tool must be 'used' or 'unused', got {tool!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    names = {benchmark} if isinstance(benchmark, str) else set(benchmark or ())
    unknown = names - {card.benchmark for card in cards}
    if unknown:  # a typo would otherwise give an empty report that looks like "no samples"
        have = ", ".join(sorted({card.benchmark for card in cards})) or "none"
        raise ViewError(f"no samples of benchmark {', '.join(sorted(unknown))}; the inputs have: {have}")
    chosen = [
        card
        for card in cards
        if (not names or card.benchmark in names)
        and (only is None or card.correct is (only == "correct"))
        and (tool is None or card.used_tool is (tool == "used"))
    ]
    return chosen if limit is None else chosen[:limit]
