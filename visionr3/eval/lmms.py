"""lmms-eval's ``--model visionr3``: lmms-eval's tasks answered by a recipe's agent loop, tools and prompt.

    python -m lmms_eval --model visionr3 \\
        --model_args pretrained=/ckpt/merged,recipe=zoom,backend=vllm,records=out/vstar.jsonl \\
        --tasks vstar_bench,hrbench4k,mme_realworld_lite,scienceqa_img --batch_size 32 --output_path out/

Why through lmms-eval: the papers report ScienceQA, HR-Bench, MME-RealWorld, V* with lmms-eval's (or VLMEvalKit's)
task code — their doc-to-prompt functions, option formatting and scorers. Those stay lmms-eval's here; only the model
is ours, and it is not a one-shot ``generate``: every request runs :class:`visionr3.eval.runner.Evaluator` — verl's
own ``AgentLoopWorker`` with the recipe's agent loop, tool YAML and pixel budgets, the same code training rolls out
with — and lmms-eval scores the text this class returns. No lmms-eval file is replaced: lmms-eval (>= 0.7) loads
plug-in models from the ``lmms_eval.models`` entry-point group, where ``pyproject.toml`` registers :func:`manifest`.

**A request becomes an evaluation row.** The task's context (its question, options and post-prompt, as the task
wrote them) is the question text; the recipe's prompt style (``visionr3.data.prompts.STYLES``, the one training used)
wraps it and puts one ``<image>`` per visual in front, unless the context already holds exactly as many ``<image>``
markers as there are visuals (then they stay where the task put them; a different count is dropped). The images are
the task's ``doc_to_visual(doc)`` at full resolution; the loop's own budgets resize them. Options are never
re-shuffled: the option order is the task's. The gold answer (the task's ``doc_to_target``) goes into the row only so
the records can show the recipe's own verdict; lmms-eval's metric is computed by lmms-eval, from the returned text.

**What is returned** (``return=``): ``answer`` (default) — the final answer extracted by the recipe's reward formula
(:meth:`visionr3.reward.formulas.Formula.prediction`: the ``<answer>`` content for the zoom recipe, the last
``\\boxed{}`` for Vision-SR1, ...; ``""`` when the model never committed to one, which the task scores as wrong), the
string the papers' own evaluation scripts graded; ``response`` — every assistant turn, joined by newlines (the model's
own text without tool outputs), for tasks whose scorer parses free text or calls a judge.

**Generation kwargs.** A trajectory is several turns with tool outputs between them, so a task's one-shot settings do
not all carry over:

* ``temperature``/``top_p``/``top_k``/``do_sample``: applied to every turn (``temperature > 0`` samples unless
  ``do_sample`` is false), unless fixed by the model_args of the same name, which win;
* ``max_new_tokens`` is **ignored**: tasks ask for 16 tokens (a bare letter); the loop's budget is
  ``max_response_tokens`` (default 2048) over all turns together, as in training;
* ``until`` is **ignored**: turns end at the model's end-of-turn token and the loop parses tool calls out of them;
  a stop string such as ``"\\n\\n"`` would cut reasoning and tool calls;
* ``num_beams`` and anything else is ignored. Each task's ignored kwargs are logged once.

**model_args** (``key=value``, comma-separated; lmms-eval parses numbers and true/false):
``pretrained`` (a local Hugging Face checkpoint directory; merge FSDP checkpoints with ``visionr3 merge``),
``recipe`` (zoom | vlm_r3 | visionthink | vision_sr1), ``config_name`` (``config``, or ``cpu`` for the CPU variant),
``backend`` (hf | vllm | openai), ``prompt_style`` (default: the recipe's), ``return`` (answer | response),
``records`` (a ``.jsonl`` path: one :class:`~visionr3.eval.records.SampleRecord` per request, readable by
``visionr3 view``; a rerun with the same path reuses the records it finds), ``save_images`` (with ``records``,
default true), the protocol knobs of :class:`~visionr3.eval.protocol.EvalProtocol` (``temperature``, ``top_p``,
``top_k``, ``seed``, ``max_turns``, ``max_response_tokens``, ``max_prompt_tokens``, ``min_pixels``, ``max_pixels``,
``crop_min_pixels``, ``crop_max_pixels``, ``scoring`` — rules | judge, for the records' verdict only), ``overrides``
(Hydra overrides on the recipe config, separated by ``;``), and for the backends ``base_url``, ``served_model``,
``api_key_env`` (openai; the *name* of the variable holding the key), ``tensor_parallel_size`` and
``gpu_memory_utilization`` (vllm). lmms-eval's ``--batch_size N`` is the number of trajectories in flight together
(``auto`` means 16); ``--device`` is not used (the hf backend takes CUDA when there is one).

**Failures.** A trajectory that fails (the endpoint down after its retries, a prompt too long) is kept in the
records with its ``error`` and answered with ``""``, which the task scores as wrong; the run logs how many failed and
the first error. When *every* request failed the model raises instead: a score made only of failures would read as a
model that is always wrong. lmms-eval 0.7.3 catches any exception during evaluation — ours, a refused resume, its own
— prints the traceback and "Error during evaluation: ...", writes no results file and **exits 0**; scripts should
check for the results file (or run with ``--verbosity DEBUG``, which re-raises and exits non-zero).

Not supported: ``loglikelihood`` (multiple-choice-by-likelihood tasks) and ``generate_until_multi_round`` raise
:class:`NotImplementedError`; video and audio visuals are refused with an error naming the task and doc; one process
only (no ``accelerate launch``: with ``backend=vllm`` use ``tensor_parallel_size``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from lmms_eval.api.instance import Instance
    from lmms_eval.api.model import lmms
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "visionr3.eval.lmms is lmms-eval's `--model visionr3` and needs lmms-eval: `make venv` installs it "
        "(CPU), `pip install 'visionr3[lmms]'` on a GPU machine"
    ) from exc
from loguru import logger
from PIL import Image

from visionr3.data.rows import IMAGE

MODEL_ID = "visionr3"
RETURN_MODES = ("answer", "response")
DEFAULT_BATCH_SIZE = 16  # trajectories in flight for `--batch_size auto`


def manifest():
    """The ``lmms_eval.models`` entry point: registers :class:`VisionR3` as lmms-eval's ``visionr3`` model."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.VisionR3")


# ---- pure request handling ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """Per-turn sampling of one trajectory (requests with equal :class:`Sampling` share one evaluator)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1


def resolve_sampling(gen_kwargs: Mapping[str, Any], fixed: Mapping[str, Any]) -> Sampling:
    """The sampling a request runs with: the model_args' ``fixed`` values (``None`` = not given) over the task's
    ``gen_kwargs``. ``temperature > 0`` samples unless ``do_sample`` is explicitly false (as lmms-eval's Qwen models
    read it); greedy requests keep ``top_p = 1``, ``top_k = -1``."""

    def pick(name: str, default: Any) -> Any:
        if fixed.get(name) is not None:
            return fixed[name]
        value = gen_kwargs.get(name)
        return default if value is None else value

    temperature = float(pick("temperature", 0.0))
    if fixed.get("temperature") is None and gen_kwargs.get("do_sample") is False:
        temperature = 0.0
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return Sampling()
    return Sampling(temperature=temperature, top_p=float(pick("top_p", 1.0)), top_k=int(pick("top_k", -1)))


_APPLIED_KWARGS = frozenset({"temperature", "top_p", "top_k", "do_sample"})


def ignored_gen_kwargs(gen_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The task's generation kwargs this model does not apply (see the module docstring)."""
    return {k: v for k, v in gen_kwargs.items() if k not in _APPLIED_KWARGS and v is not None}


def question_text(context: str, num_images: int) -> str:
    """The task's context as the question: its ``<image>`` markers stay when there is one per visual (the task placed
    them), otherwise they are removed and the prompt style places the images."""
    if context.count(IMAGE) == num_images:
        return context
    return context.replace(IMAGE, "").strip()


def as_images(visuals: Any, *, where: str) -> list[Image.Image]:
    """``doc_to_visual``'s output as a list of PIL images; anything else (a video path, audio) raises, naming
    ``where``."""
    if visuals is None:
        return []
    if not isinstance(visuals, (list, tuple)):
        visuals = [visuals]
    images = []
    for i, visual in enumerate(visuals):
        if not isinstance(visual, Image.Image):  # a video path, an audio dict, ...
            raise ValueError(
                f"{where}: visual {i} is a {type(visual).__name__} ({str(visual)[:80]!r}); "
                "the visionr3 model takes images only"
            )
        images.append(visual)
    return images


def gold_answer(doc_to_visual: Callable, doc: Mapping[str, Any]) -> str:
    """The task's ``doc_to_target(doc)`` as text, for the records' verdict; ``""`` when the task cannot say.

    lmms-eval hands the model the task's bound ``doc_to_visual`` method, whose ``__self__`` is the task."""
    task = getattr(doc_to_visual, "__self__", None)
    try:
        target = task.doc_to_target(doc) if task is not None else None
    except Exception:  # a target the task computes from fields it removed, a judge-only task: no verdict
        return ""
    if target is None:
        return ""
    if isinstance(target, (list, tuple)):
        return "/".join(str(t) for t in target)
    return str(target)


def response_text(record: Any) -> str:
    """Every assistant turn of a record, joined by newlines: the model's own text, without tool outputs."""
    return "\n".join(turn.text for turn in record.turns if turn.role == "assistant")


def parse_overrides(value: Any) -> list[str]:
    """``overrides=a=1;b=2`` → ``["a=1", "b=2"]`` (commas separate model_args, so ``;`` separates overrides)."""
    if value in (None, ""):
        return []
    return [part.strip() for part in str(value).split(";") if part.strip()]


def parse_batch_size(value: Any) -> int:
    """lmms-eval's ``--batch_size``: ``N``, ``auto`` or ``auto:N`` (both autos mean :data:`DEFAULT_BATCH_SIZE`)."""
    text = str(value).strip()
    if text.startswith("auto"):
        return DEFAULT_BATCH_SIZE
    try:
        size = int(float(text))
    except ValueError:
        raise ValueError(f"--batch_size must be N, auto or auto:N, got {value!r}") from None
    if size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {size}")
    return size


def _int_or_none(value: Any) -> int | None:
    """A model_arg lmms-eval may have parsed as a float (``max_pixels=1e6``) as an int."""
    return None if value is None else int(value)


# ---- the model --------------------------------------------------------------------------------------------------


class VisionR3(lmms):
    """lmms-eval's simple-model API over :class:`visionr3.eval.runner.Evaluator` (see the module docstring)."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        recipe: str = "zoom",
        backend: str = "hf",
        config_name: str = "config",
        prompt_style: str | None = None,
        records: str | None = None,
        save_images: bool = True,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int = 0,
        max_turns: int | None = None,
        max_response_tokens: int = 2048,
        max_prompt_tokens: int = 8192,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        crop_min_pixels: int | None = None,
        crop_max_pixels: int | None = None,
        scoring: str = "rules",
        overrides: str | None = None,
        base_url: str | None = None,
        served_model: str | None = None,
        api_key_env: str | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,  # lmms-eval passes it; `auto` is not adaptive here
        device: str | None = None,  # lmms-eval passes --device; the hf backend picks CUDA when there is one
        **kwargs: Any,
    ) -> None:
        super().__init__()
        from visionr3.data.prompts import STYLES
        from visionr3.eval.protocol import EvalProtocol
        from visionr3.config import RECIPE_SEARCHPATH, RECIPES, compose, recipe_dir
        from visionr3.eval.runner import prompt_style as recipe_prompt_style

        self.return_mode = str(kwargs.pop("return", "answer"))
        if kwargs:
            raise ValueError(
                f"--model_args: unknown argument(s) {sorted(kwargs)} for --model {MODEL_ID}; "
                "see visionr3/eval/lmms.py for the list"
            )
        if self.return_mode not in RETURN_MODES:
            raise ValueError(f"--model_args return={self.return_mode!r}: expected one of {', '.join(RETURN_MODES)}")
        if recipe not in RECIPES:
            raise ValueError(f"--model_args recipe={recipe!r}: expected one of {', '.join(sorted(RECIPES))}")
        style = prompt_style or recipe_prompt_style(compose(recipe_dir(recipe), str(config_name), [RECIPE_SEARCHPATH]))
        if style not in STYLES:
            raise ValueError(f"--model_args prompt_style={style!r}: expected one of {', '.join(sorted(STYLES))}")
        if records is not None and not str(records).endswith(".jsonl"):
            raise ValueError(f"--model_args records={records!r}: expected a .jsonl path")
        self.style = STYLES[style]
        self.pretrained = str(pretrained)
        self.batch_size_per_gpu = parse_batch_size(batch_size)
        self.fixed_sampling = {"temperature": temperature, "top_p": top_p, "top_k": top_k}
        # The protocol minus the sampling, which each request group sets (resolve_sampling). Options are the task's:
        # never re-shuffled.
        self.base_protocol = EvalProtocol(
            recipe=recipe, seed=int(seed), shuffle_options=False, max_turns=_int_or_none(max_turns),
            max_response_tokens=int(max_response_tokens), max_prompt_tokens=int(max_prompt_tokens),
            min_pixels=_int_or_none(min_pixels), max_pixels=_int_or_none(max_pixels),
            crop_min_pixels=_int_or_none(crop_min_pixels), crop_max_pixels=_int_or_none(crop_max_pixels),
            scoring=str(scoring), backend=str(backend), extra={"harness": "lmms-eval"},
        )
        self.settings_kwargs = dict(
            config_name=str(config_name), overrides=parse_overrides(overrides), base_url=base_url,
            served_model=served_model, api_key_env=api_key_env, tensor_parallel_size=int(tensor_parallel_size),
            gpu_memory_utilization=float(gpu_memory_utilization), progress=False,
        )
        self.records_path = Path(records).expanduser().resolve() if records else None
        self.save_images = bool(save_images) and self.records_path is not None
        self._scratch: str | None = None  # the evaluator's config/image folder when no records file is kept
        self._evaluator = None
        self._sampling: Sampling | None = None
        self._writer = None
        self._done: dict[str, Any] = {}  # key -> SampleRecord already in the records file
        self._warned_tasks: set[str] = set()
        self._failed: list[Any] = []  # the failed records of the generate_until call under way

    # lmms-eval reads these
    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "--model visionr3 runs the recipe's multi-turn tool loop and returns its answer; it cannot score "
            "continuations by likelihood. Use generate_until tasks (vstar_bench, hrbench4k, mme_realworld, "
            "scienceqa_img, ...)."
        )

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(
            "--model visionr3 does not run generate_until_multi_round tasks: its turns are the tool loop's, "
            "not a task's scripted rounds. Use generate_until tasks."
        )

    # -- the evaluator, one per sampling setting --

    def _settings(self, sampling: Sampling):
        from dataclasses import replace

        from visionr3.eval.runner import EvalSettings

        if self.records_path is not None:
            out = str(self.records_path)
        else:
            self._scratch = self._scratch or tempfile.mkdtemp(prefix="visionr3-lmms-")
            out = str(Path(self._scratch) / "records.jsonl")
        protocol = replace(
            self.base_protocol, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k
        )
        return EvalSettings(
            model=self.pretrained, out=out, protocol=protocol, batch_size=self.batch_size_per_gpu,
            save_images=self.save_images, **self.settings_kwargs,
        )

    def _evaluator_for(self, sampling: Sampling):
        """The evaluator for ``sampling``: built on first use; another sampling replaces it (one model in memory)."""
        if self._evaluator is not None and self._sampling == sampling:
            return self._evaluator
        self._close_evaluator()
        from visionr3.eval.records import RecordWriter, read_records
        from visionr3.eval.runner import Evaluator

        self._evaluator = Evaluator(self._settings(sampling))
        self._sampling = sampling
        if self.records_path is not None:
            self._done = {r.key: r for r in read_records(self.records_path)}
            self._writer = RecordWriter(self.records_path)
        return self._evaluator

    def _close_evaluator(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._evaluator is not None:
            self._evaluator.close()
            self._evaluator = None
            self._sampling = None

    def clean(self) -> None:
        """lmms-eval calls this once every request has run: free the model (and the scratch folder)."""
        self._close_evaluator()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        super().clean()

    def _reusable(self, key: str, evaluator: Any) -> Any:
        """The record already in the records file for ``key``, if it was made by this model under this protocol;
        one made otherwise is an error (a file holds one run's records, as with ``visionr3 eval``)."""
        record = self._done.get(key)
        if record is None:
            return None
        knobs = evaluator.protocol.mismatch(record.protocol)
        if knobs or record.model != self.pretrained:
            what = knobs or f"model: file {record.model!r} vs now {self.pretrained!r}"
            raise ValueError(f"{self.records_path} already holds {key} from another run ({what}); use a new records=")
        return record

    # -- requests --

    def generate_until(self, requests: list[Instance]) -> list[str]:
        from tqdm import tqdm

        from visionr3.eval.records import sample_key

        # Group the requests by (sampling, sample index) — the sample index counts repeats of one (task, doc) —
        # in order of first appearance. Rows (decoded images) are built one batch at a time: a whole HR-Bench 8K
        # split of decoded images does not fit in memory.
        seen: Counter = Counter()
        groups: dict[tuple[Sampling, int], list[int]] = {}
        for index, request in enumerate(requests):
            _, gen_kwargs, _, doc_id, task, _ = request.args
            gen_kwargs = dict(gen_kwargs or {})
            self._warn_ignored(task, gen_kwargs)
            sample = seen[(task, doc_id)]
            seen[(task, doc_id)] += 1
            groups.setdefault((resolve_sampling(gen_kwargs, self.fixed_sampling), sample), []).append(index)

        results: list[str] = [""] * len(requests)
        self._failed = []
        progress = tqdm(total=len(requests), desc="visionr3 tool loop", disable=self.rank != 0)
        for (sampling, sample), indices in groups.items():
            evaluator = self._evaluator_for(sampling)
            todo = []
            for index in indices:
                _, _, _, doc_id, task, _ = requests[index].args
                record = self._reusable(sample_key(task, str(doc_id), sample), evaluator)
                if record is None:
                    todo.append(index)
                else:
                    self._answer(requests[index], record, results, index)
                    progress.update(1)
            for start in range(0, len(todo), self.batch_size_per_gpu):
                chunk = todo[start : start + self.batch_size_per_gpu]
                records = evaluator.run_rows([self._row(requests[i]) for i in chunk], data_file="", sample=sample)
                for index, record in zip(chunk, records):
                    _, _, _, doc_id, task, split = requests[index].args
                    record.data_file, record.row = f"lmms-eval:{task}/{split}", int(doc_id)
                    if self._writer is not None:
                        self._writer.write(record)
                        self._done[record.key] = record
                    self._answer(requests[index], record, results, index)
                progress.update(len(chunk))
        progress.close()
        self._report_failures(len(requests))
        return results

    def _report_failures(self, total: int) -> None:
        """Say how many of the ``total`` requests failed (their answers are ``""``); raise when all did: a score of
        nothing but failures would read as a model that is always wrong (lmms-eval prints "Error during evaluation")."""
        failed = self._failed
        if not failed:
            return
        first = failed[0]
        where = f"; every trajectory is in {self.records_path}" if self.records_path else ""
        message = f"visionr3: {len(failed)} of {total} requests failed (first, {first.key}: {first.error}){where}"
        if len(failed) == total:
            raise RuntimeError(f"{message}; nothing was evaluated, so no score is reported")
        logger.error(f"{message}; lmms-eval scores them as wrong (empty) answers")

    def _answer(self, request: Instance, record: Any, results: list[str], index: int) -> None:
        if record.error:
            self._failed.append(record)
        results[index] = self._output(record)
        context, gen_kwargs = request.args[:2]
        self.cache_hook.add_partial("generate_until", (context, gen_kwargs), results[index])

    def _row(self, request: Instance) -> dict[str, Any]:
        """One lmms-eval request as a parquet-form evaluation row (see the module docstring)."""
        context, _, doc_to_visual, doc_id, task, split = request.args
        doc = self.task_dict[task][split][doc_id]
        images = as_images(doc_to_visual(doc), where=f"task {task!r} ({split}) doc {doc_id}")
        question = question_text(str(context), len(images))
        return {
            "prompt": self.style.messages(question, len(images)),
            "images": images,
            "data_source": task,
            "reward_model": {"ground_truth": gold_answer(doc_to_visual, doc)},
            "extra_info": {"benchmark": task, "source_id": str(doc_id), "index": int(doc_id), "question": question},
        }

    def _output(self, record: Any) -> str:
        if record.error:
            logger.warning(f"visionr3: {record.key} failed ({record.error}); returning an empty answer")
            return ""
        return record.prediction if self.return_mode == "answer" else response_text(record)

    def _warn_ignored(self, task: str, gen_kwargs: Mapping[str, Any]) -> None:
        if task in self._warned_tasks:
            return
        self._warned_tasks.add(task)
        ignored = ignored_gen_kwargs(gen_kwargs)
        if ignored:
            logger.warning(
                f"visionr3: task {task!r} generation_kwargs {ignored} are not applied: the tool loop's budget is "
                f"max_response_tokens={self.base_protocol.max_response_tokens} over all turns, and turns end at the "
                "model's end-of-turn token"
            )


__all__ = [
    "MODEL_ID",
    "Sampling",
    "VisionR3",
    "as_images",
    "gold_answer",
    "ignored_gen_kwargs",
    "manifest",
    "parse_batch_size",
    "parse_overrides",
    "question_text",
    "resolve_sampling",
    "response_text",
]
