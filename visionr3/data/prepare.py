"""Convert a public dataset format into the verl parquet rows visionr3's agent loops and rewards read.

``visionr3 prepare <format> <source> --out rows.parquet [options]``. The rows
(:class:`visionr3.data.rows.VisionRow`) carry ``prompt`` (chat messages with ``<image>`` placeholders),
``images`` (bytes, so the file is self-contained for Ray jobs, or checked paths with ``--keep-paths``),
``reward_model.ground_truth``, ``data_source``, ``agent_name`` and ``extra_info`` (question, ids, and for evaluation
sets the options, letter and category). The converters, one per format, are in :mod:`visionr3.data.converters`;
the prompt each format gets is in :mod:`visionr3.data.prompts`.

    visionr3 prepare visionthink_smart VisionThink-Smart-Train/ --out train.parquet
    visionr3 prepare vlm_r3 vlm_r3_rl.json --image-root images/ --out train.parquet
    visionr3 prepare vstar vstar_bench/test_questions.jsonl --out val.parquet --on-error skip
    visionr3 prepare vlm_r3 vlm_r3_rl.json --path-map /data/vlm_r3/images=images/ --out train.parquet

A bad record stops the command with an error naming the file, the row (0-based position among the source's records)
and its id, and the field (``--on-error fail``, the default: a benchmark whose denominator silently shrinks, or a
training set missing rows nobody asked to drop, is worse than a stop). ``--on-error skip`` writes every good row,
counts the reasons in the summary and lists each skipped row beside the output, in ``<stem>.skipped.jsonl``
(``--out val.parquet`` -> ``val.skipped.jsonl``). The output is written to a temporary file and renamed at the
end, so a failed run leaves no partial parquet behind. Exit codes: 0 written, 1 bad data (or nothing written), 2 bad
command line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionr3.data import converters
from visionr3.data.converters import Context, PathMap
from visionr3.data.prompts import STYLES, PromptStyle
from visionr3.data.rows import RowError, validate_row


@dataclass(frozen=True)
class Format:
    """A source format: its converter, the prompt style (and so agent loop) it defaults to, what its source is, and
    which fields identify a record in error messages."""

    convert: Callable[[Mapping[str, Any], int, Context], Any]
    style: str
    source: str
    id_fields: tuple[str, ...] = ()
    resized_images: bool = False  # rows carry resized_width/resized_height (VisionThink Smart)
    sft: bool = False  # SFT rows (messages/images/tools, for `visionr3 sft`), validated by their converter


def _sft_converter(name: str) -> Callable[[Mapping[str, Any], int, Context], Any]:
    """A converter of :mod:`visionr3.data.sft_rows`, imported on first use."""

    def convert(record: Mapping[str, Any], index: int, ctx: Context) -> Any:
        from visionr3.data import sft_rows

        return getattr(sft_rows, name)(record, index, ctx)

    convert.__name__ = name
    return convert


FORMATS: dict[str, Format] = {
    "visionthink_general": Format(
        converters.visionthink_general, "visionthink",
        "load_from_disk folder (or parquet) of VisionThink's General set", ("doc_id",),
    ),
    "visionthink_smart": Format(
        converters.visionthink_smart, "visionthink",
        "load_from_disk folder (or parquet) of VisionThink's Smart set (info.tgt_width/tgt_height/use_tool)",
        ("doc_id",), resized_images=True,
    ),
    "vlm_r3": Format(converters.vlm_r3, "vlm_r3", "VLM-R3 RL json/jsonl {image_path, question, answer, source}"),
    "vision_sr1": Format(
        converters.vision_sr1, "vision_sr1",
        "Vision-SR1-47K / mmstar: parquet, folder of shards or load_from_disk folder {images, problem, answer}",
        ("id",),
    ),
    "deepeyes": Format(
        converters.deepeyes, "zoom",
        "DeepEyes verl parquet (file or folder of shards); rows without env_name -> single_turn_agent, own prompt",
        ("extra_info.index",),
    ),
    "vstar": Format(
        converters.vstar, "zoom", "V* Bench test_questions.jsonl {image, text, label, category}", ("question_id",)
    ),
    "mmvp": Format(
        converters.mmvp, "zoom", "MMVP Questions.csv {Index, Question, Options, Correct Answer}", ("Index",)
    ),
    "cvbench": Format(
        converters.cvbench, "zoom",
        "CV-Bench test_2d.parquet / test_3d.parquet (embedded images; or the .jsonl with an img/ folder)", ("idx",),
    ),
    "hrbench": Format(
        converters.hrbench, "zoom", "HR-Bench hr_bench_4k.tsv / hr_bench_8k.tsv (base64 images)", ("index",)
    ),
    "mme_realworld": Format(
        converters.mme_realworld, "zoom",
        "MME_RealWorld(_CN).json {Question_id, Image, Text, ...} or lmms-eval's parquet folder",
        ("Question_id", "index"),
    ),
    "vlir": Format(
        _sft_converter("vlir"), "vlm_r3", "VLM-R3 VLIR SFT json {image_path, question, response_list, img_crop_list}",
        sft=True,
    ),
    "sr1_coldstart": Format(
        _sft_converter("sr1_coldstart"), "vision_sr1",
        "Vision-SR1 cold-start json (sharegpt messages/images or alpaca instruction/input/output)", sft=True,
    ),
}


class PrepareError(RuntimeError):
    """The command cannot go on (first bad row under ``--on-error fail``, unreadable source, nothing written)."""


# --- command line ------------------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    width = max(map(len, FORMATS))
    def target(spec: Format) -> str:
        if spec.sft:
            return "SFT rows (messages, images, tools) for visionr3 sft"
        return f"style {spec.style} -> {STYLES[spec.style].agent_name}"

    parser.epilog = "formats (RL rows: default prompt style -> agent loop):\n" + "\n".join(
        f"  {name:<{width}}  {spec.source}\n  {'':<{width}}  {target(spec)}" for name, spec in FORMATS.items()
    ) + "\n\nprompt styles: " + ", ".join(f"{s.name} ({s.agent_name})" for s in STYLES.values())
    parser.add_argument("format", choices=list(FORMATS), metavar="FORMAT", help="the source format (listed below)")
    parser.add_argument("source", help="the source file or folder")
    parser.add_argument("--out", required=True, help="the parquet file to write (verl's data.train_files/val_files)")
    parser.add_argument("--limit", type=int, default=None, help="write at most N rows (skipped rows do not count)")
    parser.add_argument(
        "--image-root", default=None,
        help="folder that relative image paths start from (default: the source file's folder)",
    )
    parser.add_argument(
        "--path-map", action="append", default=[], metavar="OLD=NEW",
        help="read image paths at or below OLD from NEW instead, before --image-root applies (repeatable; the "
        "longest matching OLD wins), e.g. --path-map /data/vlm_r3/images=/mnt/vlm_r3",
    )
    parser.add_argument(
        "--on-error", choices=["fail", "skip"], default="fail",
        help="fail: stop at the first bad record (default); skip: leave bad records out, count and list them",
    )
    parser.add_argument(
        "--keep-paths", action="store_true",
        help="store checked absolute image paths instead of image bytes (the paths must exist where training runs)",
    )
    parser.add_argument(
        "--prompt-style", choices=list(STYLES), default=None, metavar="STYLE",
        help="how the question is prompted (default: the style of --agent-name if it is a known loop, else the "
        "format's own)",
    )
    parser.add_argument(
        "--agent-name", default=None,
        help="agent loop of every row (default: the prompt style's); DeepEyes' tool-free rows keep single_turn_agent",
    )
    parser.add_argument(
        "--data-source", default=None,
        help="data_source of every row (default: the source's own label, else the format/benchmark name)",
    )
    parser.add_argument("--split", default=None, help="split of a DatasetDict folder or of a folder of parquet shards")
    parser.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="threads reading and checking images"
    )


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix != ".parquet":
        print(f"prepare: --out must end in .parquet (verl reads data files by suffix), got {args.out}", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:
        print(f"prepare: --limit must be at least 1, got {args.limit}", file=sys.stderr)
        return 2
    try:
        path_map = parse_path_map(args.path_map)
    except ValueError as exc:
        print(f"prepare: --path-map {exc}", file=sys.stderr)
        return 2
    try:
        summary = prepare(
            args.format, args.source, out, limit=args.limit, image_root=args.image_root, path_map=path_map,
            on_error=args.on_error, keep_paths=args.keep_paths, prompt_style=args.prompt_style,
            agent_name=args.agent_name, data_source=args.data_source, split=args.split, workers=args.workers,
        )
    except PrepareError as exc:
        print(f"prepare {args.format}: error: {exc}", file=sys.stderr)
        return 1
    print(summary.line())
    return 0


def parse_path_map(values: Sequence[str]) -> PathMap:
    """``["OLD=NEW", ...]`` -> ``((OLD, NEW), ...)``; a trailing ``/`` is dropped from both sides. Raises
    ``ValueError`` naming the bad value: no ``=``, an empty side, or the same ``OLD`` twice (which would win?)."""
    pairs: dict[str, str] = {}
    for value in values:
        old, sep, new = value.partition("=")
        old, new = old.strip(), new.strip()
        if not sep or not old or not new:
            raise ValueError(f"{value!r}: expected OLD=NEW with both sides non-empty, e.g. /data/images=/mnt/images")
        old, new = old.rstrip("/") or "/", new.rstrip("/") or "/"
        if old in pairs:
            raise ValueError(f"{value!r}: {old} is mapped twice (to {pairs[old]} and {new})")
        pairs[old] = new
    return tuple(pairs.items())


# --- the run -----------------------------------------------------------------------------------------------------


@dataclass
class Summary:
    format: str
    out: Path
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_log: Path | None = None

    def line(self) -> str:
        text = f"prepare {self.format}: wrote {self.written} rows to {self.out}"
        if self.skipped:
            reasons = ", ".join(f"{kind}: {count}" for kind, count in self.skipped.most_common())
            text += f", skipped {sum(self.skipped.values())} ({reasons}; listed in {self.skipped_log})"
        return text


def resolve_style(format_name: str, prompt_style: str | None, agent_name: str | None) -> PromptStyle:
    """``--prompt-style``, else the style written for ``--agent-name`` (so ``--agent-name visionr3_vlm_r3`` on V*
    gets VLM-R3's prompt), else the format's own."""
    if prompt_style:
        return STYLES[prompt_style]
    for style in STYLES.values():
        if agent_name and style.agent_name == agent_name:
            return style
    return STYLES[FORMATS[format_name].style]


def benchmark_name(format_name: str, source: Path) -> str | None:
    """Benchmarks whose variants are reported separately, told apart by the source's file (or folder) name:
    HR-Bench's 4K and 8K files (``hrbench_4k``/``hrbench_8k``), MME-RealWorld's Chinese and Lite editions
    (``mme_realworld_cn``, ``mme_realworld_lite``, ``mme_realworld_cn_lite``: ``CN``/``Lite`` as a word of the name, as
    in ``MME_RealWorld_CN.json`` and ``MME-RealWorld-Lite-lmms-eval/``)."""
    name = source.name.lower()
    if format_name == "hrbench":
        return "hrbench_8k" if "8k" in name else "hrbench_4k" if "4k" in name else "hrbench"
    if format_name == "mme_realworld":
        words = set(re.split(r"[-_.\s]+", name))
        return "mme_realworld" + ("_cn" if "cn" in words else "") + ("_lite" if "lite" in words else "")
    return None


def prepare(
    format_name: str,
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    limit: int | None = None,
    image_root: str | os.PathLike | None = None,
    path_map: PathMap = (),
    on_error: str = "fail",
    keep_paths: bool = False,
    prompt_style: str | None = None,
    agent_name: str | None = None,
    data_source: str | None = None,
    split: str | None = None,
    workers: int = 1,
    progress: bool = True,
) -> Summary:
    """Convert ``source`` in ``format_name`` to ``out`` (parquet); see the module docstring. Raises PrepareError."""
    from tqdm import tqdm

    spec = FORMATS[format_name]
    source_path, out = Path(source), Path(out)
    if not source_path.exists():
        raise PrepareError(f"source not found: {source}")
    style = resolve_style(format_name, prompt_style, agent_name)
    agent = agent_name or style.agent_name
    if spec.resized_images and agent != "visionr3_visionthink":
        print(
            f"prepare {format_name}: warning: Smart rows ask the dataset for 2 x the target size, which the "
            f"visionr3_visionthink loop halves for its first view; agent {agent!r} may show the 2 x image",
            file=sys.stderr,
        )
    # Absolute from here on: a converter may join the root into the path it passes on, which is then taken as
    # relative to the root again (MMVP once read MMVP/MMVP/MMVP Images/1.jpg from `prepare mmvp MMVP/Questions.csv`).
    root = Path(image_root) if image_root else (source_path if source_path.is_dir() else source_path.parent)
    ctx = Context(
        image_root=root.resolve(),
        style=style,
        agent_name=agent,
        keep_paths=keep_paths,
        data_source=data_source,
        benchmark=benchmark_name(format_name, source_path),
        path_map=tuple(path_map),
    )
    records, total = (vlmevalkit_records if format_name == "hrbench" else read_records)(source_path, split)
    summary = Summary(format=format_name, out=out)
    failures: list[dict[str, Any]] = []
    writer = ParquetRowWriter(out, images_type(keep_paths, spec.resized_images), extra_info_types())

    def convert(item: tuple[int, Any]) -> tuple[int, str | None, Any]:
        index, record = item
        record_id = _record_id(spec, format_name, record)
        try:
            if isinstance(record, Unreadable):
                raise RowError(record.field, record.message, "unreadable record")
            row = spec.convert(record, index, ctx)
            if not spec.sft:
                validate_row(row)
            return index, record_id, row
        except RowError as exc:
            return index, record_id, exc

    results = ordered_map(convert, enumerate(records), workers)
    bar = tqdm(total=total, desc=f"prepare {format_name}", unit="row", file=sys.stderr, disable=not progress)
    try:
        with closing(results):
            for index, record_id, result in results:
                bar.update(1)
                if not isinstance(result, RowError):
                    writer.add(result)
                    summary.written += 1
                    if limit is not None and summary.written >= limit:
                        break
                    continue
                message = f"{source} row {index}{f' (id {record_id!r})' if record_id else ''}: {result}"
                if on_error == "fail":
                    raise PrepareError(message)
                summary.skipped[result.kind] += 1
                failures.append(
                    {"row": index, "id": record_id, "field": result.field, "kind": result.kind, "message": message}
                )
                if len(failures) <= 5:
                    bar.write(f"skipped: {message}", file=sys.stderr)
        if summary.written == 0:
            skipped = sum(summary.skipped.values())
            raise PrepareError(f"no rows written from {source}" + (f" ({skipped} skipped)" if skipped else ""))
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    log_path = out.with_suffix(".skipped.jsonl")
    log_path.unlink(missing_ok=True)  # a previous run's list would describe another file
    if failures:
        summary.skipped_log = log_path
        with open(log_path, "w", encoding="utf-8") as log:
            for failure in failures:
                log.write(json.dumps({"file": str(source), **failure}) + "\n")
    return summary


def _record_id(spec: Format, format_name: str, record: Any) -> str | None:
    if not isinstance(record, Mapping):
        return None
    for name in spec.id_fields:
        try:
            value = converters.optional_text(record, name)
        except RowError:
            continue
        if value:
            return value
    if format_name == "vstar" and isinstance(record.get("image"), str):
        return Path(record["image"]).stem  # V* names its images after their SA-1B ids (sa_4690.jpg)
    return None


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int) -> Iterator[Any]:
    """``map(fn, items)`` on ``workers`` threads, in order, with at most ``4 × workers`` items in flight (a
    130K-row source is never read ahead into memory). Image decoding releases the GIL, so threads help."""
    if workers <= 1:
        yield from map(fn, items)
        return
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(workers, thread_name_prefix="prepare")
    window: deque = deque()
    try:
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) >= 4 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --- readers -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unreadable:
    """A record the reader could not parse (a bad JSON line): reported as that row's error."""

    field: str
    message: str


def read_records(path: Path, split: str | None = None) -> tuple[Iterator[Any], int | None]:
    """``(records, count or None)`` of a source, read lazily: a ``datasets.save_to_disk`` folder, a folder of
    parquet shards (a Hugging Face snapshot), ``.parquet``, ``.json`` (a list, or JSON lines), ``.jsonl``, ``.csv``,
    ``.tsv``. Records are plain dicts; images stay as stored (bytes, paths, base64) for the converter to check."""
    if path.is_dir():
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            return _arrow_records(path, split)
        shards = sorted(path.rglob("*.parquet"))
        if split:
            shards = [
                shard for shard in shards
                if split in shard.relative_to(path).parts[:-1] or shard.name.startswith((f"{split}-", f"{split}."))
            ]
        if not shards:
            of_split = f" of split {split!r}" if split else ""
            raise PrepareError(f"{path} is neither a datasets.save_to_disk folder nor holds parquet files{of_split}")
        return _parquet_records(shards)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_records([path])
    if suffix in (".json", ".jsonl"):
        return _json_records(path)
    if suffix in (".csv", ".tsv"):
        return _csv_records(path, "\t" if suffix == ".tsv" else ",")
    raise PrepareError(f"{path}: unsupported source (expected a folder, .parquet, .json, .jsonl, .csv or .tsv)")


def _image_reference(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and 0 < len(value.strip()) <= 64 else None


def vlmevalkit_records(path: Path, split: str | None = None) -> tuple[Iterator[Any], int | None]:
    """Records of a VLMEvalKit TSV (HR-Bench), with image references resolved.

    VLMEvalKit stores an image once; another row may hold that row's ``index`` (64 characters or fewer) in its
    ``image`` field instead (its ``ImageBaseDataset`` resolves them the same way). A first pass finds the referenced
    indices, a second keeps only those images, so memory holds the shared images, not the file.
    """
    records, total = read_records(path, split)
    referenced: set[str] = set()
    total = 0
    for record in records:
        total += 1
        reference = _image_reference(record.get("image")) if isinstance(record, Mapping) else None
        if reference:
            referenced.add(reference)
    if not referenced:
        return read_records(path, split)[0], total
    shared = {
        str(record.get("index")).strip(): record["image"]
        for record in read_records(path, split)[0]
        if isinstance(record, Mapping)
        and str(record.get("index")).strip() in referenced
        and isinstance(record.get("image"), str)
        and not _image_reference(record["image"])
    }

    def resolved() -> Iterator[Any]:
        for record in read_records(path, split)[0]:
            reference = _image_reference(record.get("image")) if isinstance(record, Mapping) else None
            if reference is None:
                yield record
            elif reference in shared:
                yield {**record, "image": shared[reference]}
            else:
                yield Unreadable("image", f"refers to the image of index {reference!r}, which no row of the file holds")

    return resolved(), total


def _arrow_records(path: Path, split: str | None) -> tuple[Iterator[Any], int]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split is None and len(loaded) == 1:
            split = next(iter(loaded))
        if split not in loaded:
            raise PrepareError(f"{path} holds splits {sorted(loaded)}: choose one with --split")
        loaded = loaded[split]

    def records() -> Iterator[Any]:
        # Arrow storage, not decoded features: images stay {"bytes", "path"} (no decode/re-encode round trip)
        for batch in loaded.with_format("arrow").iter(batch_size=64):
            yield from batch.to_pylist()

    return records(), len(loaded)


def _parquet_records(files: list[Path]) -> tuple[Iterator[Any], int]:
    import pyarrow.parquet as pq

    try:
        total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a file that is not parquet
        raise PrepareError(f"cannot read parquet: {exc}") from None

    def records() -> Iterator[Any]:
        for file in files:
            for batch in pq.ParquetFile(file).iter_batches(batch_size=64):
                yield from batch.to_pylist()

    return records(), total


def _json_records(path: Path) -> tuple[Iterator[Any], int | None]:
    if path.suffix.lower() == ".json":
        raw = path.read_text(encoding="utf-8")
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            data = None  # most often JSON lines in a .json file
        if isinstance(data, list):
            not_object = Unreadable("(json)", "not a JSON object")
            return (r if isinstance(r, dict) else not_object for r in data), len(data)
        if data is not None:
            raise PrepareError(f"{path}: expected a JSON list of records or JSON lines, got a {type(data).__name__}")

    def records() -> Iterator[Any]:
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield Unreadable("(json)", f"line {number} is not valid JSON ({exc.msg})")
                    continue
                if not isinstance(record, dict):
                    record = Unreadable("(json)", f"line {number} is not a JSON object")
                yield record

    return records(), None


def _csv_records(path: Path, delimiter: str) -> tuple[Iterator[Any], None]:
    import csv

    csv.field_size_limit(2**31 - 1)  # HR-Bench's base64 images are megabytes in one field

    def records() -> Iterator[Any]:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            for record in reader:
                if None in record:
                    yield Unreadable("(row)", f"line {reader.line_num} has more fields than the header")
                    continue
                yield record

    return records(), None


# --- writer ------------------------------------------------------------------------------------------------------


def images_type(keep_paths: bool, resized: bool):
    """The ``images`` column's Arrow type, stated rather than inferred: a first batch of text-only rows must not
    fix it as a list of nulls. Bytes mode is the Hugging Face image storage ``{bytes, path}``."""
    import pyarrow as pa

    fields = [("image", pa.string())] if keep_paths else [("bytes", pa.binary()), ("path", pa.string())]
    if resized:
        fields += [("resized_width", pa.int64()), ("resized_height", pa.int64())]
    return pa.list_(pa.struct(fields))


def extra_info_types() -> dict[str, Any]:
    """Arrow types of the ``extra_info`` fields a whole row group may hold only empty (CV-Bench's ``bbox`` is empty on
    every 2D row, V*'s boxes without an annotation file): stated, or the first group's ``list<null>`` would refuse
    the boxes of a later one."""
    import pyarrow as pa

    box_list = pa.list_(pa.list_(pa.float64()))
    return {"bbox": box_list, "target_boxes": box_list, "target_objects": pa.list_(pa.string())}


def _without_nulls(type_):
    """An inferred Arrow type with null-typed leaves (all-None fields) made strings, so later batches fit."""
    import pyarrow as pa

    if pa.types.is_null(type_):
        return pa.string()
    if pa.types.is_struct(type_):
        return pa.struct([pa.field(f.name, _without_nulls(f.type)) for f in type_])
    if pa.types.is_list(type_):
        return pa.list_(_without_nulls(type_.value_type))
    return type_


class ParquetRowWriter:
    """Rows to one parquet file in row groups of at most 256 rows / 64 MB of images (a large source never sits in
    memory), written to ``.<name>.partial`` and renamed by :meth:`commit`."""

    MAX_ROWS = 256
    MAX_BYTES = 64 << 20

    def __init__(self, out: Path, images: Any, extra_info: Mapping[str, Any] | None = None):
        self.out = out
        self.partial = out.with_name(f".{out.name}.partial")
        self.images = images
        self.extra_info = dict(extra_info or {})  # stated types of extra_info fields (extra_info_types)
        self._rows: list[dict] = []
        self._bytes = 0
        self._writer = None
        self._schema = None

    def add(self, row: Mapping[str, Any]) -> None:
        self._rows.append(dict(row))
        self._bytes += sum(len(image.get("bytes") or b"") for image in row["images"])
        if len(self._rows) >= self.MAX_ROWS or self._bytes >= self.MAX_BYTES:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._rows:
            return
        if self._schema is None:
            inferred = pa.Table.from_pylist(self._rows).schema
            self._schema = pa.schema([pa.field(f.name, self._type(f)) for f in inferred])
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.partial, self._schema)
        try:
            table = pa.Table.from_pylist(self._rows, schema=self._schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:  # a converter emitted an inconsistent type: a bug
            raise RuntimeError(f"rows do not fit the first row group's schema {self._schema} ({exc})") from exc
        self._writer.write_table(table)
        self._rows, self._bytes = [], 0

    def _type(self, column: Any) -> Any:
        """A column's type: ``images`` as stated, ``extra_info`` with its stated fields, the rest as inferred."""
        import pyarrow as pa

        if column.name == "images":
            return self.images
        if column.name == "extra_info" and pa.types.is_struct(column.type):
            return pa.struct(
                [pa.field(f.name, self.extra_info.get(f.name) or _without_nulls(f.type)) for f in column.type]
            )
        return _without_nulls(column.type)

    def commit(self) -> None:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            os.replace(self.partial, self.out)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.partial.unlink(missing_ok=True)
