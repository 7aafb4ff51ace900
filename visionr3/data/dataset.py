"""verl's ``RLHFDataset`` with images loaded through :mod:`visionr3.processing` instead of ``qwen_vl_utils``.

Select it with ``data.custom_cls.path=pkg://visionr3.data.dataset data.custom_cls.name=VisionRLDataset``. verl calls
the ``_process_multi_modal_info`` classmethod both in the dataset (prompt-length filtering) and in every agent-loop
worker (with the dataset class and ``data`` config), so overriding it here is what keeps ``qwen_vl_utils`` — which
cannot be imported without torchvision — out of the whole rollout path, on CPU and GPU alike.

Pixel budget of the *prompt* image: ``data.min_pixels`` / ``data.max_pixels`` (VisionThink's names), or per-image
``min_pixels``/``max_pixels`` in the row's ``images`` dicts; unset means qwen-vl-utils' defaults (4..16384 tokens).
Set them to the processor's own budget so the image the policy sees is exactly the one our tools map boxes from.

**Building at scale** (47K rows, DeepEyes' and Vision-SR1's size; ``benchmarks/bench_dataset_scale.py``). verl's
prompt-length filter reads every row through ``datasets`` — which decodes each image of a public parquet (its
``Image`` feature) a thousand rows at a time — then renders, resizes and runs the image processor on it, only to count
tokens; ``datasets`` fingerprints the filter by pickling the tokenizer and processor. :meth:`VisionRLDataset.
maybe_filter_out_long_prompts` counts the same tokens from the chat template and each image's *header* (an image's
token count depends only on its size), keeps images undecoded in the dataframe (they are decoded where the model
needs pixels, in the agent loop), caches the lengths beside ``datasets``' own cache files, and names the file, row and
field of a row it cannot read instead of dropping it with a traceback.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
import uuid
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from verl.utils.dataset.rl_dataset import RLHFDataset

from visionr3.processing import fetched_size, image_size, process_vision_info, seen_size

ROW_FIELD = "visionr3_row"
"""The field :meth:`VisionRLDataset.__getitem__` adds to a row: where it came from (``<file> row <n>``)."""

PROMPT_LENGTHS_VERSION = 1
"""Bump when :meth:`VisionRLDataset.prompt_lengths` counts differently: cached lengths of another version are ignored."""


class _RowView:
    """The attributes ``RLHFDataset._build_messages`` reads, for rows that do not come from a dataset object."""

    image_key = "images"
    video_key = "videos"
    audio_key = "audios"
    processor = object()  # only checked to exist when there are images


def raw_prompt(messages: list[dict[str, Any]], images: list[Any]) -> list[dict[str, Any]]:
    """``raw_prompt`` exactly as ``RLHFDataset.__getitem__`` builds it (verl's own ``_build_messages``): each
    ``<image>`` placeholder in ``messages`` becomes an image item taking ``images`` in order. For rows that are not
    read through a dataset object (evaluation rows, lmms-eval requests, test rows); ``messages`` are not modified."""
    example = {"prompt": [dict(m) for m in messages], "images": list(images)}  # verl rewrites contents in place
    return RLHFDataset._build_messages(_RowView(), example, key="prompt")


def _config_get(config: Any, key: str) -> Any:
    return config.get(key) if config is not None else None


class VisionRLDataset(RLHFDataset):
    """``RLHFDataset`` whose image loading runs without torchvision (and identically with it)."""

    @classmethod
    def _process_multi_modal_info(cls, messages: list[dict], image_patch_size, config) -> tuple[Any, Any, Any]:
        images = process_vision_info(
            messages,
            patch_size=image_patch_size,
            min_pixels=_config_get(config, "min_pixels"),
            max_pixels=_config_get(config, "max_pixels"),
        )
        return images, None, cls._extract_audio_info(messages)

    @classmethod
    async def process_vision_info(cls, messages: list[dict], image_patch_size, config) -> tuple[Any, Any]:
        """verl's legacy async hook, kept consistent with :meth:`_process_multi_modal_info`."""
        images, videos, _ = await cls.process_multi_modal_info(messages, image_patch_size, config)
        return images, videos

    # -- building: the prompt-length filter without decoding an image ---------------------------------------------

    def maybe_filter_out_long_prompts(self, dataframe=None):
        """verl's filter (rows over ``data.max_prompt_length`` tokens are dropped), counted without decoding images.

        The count is verl's, token for token (a test compares them): the processor's chat template rendered with the
        same tools and kwargs, tokenized, each image token expanded to ``(h / factor) × (w / factor)`` tokens at the
        size the agent loop will resize the image to (:func:`~visionr3.processing.fetched_size`, then the
        processor's own budget). Falls back to verl's filter for text-only datasets, video/audio columns and
        processors that do not expand one image token per merged patch (anything but the Qwen-VL family).
        """
        dataframe = lazy_images(dataframe, self.image_key)
        skip = bool(_config_get(self.config, "skip_bad_rows"))
        bad: dict[int, str] | None = {} if skip else None
        self.skipped_rows = 0
        self._check_ground_truths(dataframe, bad)
        if not self.filter_overlong_prompts:
            return self._drop_bad_rows(dataframe, bad)
        if not self._counts_without_pixels(dataframe):
            return super().maybe_filter_out_long_prompts(self._drop_bad_rows(dataframe, bad))
        cache = self._lengths_cache_path(dataframe)
        lengths = _read_lengths(cache, len(dataframe))
        if lengths is None:
            mismatch = self._probe_mismatch()
            if mismatch:
                print(f"visionr3: counting image tokens from sizes disagrees with the processor ({mismatch}); "
                      "using verl's filter, which decodes every image")
                return super().maybe_filter_out_long_prompts(self._drop_bad_rows(dataframe, bad))
            lengths = self.prompt_lengths(dataframe, bad=bad)
            if not bad:  # a bad row's length is a stand-in: only a clean count is reused
                _write_lengths(cache, lengths)
        keep = np.flatnonzero(lengths <= self.max_prompt_length)
        if bad:
            keep = np.setdiff1d(keep, np.fromiter(bad, dtype=np.int64))
            self._report_skipped(bad, len(dataframe))
        if len(keep) < len(dataframe):
            dataframe = dataframe.select(keep)
            self._kept_rows = keep
        print(f"filter dataset len: {len(dataframe)}")
        return dataframe

    # -- rows that cannot train: named, or skipped and counted (data.skip_bad_rows) ---------------------------------

    def _bad_row(self, bad: dict[int, str] | None, row: int, field: str, exc: BaseException) -> None:
        """Raise :meth:`_row_error` for ``row``, or record it in ``bad`` when skipping (its first fault only)."""
        error = self._row_error(row, field, exc)
        if bad is None:
            raise error from exc
        bad.setdefault(row, str(error))

    def _check_ground_truths(self, dataframe, bad: dict[int, str] | None) -> None:
        """Every row has a ground truth the reward can read: ``reward_model.ground_truth`` a non-empty string, a
        number, or a list of them (alternatives). verl's reward path reads it unchecked and our graders turn a
        missing one into "" — every sample of that prompt would score 0, a silent loss of signal."""
        if "reward_model" not in dataframe.column_names:
            raise ValueError(f"{', '.join(map(str, self.data_files))}: no 'reward_model' column: every row needs "
                             "reward_model.ground_truth (docs/data.md)")
        start = 0
        for table in dataframe.with_format("arrow").select_columns(["reward_model"]).iter(batch_size=4096):
            for offset, value in enumerate(table.column("reward_model").to_pylist()):
                problem = _ground_truth_problem(value)
                if problem is not None:
                    self._bad_row(bad, start + offset, "reward_model.ground_truth", ValueError(problem))
            start += table.num_rows

    def _drop_bad_rows(self, dataframe, bad: dict[int, str] | None):
        if not bad:
            return dataframe
        self._report_skipped(bad, len(dataframe))
        self._kept_rows = np.setdiff1d(np.arange(len(dataframe)), np.fromiter(bad, dtype=np.int64))
        return dataframe.select(self._kept_rows)

    # -- where a row came from, for errors found after the build (the trainer's decode check) ---------------------

    def __getitem__(self, item):
        """verl's row, plus ``visionr3_row``: ``<file> row <n>`` of the data file it came from, which the trainer
        names when the row's image does not decode (:meth:`VisionR3SyncTrainer._fetch_one_gen_batch`)."""
        row = super().__getitem__(item)
        row[ROW_FIELD] = self.source_location(item)
        return row

    def source_location(self, item: int) -> str:
        """``<file> row <n>`` of dataset item ``item`` (after the build's filter), from the files' row counts."""
        kept = getattr(self, "_kept_rows", None)
        row = int(kept[item]) if kept is not None else int(item)
        if self.max_samples > 0:
            return f"row {row} of the {self.max_samples} rows selected (data.max_samples) from {', '.join(map(str, self.data_files))}"
        for path, count in self._file_rows():
            if row < count:
                return f"{path} row {row}"
            row -= count
        return f"row {row} of {', '.join(map(str, self.data_files))}"

    def _file_rows(self) -> list[tuple[str, int]]:
        if getattr(self, "_file_row_counts", None) is None:
            import pyarrow.parquet as pq

            counts = []
            for path in map(str, self.data_files):
                if path.endswith(".parquet"):
                    counts.append((path, pq.ParquetFile(path).metadata.num_rows))
                else:
                    import datasets

                    counts.append((path, len(datasets.load_dataset("json", data_files=path)["train"])))
            self._file_row_counts = counts
        return self._file_row_counts

    def _report_skipped(self, bad: dict[int, str], total: int) -> None:
        self.skipped_rows = len(bad)
        shown = "; ".join(bad[row] for row in sorted(bad)[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        print(f"visionr3: skipped {len(bad)} bad row(s) of {total} (data.skip_bad_rows=true): {shown}{more}",
              flush=True)

    def _counts_without_pixels(self, dataframe) -> bool:
        processor = self.processor
        image_processor = getattr(processor, "image_processor", None)
        return (
            processor is not None
            and getattr(processor, "image_token", None) is not None
            and hasattr(image_processor, "patch_size")
            and hasattr(image_processor, "merge_size")
            and not {self.video_key, self.audio_key} & set(dataframe.column_names)
        )

    def prompt_lengths(self, dataframe, batch_size: int = 1024, bad: dict[int, str] | None = None) -> np.ndarray:
        """Prompt tokens of every row of ``dataframe`` as verl's filter counts them; no image is decoded.

        Raises ValueError naming the data file, the row and the field of a row that cannot be read (verl's filter
        would print a traceback and drop it, shrinking the training set without a word): an image whose header is
        unreadable, over PIL's decompression-bomb limit, or too thin for the processor (aspect ratio over 200). With
        ``bad`` (a dict) such rows are recorded there instead, with a length of 0.
        """
        from tqdm import tqdm

        processor, tokenizer = self.processor, self.processor.tokenizer
        apply_kwargs = dict(self.apply_chat_template_kwargs)
        if self.tool_schemas is not None:
            apply_kwargs["tools"] = self.tool_schemas
        image_token_id = tokenizer.convert_tokens_to_ids(processor.image_token)
        columns = [c for c in (self.prompt_key, self.image_key) if c in dataframe.column_names]
        lengths = np.empty(len(dataframe), dtype=np.int64)
        tokens_at: dict[tuple[int, int], int] = {}  # image tokens by resized size: sizes repeat, seen_size is slow
        bar = tqdm(total=len(dataframe), desc="Counting prompt tokens (images undecoded)", unit="row")
        start = 0
        for table in dataframe.with_format("arrow").select_columns(columns).iter(batch_size=batch_size):
            prompts = table.column(self.prompt_key).to_pylist()
            images = table.column(self.image_key).to_pylist() if self.image_key in columns else [None] * len(prompts)
            texts, image_tokens = [], []
            for offset, (prompt, row_images) in enumerate(zip(prompts, images)):
                row = start + offset
                row_images = row_images or []
                # The template reads only each image item's type: stand-ins spare verl's _build_messages an open().
                example = {self.prompt_key: prompt, self.image_key: [f"image {k}" for k in range(len(row_images))]}
                try:
                    messages = self._build_messages(example, key=self.prompt_key)
                    texts.append(
                        processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **apply_kwargs)
                    )
                except Exception as exc:  # noqa: BLE001 - whatever verl or the template raise, name the row
                    self._bad_row(bad, row, self.prompt_key, exc)
                    texts.append("")
                    image_tokens.append((0, None))
                    continue
                count = 0
                for k, image in enumerate(row_images):
                    try:
                        size = self._fetched(_stored_image_size(image), image if isinstance(image, Mapping) else None)
                        if size not in tokens_at:
                            tokens_at[size] = self._tokens_at(size)
                        count += tokens_at[size]
                    except Exception as exc:  # noqa: BLE001
                        self._bad_row(bad, row, f"{self.image_key}[{k}]", exc)
                image_tokens.append((count, len(row_images)))
            ids = tokenizer(texts, return_attention_mask=False)["input_ids"]
            for offset, (row_ids, (count, n_images)) in enumerate(zip(ids, image_tokens)):
                if bad is not None and start + offset in bad:
                    lengths[start + offset] = 0
                    continue
                placeholders = row_ids.count(image_token_id)
                if placeholders != n_images:
                    message = f"the prompt renders {placeholders} {processor.image_token} for {n_images} image(s)"
                    self._bad_row(bad, start + offset, self.prompt_key, ValueError(message))
                lengths[start + offset] = len(row_ids) - placeholders + count
            start += len(prompts)
            bar.update(len(prompts))
        bar.close()
        return lengths

    def _probe_mismatch(self) -> str | None:
        """Whether :meth:`_tokens_at` disagrees with the processor itself on blank probe images (one above the
        budget, one inside, one below), so a transformers release that reads its kwargs differently falls back to
        verl's count rather than miscounting. ``None`` when they agree, else what differed."""
        from PIL import Image
        from verl.utils.tokenizer import build_multimodal_processor_inputs

        image_token_id = self.processor.tokenizer.convert_tokens_to_ids(self.processor.image_token)
        for original in ((2400, 1800), (500, 375), (60, 40)):
            size = self._fetched(original, None)
            try:
                inputs = build_multimodal_processor_inputs(
                    self.processor, text=[self.processor.image_token], images=[Image.new("RGB", size)],
                    mm_processor_kwargs=self.mm_processor_kwargs,
                )
            except Exception as exc:  # verl's filter would drop every image row, one traceback each
                raise ValueError(
                    f"the processor refuses data.mm_processor_kwargs={self.mm_processor_kwargs}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            theirs = int((inputs["input_ids"][0] == image_token_id).sum())
            if theirs != self._tokens_at(size):
                return f"{theirs} tokens for a {size[0]}x{size[1]} image, counted {self._tokens_at(size)}"
        return None

    def _fetched(self, size: tuple[int, int], options: Mapping[str, Any] | None) -> tuple[int, int]:
        """The size the agent loop resizes an image of ``size`` to (``data.min_pixels``/``max_pixels``)."""
        if not hasattr(self, "_budget"):  # read once: an OmegaConf lookup costs as much as the arithmetic
            self._budget = (_config_get(self.config, "min_pixels"), _config_get(self.config, "max_pixels"))
        min_pixels, max_pixels = self._budget
        return fetched_size(
            size, options, patch_size=self.image_patch_size, min_pixels=min_pixels, max_pixels=max_pixels
        )

    def _tokens_at(self, size: tuple[int, int]) -> int:
        """Image tokens the processor makes of an image of ``size`` (after the agent loop's resize)."""
        # transformers 5's Qwen-VL processors take their budget from `size` and ignore `min_pixels`/`max_pixels`
        # kwargs (the probe above checks this against the installed processor).
        budget = dict((self.mm_processor_kwargs or {}).get("size") or {})
        overrides = {"min_pixels": budget.get("shortest_edge"), "max_pixels": budget.get("longest_edge")}
        width, height = seen_size(self.processor, size, {k: v for k, v in overrides.items() if v is not None})
        image_processor = self.processor.image_processor
        factor = int(image_processor.patch_size) * int(image_processor.merge_size)
        return (width // factor) * (height // factor)

    def _row_error(self, row: int, field: str, exc: BaseException) -> ValueError:
        return ValueError(f"{self._row_location(row)}: field '{field}': {type(exc).__name__}: {exc}")

    def _row_location(self, row: int) -> str:
        """``<file> row <n>`` (0-based within that file) of a row of the concatenated dataframe."""
        files = [str(f) for f in self.data_files]
        if self.max_samples > 0:
            return f"row {row} of the {self.max_samples} rows selected (data.max_samples) from {', '.join(files)}"
        import datasets

        for path in files:
            kind = "parquet" if path.endswith(".parquet") else "json"
            count = len(datasets.load_dataset(kind, data_files=path)["train"])  # served from datasets' cache
            if row < count:
                return f"{path} row {row}"
            row -= count
        return f"row {row} of {', '.join(files)}"

    def _lengths_cache_path(self, dataframe) -> str | None:
        """Where this dataframe's prompt lengths are cached: beside its ``datasets`` cache files, under a key of
        everything that changes a count (the data's fingerprint, template, tools, tokenizer, image budgets), so a
        second build reads them instead of counting again. ``None`` for an in-memory dataframe."""
        files = [f["filename"] for f in dataframe.cache_files]
        if not files:
            return None
        return os.path.join(os.path.dirname(files[0]), f"visionr3-prompt-lengths-{self._lengths_key(dataframe)}.npy")

    def _lengths_key(self, dataframe) -> str:
        from omegaconf import OmegaConf

        def plain(value: Any) -> Any:
            return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value

        processor = self.processor
        backend = getattr(processor.tokenizer, "backend_tokenizer", None)
        vocabulary = backend.to_str() if backend is not None else json.dumps(processor.tokenizer.get_vocab(), sort_keys=True)
        parts = {
            "version": PROMPT_LENGTHS_VERSION,
            "data": dataframe._fingerprint,  # datasets' own identity of these rows (files, selection, casts)
            "keys": [self.prompt_key, self.image_key],
            "image_patch_size": self.image_patch_size,
            "budget": [_config_get(self.config, "min_pixels"), _config_get(self.config, "max_pixels")],
            "mm_processor_kwargs": plain(self.mm_processor_kwargs),
            "apply_chat_template_kwargs": plain(self.apply_chat_template_kwargs),
            "tools": self.tool_schemas,
            "processor": [type(processor).__qualname__, processor.chat_template, processor.image_token],
            "image_processor": processor.image_processor.to_json_string(),
            "tokenizer": hashlib.sha256(vocabulary.encode()).hexdigest(),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _stored_image_size(image: Any) -> tuple[int, int]:
    """Original ``(width, height)`` of one entry of a row's images (an image dict, a path or a PIL image). Raises for
    an image over PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``): PIL itself only warns below twice
    the limit, and the agent loop would decode it whole."""
    from PIL import Image

    if not isinstance(image, (Mapping, str, os.PathLike)) and not hasattr(image, "size"):
        raise TypeError(f"image must be dict, PIL.Image, or path-like, unsupported image type: {type(image)}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        width, height = image_size(image)
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise ValueError(f"{width}x{height} is {width * height} pixels, over PIL's decompression-bomb limit "
                         f"(PIL.Image.MAX_IMAGE_PIXELS = {limit}): downscale it before training")
    return width, height


def undecodable_image(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """``"images[k]: <error>"`` for the first image of a row's ``raw_prompt`` whose pixels do not decode, else None.
    Decodes each image in place (PIL keeps the pixels), which verl does next anyway when it serialises the batch."""
    from PIL import Image

    from visionr3.processing import open_image

    k = 0
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        for part in content if isinstance(content, list) else ():
            if not isinstance(part, Mapping) or part.get("type") != "image":
                continue
            try:
                image = part.get("image")
                if isinstance(image, Image.Image):
                    image.load()
                else:
                    open_image(part).load()
            except Exception as exc:  # noqa: BLE001 - any decoder error is this row's fault
                return f"images[{k}]: {type(exc).__name__}: {exc}"
            k += 1
    return None


def _ground_truth_problem(reward_model: Any) -> str | None:
    """Why a row's ``reward_model`` gives no usable ground truth, or None when it does."""
    if not isinstance(reward_model, Mapping):
        return f"reward_model is {type(reward_model).__name__}, not a dict with a ground_truth"
    if "ground_truth" not in reward_model or reward_model["ground_truth"] is None:
        return "missing"
    value = reward_model["ground_truth"]
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            return f"{type(item).__name__} {item!r:.60}, not a string, a number or a list of them"
    if not any(str(item).strip() for item in items):
        return "empty"
    return None


def _read_lengths(path: str | None, rows: int) -> np.ndarray | None:
    """Cached lengths, if ``path`` holds an array of one length per row."""
    if path is None:
        return None
    try:
        lengths = np.load(path)
    except (OSError, ValueError):
        return None
    if lengths.shape != (rows,):
        return None
    print(f"prompt lengths read from the cache: {path}")
    return lengths


def _write_lengths(path: str | None, lengths: np.ndarray) -> None:
    """Write atomically (a temporary file renamed), so a reader never sees half an array."""
    if path is None:
        return
    try:
        fd, partial = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".visionr3-", suffix=".npy")
        with os.fdopen(fd, "wb") as out:
            np.save(out, lengths)
        os.replace(partial, path)
    except OSError as exc:  # a read-only cache costs the next build a recount, nothing else
        print(f"prompt lengths not cached ({exc})")


def lazy_images(dataframe, column: str):
    """``dataframe`` with the ``datasets.Image`` features of ``column`` set to ``decode=False``: rows then hold the
    stored ``{"bytes", "path"}`` dicts, which verl's ``_build_messages`` opens lazily, instead of decoded pixels.

    Public parquet sets saved by ``datasets`` (DeepEyes', Vision-SR1's) declare their images as ``Image`` features,
    and reading one row of them decodes every image of the row (a thousand rows at a time in ``filter``). This is
    ``Dataset.cast_column``'s own path for a top-level ``Image`` column (a new schema over the same memory-mapped
    data); for a list of images ``cast_column`` rewrites the whole file instead, hence the few lines here.
    """
    from datasets.arrow_dataset import update_metadata_with_features
    from datasets.features import Image
    from datasets.fingerprint import Hasher

    feature = dataframe.features.get(column)
    lazy = copy.deepcopy(feature)
    stack, found = [lazy], False
    while stack:  # Image inside List/LargeList/Sequence/dicts
        node = stack.pop()
        if isinstance(node, Image):
            found |= node.decode
            node.decode = False
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
        elif hasattr(node, "feature"):
            stack.append(node.feature)
    if not found:
        return dataframe
    dataset = copy.deepcopy(dataframe)
    dataset._info.features[column] = lazy
    dataset._fingerprint = Hasher.hash((dataframe._fingerprint, "visionr3.lazy_images", column))
    dataset._data = dataset._data.cast(dataset.features.arrow_schema)
    dataset._data = update_metadata_with_features(dataset._data, dataset.features)
    return dataset


def build_gen_batch(
    rows: Sequence[Mapping[str, Any]],
    *,
    global_steps: int = 1,
    validate: bool = False,
    meta_info: Mapping[str, Any] | None = None,
):
    """The ``DataProto`` the trainer passes to ``generate_sequences`` for ``rows`` (already repeated n times).

    Rows are collated with verl's ``collate_fn`` (tensors stacked, everything else an object array filled
    element-wise, so a list-of-messages ``raw_prompt`` stays one object per row); a missing ``dummy_tensor`` or
    ``uid`` is added. All rows must have the same keys (verl's collation would silently misalign them otherwise).
    ``meta_info`` gets ``global_steps`` and ``validate`` and then the given entries.
    """
    from verl.protocol import DataProto
    from verl.utils.dataset.rl_dataset import collate_fn

    if not rows:
        raise ValueError("rows is empty")
    rows = [dict(row) for row in rows]
    for i, row in enumerate(rows):
        if not isinstance(row.get("raw_prompt"), list):
            raise ValueError(f"row {i} has no raw_prompt list of chat messages (see dataset_row)")
        row.setdefault("dummy_tensor", torch.tensor([0], dtype=torch.uint8))
        row.setdefault("uid", str(uuid.uuid4()))
    keys = set(rows[0])
    for i, row in enumerate(rows[1:], start=1):
        if set(row) != keys:
            raise ValueError(f"row {i} has keys {sorted(set(row) ^ keys)} that row 0 has not (or vice versa)")
    batch = DataProto.from_single_dict(collate_fn(rows))
    batch.meta_info = {"global_steps": global_steps, "validate": validate, **(meta_info or {})}
    return batch


def validation_meta_info(tokenizer: Any, do_sample: bool) -> dict[str, Any]:
    """The ``meta_info`` entries verl's trainer adds for a validation batch (beside ``global_steps``/``validate``);
    with them the worker samples with the rollout's ``val_kwargs``."""
    return {
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "recompute_log_prob": False,
        "do_sample": bool(do_sample),
    }
