"""Merge a verl FSDP checkpoint into a Hugging Face directory with our chat template, and verify it.

    visionr3 merge CHECKPOINT OUTPUT [--chat-template auto|none|PATH] [--no-verify] [--force]

    visionr3 merge checkpoints/run1 merged/run1                    # the latest step (latest_checkpointed_iteration.txt)
    visionr3 merge checkpoints/run1/global_step_200 merged/step200 # that step's actor/
    visionr3 merge checkpoints/run1/global_step_200/actor merged/step200

What it does, in order:

1. **Find the actor checkpoint.** ``CHECKPOINT`` may be the trainer's ``default_local_dir`` (the step named by verl's
   ``latest_checkpointed_iteration.txt``), a ``global_step_N`` folder, or its ``actor/`` folder. Before anything is
   loaded it checks what verl's merger needs: ``fsdp_config.json`` with ``world_size`` W, every
   ``model_world_size_W_rank_r.pt`` for r < W, and ``huggingface/`` (config, tokenizer, processor). A problem is one
   line naming the path (:class:`MergeError`; exit code 2 on the command line).
2. **Merge with verl.** verl's own ``FSDPModelMerger`` (``python -m verl.model_merger merge --backend fsdp``, used as a
   library) reassembles the DTensor shards and writes safetensors, config, generation config, processor and tokenizer.
   verl always writes **bfloat16**, so there is no ``--dtype``.
3. **Chat template.** Qwen2.5-VL's stock template cannot render tools, so for ``qwen2_5_vl`` checkpoints the
   tool-capable ``configs/chat_templates/qwen2_5_vl_tool.jinja`` (the one the trainer renders into
   ``actor_rollout_ref.model.custom_chat_template``) becomes the processor's and tokenizer's chat template
   (``chat_template.jinja``): vLLM or transformers serving the merged model then renders tools exactly as in training.
   Qwen3-VL keeps the checkpoint's template. ``--chat-template PATH`` writes any template, ``none`` keeps the
   checkpoint's.
4. **Verify.** Reload the directory with ``AutoModelForImageTextToText`` and compare every tensor with the checkpoint's
   shards, reassembled here independently of verl (DTensor placements over the device mesh), in the merged dtype; the
   diff must be exactly 0. Reload ``AutoProcessor`` and render a conversation with the crop tool's schema: for the
   tool template the text must contain the tool and the ``<tool_call>`` instructions.

Everything is written to a hidden sibling of ``OUTPUT`` and renamed into place only once verified, so a failed merge
leaves no half-written model and ``--force`` replaces an existing ``OUTPUT`` only with a verified one.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TRACKER_FILE = "latest_checkpointed_iteration.txt"  # written by verl's trainer next to the global_step_N folders
FSDP_CONFIG = "fsdp_config.json"
HF_SUBDIR = "huggingface"
SHARD_NAME = "model_world_size_{world_size}_rank_{rank}.pt"
# model_type (config.json) -> the template under configs/chat_templates/ that `--chat-template auto` writes.
AUTO_TEMPLATES = {"qwen2_5_vl": "qwen2_5_vl_tool.jinja"}


class MergeError(Exception):
    """A problem with the input or the result, as one line that names the path; the CLI prints it and exits 2."""


@dataclass(frozen=True)
class ChatTemplateChoice:
    """What to do with the merged directory's chat template: write ``text`` (labelled ``label``), or keep the
    checkpoint's (``text is None``). ``require_tools``: the verification fails unless it renders a tools list (our
    tool templates must; a user's own or a checkpoint's template is only reported)."""

    text: str | None
    label: str
    require_tools: bool = False


@dataclass(frozen=True)
class MergeReport:
    """What :func:`merge_checkpoint` did. ``max_abs_diff`` is measured in the merged dtype (0.0 when verified)."""

    actor_dir: Path
    target: Path
    resolved_from: str  # how actor_dir was found from the user's path
    world_size: int
    model_type: str
    architecture: str
    dtype: str
    chat_template: str  # label of the template in the merged directory
    template_changed: bool  # the merged template differs from the checkpoint's
    verified: bool
    tensors_compared: int
    max_abs_diff: float
    renders_tools: bool | None  # the merged processor renders a tools list (None: not verified)
    seconds: float

    def summary(self) -> str:
        """The one line a user reads at the end."""
        template = f"{self.chat_template}{' (replaced the checkpoint' + chr(39) + 's)' if self.template_changed else ''}"
        if self.verified:
            check = (
                f"verified {self.tensors_compared} tensors, max abs diff {self.max_abs_diff:g} ({self.dtype}), "
                f"tools {'rendered' if self.renders_tools else 'NOT rendered'} by the chat template"
            )
        else:
            check = "not verified (--no-verify)"
        return (
            f"merged {self.actor_dir} (W={self.world_size}, {self.architecture}) -> {self.target}: {check}; "
            f"chat template {template}; {self.seconds:.1f} s"
        )


# --------------------------------------------------------------------------------------------------------------------
# 1. Finding and checking the checkpoint (filesystem only, no torch)


def resolve_actor_dir(path: str | os.PathLike) -> tuple[Path, str]:
    """The ``global_step_N/actor`` folder that ``path`` names, and how it was found.

    Accepts the trainer's checkpoint root (verl's ``latest_checkpointed_iteration.txt`` names the step), a
    ``global_step_N`` folder, or the ``actor`` folder itself (recognised by its ``fsdp_config.json``). verl's SFT
    trainer (``visionr3 sft``) saves the model straight into ``global_step_N/``, with no ``actor/``: a step folder
    holding ``fsdp_config.json`` is taken as is.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise MergeError(f"checkpoint not found: {path} does not exist")
    if not path.is_dir():
        raise MergeError(f"checkpoint must be a directory: {path} is a file")
    if (path / FSDP_CONFIG).is_file() or path.name == "actor":
        return path, "given"
    if re.fullmatch(r"global_step_\d+", path.name):
        actor = path / "actor"
        if not actor.is_dir():
            raise MergeError(f"no actor/ checkpoint in {path} (expected {actor})")
        return actor, f"actor/ of {path.name}"
    tracker = path / TRACKER_FILE
    steps = sorted((p.name for p in path.glob("global_step_*") if p.is_dir()), key=_step_number)
    if not tracker.is_file():
        if steps:
            raise MergeError(
                f"no {TRACKER_FILE} in {path} to name the latest step; pass one of its step folders: "
                + ", ".join(str(path / s) for s in steps[-3:])
            )
        raise MergeError(
            f"not a verl FSDP checkpoint: {path} has no {FSDP_CONFIG}, no global_step_N/ folders and no {TRACKER_FILE}"
        )
    text = tracker.read_text(encoding="utf-8").strip()
    if not text.isdigit():
        raise MergeError(f"{tracker} should hold a step number, found {text[:40]!r}")
    step_dir = path / f"global_step_{int(text)}"
    if not step_dir.is_dir():
        raise MergeError(f"{tracker} names step {int(text)}, but {step_dir} does not exist")
    actor = step_dir / "actor"
    if not actor.is_dir():
        if (step_dir / FSDP_CONFIG).is_file():  # an SFT checkpoint
            return step_dir, f"latest step {int(text)} ({TRACKER_FILE}), SFT layout"
        raise MergeError(f"no actor/ checkpoint in {step_dir} (expected {actor})")
    return actor, f"latest step {int(text)} ({TRACKER_FILE})"


def _step_number(name: str) -> int:
    return int(name.rsplit("_", 1)[1]) if name.rsplit("_", 1)[1].isdigit() else -1


def check_actor_dir(actor_dir: Path) -> tuple[int, dict]:
    """``(world_size, huggingface/config.json)`` of an actor checkpoint, after checking every file verl's merger
    reads exists. Raises :class:`MergeError` naming the first thing missing (all missing shards at once)."""
    config_path = actor_dir / FSDP_CONFIG
    if not config_path.is_file():
        raise MergeError(f"not a verl FSDP actor checkpoint: {config_path} is missing")
    try:
        world_size = json.loads(config_path.read_text(encoding="utf-8"))["world_size"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise MergeError(f"{config_path} has no readable world_size ({type(error).__name__}: {error})") from None
    if not isinstance(world_size, int) or world_size < 1:
        raise MergeError(f"{config_path}: world_size must be a positive integer, found {world_size!r}")
    missing = [
        SHARD_NAME.format(world_size=world_size, rank=rank)
        for rank in range(world_size)
        if not (actor_dir / SHARD_NAME.format(world_size=world_size, rank=rank)).is_file()
    ]
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        plural = "s" if len(missing) > 1 else ""
        raise MergeError(f"missing model shard{plural} in {actor_dir} (world_size {world_size}): {shown}")
    if (actor_dir / "lora_train_meta.json").is_file():
        raise MergeError(
            f"{actor_dir} is a LoRA checkpoint; visionr3 merge verifies full-weight checkpoints only. Use "
            f"`python -m verl.model_merger merge --backend fsdp --local_dir {actor_dir} --target_dir OUT`, "
            "which writes the adapter to OUT/lora_adapter"
        )
    hf_dir = actor_dir / HF_SUBDIR
    if not hf_dir.is_dir():
        raise MergeError(f"missing {hf_dir}: verl's checkpoint manager writes the model config and processor there")
    hf_config_path = hf_dir / "config.json"
    try:
        hf_config = json.loads(hf_config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise MergeError(f"cannot read {hf_config_path}: {error}") from None
    architectures = hf_config.get("architectures") or []
    if not any(str(a).endswith("ForConditionalGeneration") for a in architectures):
        raise MergeError(
            f"{hf_config_path} names {architectures or 'no architecture'}; visionr3 merge handles vision-language "
            "models (…ForConditionalGeneration). For text models use `python -m verl.model_merger merge --backend fsdp`"
        )
    return world_size, hf_config


def resolve_chat_template(option: str | os.PathLike | None, model_type: str) -> ChatTemplateChoice:
    """``auto`` (default): our tool template for Qwen2.5-VL (see :data:`AUTO_TEMPLATES`), the checkpoint's otherwise;
    ``none``: the checkpoint's; anything else: a path to a Jinja template file."""
    option = "auto" if option is None else str(option)
    if option == "none":
        return ChatTemplateChoice(None, "the checkpoint's")
    if option == "auto":
        name = AUTO_TEMPLATES.get(model_type)
        if name is None:
            return ChatTemplateChoice(None, "the checkpoint's")
        from visionr3.config import config_path

        return ChatTemplateChoice(config_path("chat_templates", name).read_text(encoding="utf-8"), name, require_tools=True)
    path = Path(option).expanduser()
    if not path.is_file():
        raise MergeError(f"--chat-template: {path} is not a file (give a .jinja path, 'auto' or 'none')")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise MergeError(f"--chat-template: {path} is empty")
    return ChatTemplateChoice(text, str(path))


def check_target(target: Path, actor_dir: Path, overwrite: bool) -> None:
    """Refuse to write over anything we would lose: a non-empty ``target`` without ``overwrite``, a target that holds
    the checkpoint itself, or (even with ``overwrite``) a non-empty folder that is not a Hugging Face model, which a
    mistyped ``--force`` would otherwise delete."""
    target_abs, actor_abs = target.resolve(), actor_dir.resolve()
    if actor_abs == target_abs or target_abs in actor_abs.parents:
        raise MergeError(f"output {target} contains the checkpoint {actor_dir}; choose another output directory")
    if target.exists() and not target.is_dir():
        raise MergeError(f"output {target} exists and is a file")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise MergeError(f"output {target} is not empty; pass --force to replace it with the merged model")
        if not (target / "config.json").is_file():
            raise MergeError(
                f"output {target} is not empty and holds no config.json; --force replaces only a model directory"
            )


# --------------------------------------------------------------------------------------------------------------------
# 2. Independent reassembly of the shards (for the verification)


def reassemble_shards(shards: list[dict]) -> dict:
    """Full tensors from the per-rank state dicts of an FSDP checkpoint, ``shards[r]`` being rank r's.

    A DTensor entry is put back together from its placements over its device mesh: ``Replicate`` dims take mesh
    coordinate 0, the one ``Shard(d)`` dim is concatenated along tensor dim ``d`` in mesh order (FSDP2 pads nothing in
    its sharded state dict, so uneven chunks concatenate as they are). The result must have the DTensor's global
    shape. A plain tensor is the same on every rank (buffers, unsharded parameters) and is taken from rank 0.
    """
    import torch
    from torch.distributed.tensor import DTensor

    full = {}
    for name, first in shards[0].items():
        if not isinstance(first, DTensor):
            if not isinstance(first, torch.Tensor):
                raise MergeError(f"cannot verify checkpoint entry {name!r} of type {type(first).__name__}")
            full[name] = first
            continue
        mesh = first.device_mesh.mesh  # ranks laid out on the mesh, e.g. tensor([0, 1]) or [[0, 1], [2, 3]]
        shard_dims = [(axis, p.dim) for axis, p in enumerate(first.placements) if p.is_shard()]
        if any(p.is_partial() for p in first.placements) or len(shard_dims) > 1:
            raise MergeError(f"cannot verify {name!r}: placements {first.placements} (one Shard dim is supported)")
        if not shard_dims:
            full[name] = first.to_local()
        else:
            axis, dim = shard_dims[0]
            index = [0] * mesh.dim()
            pieces = []
            for coordinate in range(mesh.shape[axis]):
                index[axis] = coordinate
                pieces.append(shards[int(mesh[tuple(index)])][name].to_local())
            full[name] = torch.cat(pieces, dim=dim)
        if tuple(full[name].shape) != tuple(first.shape):
            raise MergeError(
                f"reassembled {name!r} has shape {tuple(full[name].shape)}, the DTensor says {tuple(first.shape)}"
            )
    return full


# --------------------------------------------------------------------------------------------------------------------
# 3. The merge


def merge_checkpoint(
    checkpoint: str | os.PathLike,
    target: str | os.PathLike,
    *,
    verify: bool = True,
    chat_template: str | os.PathLike | None = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> MergeReport:
    """Merge the FSDP checkpoint at ``checkpoint`` into the Hugging Face directory ``target`` (see the module
    docstring); returns what was done. ``progress=False`` keeps verl's and transformers' output (and ours) quiet,
    as the demo wants; it is still shown when something fails."""
    start = time.perf_counter()
    actor_dir, resolved_from = resolve_actor_dir(checkpoint)
    world_size, hf_config = check_actor_dir(actor_dir)
    model_type = str(hf_config.get("model_type", ""))
    template = resolve_chat_template(chat_template, model_type)
    target = Path(target).expanduser().absolute()  # absolute: the staging folder is its sibling, even for "."
    check_target(target, actor_dir, overwrite)

    say = print if progress else (lambda *a, **k: None)
    say(f"checkpoint: {actor_dir} ({resolved_from}), world size {world_size}, {model_type}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        say(f"[1/3] merging {world_size} shard(s) with verl's FSDPModelMerger")
        _run_verl_merger(actor_dir, staging, quiet=not progress)
        checkpoint_template = _saved_template(actor_dir / HF_SUBDIR)
        if template.text is not None:
            say(f"[2/3] chat template: writing {template.label}")
            with _quiet(not progress):
                _write_chat_template(staging, template.text)
        else:
            say("[2/3] chat template: keeping the checkpoint's")
        changed = _saved_template(staging) != checkpoint_template
        merged_config = json.loads((staging / "config.json").read_text(encoding="utf-8"))
        dtype = str(merged_config.get("dtype") or merged_config.get("torch_dtype") or "?")
        result = {"verified": False, "tensors": 0, "max_abs_diff": float("nan"), "dtype": dtype, "tools": None}
        if verify:
            say("[3/3] verifying: reload, compare every tensor with the shards, render a tool conversation")
            with _quiet(not progress):
                result = _verify(actor_dir, world_size, staging, template)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report = MergeReport(
        actor_dir=actor_dir, target=target, resolved_from=resolved_from, world_size=world_size, model_type=model_type,
        architecture=(hf_config.get("architectures") or ["?"])[0], dtype=result["dtype"],
        chat_template=template.label, template_changed=changed, verified=result["verified"],
        tensors_compared=result["tensors"], max_abs_diff=result["max_abs_diff"], renders_tools=result["tools"],
        seconds=time.perf_counter() - start,
    )
    say(report.summary())
    return report


@contextlib.contextmanager
def _quiet(enabled: bool):
    """Silence stdout/stderr (verl's prints, tqdm bars, transformers' loading bars) and the DeviceMesh pickling
    warning that every ``torch.load`` of a DTensor shard logs outside a process group; on an exception the captured
    output is attached to it, so nothing is lost when it matters."""
    import logging

    from transformers.utils import logging as transformers_logging

    mesh_logger = logging.getLogger("torch.distributed.device_mesh")
    level, verbosity = mesh_logger.level, transformers_logging.get_verbosity()
    mesh_logger.setLevel(logging.ERROR)
    if enabled:  # its handler holds the original stderr, which redirect_stderr cannot reach
        transformers_logging.set_verbosity_error()
    buffer = io.StringIO()
    try:
        if enabled:
            with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
                yield buffer
        else:
            yield buffer
    except MergeError as error:
        tail = buffer.getvalue().strip().splitlines()[-15:]
        raise MergeError(str(error) + ("\n" + "\n".join(tail) if tail else "")) from error.__cause__
    finally:
        mesh_logger.setLevel(level)
        transformers_logging.set_verbosity(verbosity)


def _run_verl_merger(actor_dir: Path, out: Path, *, quiet: bool) -> None:
    """verl's merger as a library: the same config ``python -m verl.model_merger merge --backend fsdp`` builds."""
    from visionr3.processing import prepare_runtime

    prepare_runtime()  # verl saves the processor through hf_processor, which needs it on CPU-only hosts
    from verl.model_merger.base_model_merger import ModelMergerConfig
    from verl.model_merger.fsdp_model_merger import FSDPModelMerger

    config = ModelMergerConfig(
        operation="merge", backend="fsdp", local_dir=str(actor_dir), target_dir=str(out),
        hf_model_config_path=str(actor_dir / HF_SUBDIR),
    )
    out.mkdir(parents=True)
    with _quiet(quiet):
        try:
            merger = FSDPModelMerger(config)
            merger.merge_and_save()
            merger.cleanup()
        except Exception as error:  # verl raises ValueError/RuntimeError/AssertionError with its own wording
            raise MergeError(f"verl's model_merger failed on {actor_dir}: {type(error).__name__}: {error}") from error
    if not (out / "preprocessor_config.json").exists() and not (out / "processor_config.json").exists():
        raise MergeError(
            f"verl saved no processor for {actor_dir} (verl.utils.hf_processor returned None for {actor_dir / HF_SUBDIR}); "
            "a VL model without its processor would be served as text-only"
        )


def _saved_template(directory: Path) -> str | None:
    """The chat template a transformers-5 directory carries in ``chat_template.jinja`` (None if it has none)."""
    path = directory / "chat_template.jinja"
    return path.read_text(encoding="utf-8") if path.is_file() else None


def _write_chat_template(directory: Path, text: str) -> None:
    """Make ``text`` the chat template of both the processor and its tokenizer, saved the way transformers saves
    them (``chat_template.jinja``), so ``AutoProcessor``, ``AutoTokenizer`` and vLLM all read the same one."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(directory))
    except Exception as error:
        raise MergeError(f"cannot load the processor verl wrote to {directory}: {type(error).__name__}: {error}") from error
    processor.chat_template = text
    processor.tokenizer.chat_template = text
    processor.save_pretrained(str(directory))


def _verify(actor_dir: Path, world_size: int, merged_dir: Path, template: ChatTemplateChoice) -> dict:
    """Reload ``merged_dir`` with transformers and compare it with the checkpoint; raises :class:`MergeError`."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        model, info = AutoModelForImageTextToText.from_pretrained(str(merged_dir), dtype="auto", output_loading_info=True)
    except Exception as error:
        raise MergeError(
            f"{merged_dir} does not load with AutoModelForImageTextToText: {type(error).__name__}: {error}"
        ) from error
    problems = {k: sorted(v)[:3] for k, v in info.items() if k != "error_msgs" and v}
    if problems:
        raise MergeError(f"{merged_dir} does not load cleanly with AutoModelForImageTextToText: {problems}")
    merged = model.state_dict()
    shards = [  # mmap: a 7B model's shards are not read into memory twice
        torch.load(
            actor_dir / SHARD_NAME.format(world_size=world_size, rank=r), map_location="cpu", weights_only=False, mmap=True
        )
        for r in range(world_size)
    ]
    full = reassemble_shards(shards)
    missing, extra = sorted(set(full) - set(merged)), sorted(set(merged) - set(full))
    if missing or extra:
        raise MergeError(
            f"{merged_dir} and {actor_dir} hold different tensors: missing {missing[:3]} ({len(missing)}), "
            f"extra {extra[:3]} ({len(extra)})"
        )
    worst_name, worst = "", 0.0
    for name in tqdm(sorted(full), desc="comparing tensors", unit="tensor", leave=False):
        ours, theirs = merged[name], full[name]
        if ours.shape != theirs.shape:
            raise MergeError(f"{name}: merged shape {tuple(ours.shape)} != checkpoint {tuple(theirs.shape)}")
        diff = (ours.float() - theirs.to(ours.dtype).float()).abs().max().item() if ours.numel() else 0.0
        if diff > worst or not worst_name:
            worst_name, worst = name, diff
    if worst != 0.0:
        raise MergeError(f"merged {worst_name} differs from the checkpoint by {worst:g} in {merged[worst_name].dtype}")
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in merged.values() if t.is_floating_point()})
    compared = len(full)
    del model, merged, full, shards

    try:  # the processor's tokenizer is loaded by AutoTokenizer, as vLLM loads it for text
        processor = AutoProcessor.from_pretrained(str(merged_dir))
    except Exception as error:
        raise MergeError(f"{merged_dir}: the processor does not reload: {type(error).__name__}: {error}") from error
    if not hasattr(processor, "image_processor"):
        raise MergeError(f"{merged_dir}: AutoProcessor loaded {type(processor).__name__}, not a multimodal processor")
    carried = {processor.chat_template, processor.tokenizer.chat_template}
    if template.text is not None and carried != {template.text}:
        raise MergeError(f"{merged_dir}: the reloaded processor/tokenizer do not carry {template.label}")
    try:
        renders_tools = _renders_tools(processor)
    except Exception as error:  # a user's template can fail to render (Jinja errors, raise_exception(...))
        raise MergeError(
            f"{merged_dir}: {template.label} fails to render a tool conversation: {type(error).__name__}: {error}"
        ) from error
    if template.require_tools and not renders_tools:
        raise MergeError(f"{merged_dir}: {template.label} did not render the tool list and <tool_call> instructions")
    return {"verified": True, "tensors": compared, "max_abs_diff": worst, "dtype": ",".join(dtypes), "tools": renders_tools}


def _renders_tools(processor) -> bool:
    """Whether the chat template renders a tools list: an image+text turn with the crop tool's schema from
    ``configs/tools/crop_zoom.yaml`` must come out with the tool's name and the hermes ``<tool_call>`` instructions."""
    from omegaconf import OmegaConf

    from visionr3.config import config_path

    tools = OmegaConf.to_container(OmegaConf.load(config_path("tools", "crop_zoom.yaml")), resolve=True)["tools"]
    schema = tools[0]["tool_schema"]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the square?"}]}]
    text = processor.apply_chat_template(messages, tools=[schema], tokenize=False, add_generation_prompt=True)
    return schema["function"]["name"] in text and "<tool_call>" in text


# --------------------------------------------------------------------------------------------------------------------
# The command line (visionr3/cli.py builds the parser from these two functions)


def configure(parser: argparse.ArgumentParser) -> None:
    """``visionr3 merge`` arguments; imports nothing heavy."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  visionr3 merge checkpoints/run1 merged/run1                      # latest step\n"
        "  visionr3 merge checkpoints/run1/global_step_200/actor merged/s200\n"
        "  visionr3 merge CKPT OUT --chat-template none                    # keep the checkpoint's template"
    )
    parser.add_argument(
        "checkpoint",
        help="the trainer's checkpoint folder (trainer.default_local_dir; the step named by its "
        "latest_checkpointed_iteration.txt), a global_step_N folder, or a global_step_N/actor folder",
    )
    parser.add_argument("output", help="the Hugging Face directory to write (must be empty or absent unless --force)")
    parser.add_argument(
        "--chat-template",
        default="auto",
        metavar="auto|none|PATH",
        help="auto (default): the tool-capable configs/chat_templates/qwen2_5_vl_tool.jinja for Qwen2.5-VL, the "
        "checkpoint's own template otherwise; none: keep the checkpoint's; PATH: write this Jinja template",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the reload-and-compare check")
    parser.add_argument(
        "--force", action="store_true", help="replace an existing model in OUTPUT (only once the new one is verified)"
    )


def run(args: argparse.Namespace) -> int:
    """Exit codes: 0 merged (and verified), 2 a clear problem with the input or the result (one line, no traceback)."""
    try:
        merge_checkpoint(
            args.checkpoint, args.output, verify=not args.no_verify, chat_template=args.chat_template, overwrite=args.force
        )
    except MergeError as error:
        print(f"visionr3 merge: error: {error}", file=sys.stderr)
        return 2
    return 0
