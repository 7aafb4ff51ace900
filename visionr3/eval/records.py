"""The typed contract of the evaluation stage: one :class:`SampleRecord` per (question, sample) as one JSONL line.

Why a file of lines and not a table at the end: evaluation runs for hours on a cluster and crashes (OOM, preemption,
a dead judge endpoint). Every finished sample is appended and flushed at once, so a crashed run loses at most the
samples in flight, and ``visionr3 eval`` with the same ``--out`` resumes: it reads the file back
(:func:`read_records`, which tolerates a torn last line), skips every ``key`` already there and computes only the
rest. A record carries its own :class:`~visionr3.eval.protocol.EvalProtocol` as a dict, so a number is never read
without the option order, turn cap, pixel budgets and scorer that produced it, and a resume under a different
protocol is refused instead of mixing two protocols in one file.

The same records feed the summary table (:mod:`visionr3.eval.summary`) and the HTML viewer (``visionr3 view``).
Images are files next to the JSONL (``<out>.images/``), referenced by paths relative to the JSONL's folder: the first
entry of ``images`` is a display copy of the question's image (boxes are in the source image's pixels,
``image_size``), the following ones are the images the tools returned, in order (``ToolCall.image`` points into it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SCHEMA = "visionr3.eval.sample/1"


@dataclass
class Turn:
    """One run of the conversation after the prompt.

    ``role`` is ``assistant`` (tokens the model generated) or ``tool`` (what the loop inserted: a tool response,
    an inline crop, an error message). ``text`` is decoded with special tokens kept except that each image is shown
    as ``<image>``; ``images`` are indices into :attr:`SampleRecord.images`.
    """

    role: str
    text: str
    images: list[int] = field(default_factory=list)


@dataclass
class ToolCall:
    """One tool call as the loop executed it: ``valid`` calls returned an image; ``box`` is the crop in the
    source image's pixels (crop tools only); ``image`` the index of the returned image in ``SampleRecord.images``;
    ``data_error`` marks a call that failed on the source image, not on the model's arguments."""

    name: str
    arguments: Any = None
    valid: bool = False
    error: str | None = None
    box: list[int] | None = None
    image: int | None = None
    data_error: bool = False

    @classmethod
    def from_log(cls, entry: dict[str, Any]) -> "ToolCall":
        """A call from the agent loop's ``tool_call_log`` entry (``visionr3.agent.loop.call_log_entry``)."""
        return cls(
            name=str(entry.get("name")), arguments=entry.get("arguments"), valid=bool(entry.get("valid")),
            error=entry.get("error"), box=entry.get("box"), data_error=bool(entry.get("data_error")),
        )


@dataclass
class SampleRecord:
    """One evaluated sample. ``key`` = ``{benchmark}/{sample_id}#{sample}`` is unique within a results file."""

    key: str
    benchmark: str
    sample_id: str
    sample: int = 0  # which of the k samples of this question (0 when greedy)
    category: str = ""
    data_file: str = ""
    row: int = -1
    question: str = ""  # the question stem (no options, no image placeholders)
    prompt: str = ""  # the user text the model read (options as shuffled)
    options: list[str] = field(default_factory=list)  # as shown, letter order
    answer: str = ""  # the gold answer (the letter, for multiple choice, after shuffling)
    answer_text: str = ""  # the gold option's text ("" for open questions)
    option_order: list[int] = field(default_factory=list)  # shown option i is source option option_order[i]
    prediction: str = ""  # the extracted answer ("" if none)
    score: float = 0.0  # the recipe's scalar reward
    correct: bool = False  # accuracy >= 0.5 (the accuracy component, rules or judge)
    reward: dict[str, float] = field(default_factory=dict)  # every reward component (visionr3.reward.score)
    turns: list[Turn] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    crop_boxes: list[list[int]] = field(default_factory=list)  # source pixels, in call order
    images: list[str] = field(default_factory=list)  # relative to the JSONL's folder; [0] = the question's image
    image_size: list[int] = field(default_factory=list)  # [width, height] of the source image
    seen_size: list[int] = field(default_factory=list)  # [width, height] the model saw first
    num_turns: int = 0  # assistant turns
    response_tokens: int = 0
    seconds: float = 0.0  # wall time of the batch this sample ran in, divided by the batch size
    model: str = ""
    protocol: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # benchmark fields the summary may use (pair_id, ...)
    error: str | None = None  # the sample failed (kept, counted as wrong, shown in the viewer)
    schema: str = SCHEMA

    @property
    def used_tool(self) -> bool:
        return bool(self.tool_calls)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, default=_json_default)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SampleRecord":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["turns"] = [t if isinstance(t, Turn) else Turn(**t) for t in values.get("turns") or []]
        values["tool_calls"] = [c if isinstance(c, ToolCall) else ToolCall(**c) for c in values.get("tool_calls") or []]
        return cls(**values)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def sample_key(benchmark: str, sample_id: str, sample: int) -> str:
    return f"{benchmark}/{sample_id}#{sample}"


def read_records(path: str | os.PathLike) -> list[SampleRecord]:
    """Every complete record of a results file, in file order.

    A last line without its newline is a write torn by a crash: it is dropped (and :func:`repair` cuts it off before
    appending). Any other line that is not a record raises ``ValueError`` naming the file and line.
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with path.open(encoding="utf-8") as f:
        lines = f.readlines()
    for number, line in enumerate(lines, start=1):
        if not line.endswith("\n"):
            break  # torn tail
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if data.get("schema") != SCHEMA:
                raise ValueError(f"schema is {data.get('schema')!r}, expected {SCHEMA!r}")
            records.append(SampleRecord.from_dict(data))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: not a visionr3 eval record ({exc})") from exc
    return records


def repair(path: str | os.PathLike) -> int:
    """Cut a torn last line (no trailing newline) off ``path``; returns the bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with path.open("r+b") as f:
        f.truncate(keep)
    return len(data) - keep


class RecordWriter:
    """Appends records to a JSONL file, one flushed (and fsynced) line each, so a crash loses no finished sample."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair(self.path)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, record: SampleRecord) -> None:
        self._file.write(record.to_json() + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def write_all(self, records: Iterable[SampleRecord]) -> None:
        for record in records:
            self.write(record)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every complete JSON line of any JSONL file (eval results or training dumps)."""
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith("\n") or not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from exc


__all__ = [
    "SCHEMA",
    "RecordWriter",
    "SampleRecord",
    "ToolCall",
    "Turn",
    "iter_jsonl",
    "read_records",
    "repair",
    "sample_key",
]
