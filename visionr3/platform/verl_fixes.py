"""Four corrections to verl 0.9.1, applied in every verl process by :mod:`visionr3.plugin`, each right after the verl
module it corrects is imported. Each wraps one verl function, recognises exactly the failing case, and leaves every
other call to verl; remove each when verl fixes it.

1. :func:`install` — equal-length multimodal rollouts crash ``update_actor`` (below).
2. :func:`install_text_only_fix` — a Qwen2.5-VL micro-batch without images crashes under transformers 5 (RL on
   DeepEyes' text-only rows, a third of Vision-SR1's cold-start SFT).
3. :func:`install_freeze_vision_tower` — ``actor.freeze_vision_tower`` is declared by verl 0.9.1
   (``verl/workers/config/actor.py``) and read nowhere: the vision tower always trained. VLM-R3 and both papers' SFT
   freeze it (and its merger). The actor's engine is built inside ``ActorRolloutRefWorker.init_model`` from an engine
   config that does not carry the flag, so the worker's ``init_model`` is wrapped to note the actor's setting, and
   the FSDP engine's ``_build_fsdp_module`` to turn ``requires_grad`` off for every ``visual.`` parameter of a
   trainable (not forward-only) module before FSDP wraps it. A parameter without a gradient is skipped by the
   optimizer (no weight decay either) and by gradient clipping, so it stays bit-identical; it is still saved and
   synced to the rollout like any other.
4. :func:`install_poll_interval` — the trainer notices finished rollouts up to 2 s late, every step.

Equal-length rollouts
---------------------

**The bug.** Qwen-VL rows carry 3-D rotary ``position_ids`` of shape ``(4, L_i)`` per sample (text + t/h/w). The
TransferQueue storage packs a field's per-sample tensors with ``torch.nested.as_nested_tensor(..., layout=jagged)``.
When the lengths ``L_i`` differ, that fails (jagged needs the ragged dimension first) and it falls back to a layout verl
handles. When every row has the same length — a batch where every response hits ``max_response_length``, or a
near-deterministic policy — the jagged packing *succeeds*, ragged on the rope dimension (offsets 4, 4, 4, …). verl's
``maybe_fix_3d_position_ids`` then declares the tensor ragged on dimension 2 (``_ragged_idx = 2``, its fix for a
pickling issue), and the first ``unbind`` in ``index_select_tensor_dict`` fails with ``split_with_sizes expects
split_sizes to sum exactly to L … got [4, 4, …]``. A random or fully truncated batch therefore crashes the step.

**The correction.** :func:`fix_3d_position_ids` recognises that packing (offsets of a constant rope width 3 or 4 whose
sum is the values' first dimension) and rebuilds the rows as the ``(4, L)`` nested tensor, ragged on ``L``, that verl
expects, then runs verl's own function. It replaces ``verl.utils.tensordict_utils.maybe_fix_3d_position_ids`` right
after that module is imported, before ``verl.workers.engine_workers`` / ``verl.workers.engine.base`` import it by name.
Any other tensor goes through verl's function untouched. tests/platform/test_verl_fixes.py reproduces the crash with verl's own
functions and shows the fix; NOTE.md has the history.
"""

from __future__ import annotations

from types import ModuleType

ROPE_WIDTHS = (3, 4)  # Qwen2-VL/2.5-VL mrope (t, h, w) and verl's (text, t, h, w) layout


def _packed_on_rope_dim(position_ids) -> bool:
    """True when a nested ``(B, 4, L)`` tensor was packed ragged on the rope dimension (every row the same length)."""
    import torch

    if not (isinstance(position_ids, torch.Tensor) and position_ids.is_nested and position_ids.dim() == 3):
        return False
    if position_ids.layout != torch.jagged:
        return False
    values, offsets = position_ids.values(), position_ids.offsets()
    widths = offsets.diff()
    return (
        values.dim() == 2
        and widths.numel() > 0
        and int(widths[0]) in ROPE_WIDTHS
        and bool((widths == widths[0]).all())
        and int(offsets[-1]) == values.shape[0]
    )


def install(tensordict_utils: ModuleType) -> None:
    """Wrap ``tensordict_utils.maybe_fix_3d_position_ids`` (idempotent)."""
    original = tensordict_utils.maybe_fix_3d_position_ids
    if getattr(original, "__visionr3_fix__", False):
        return

    def fix_3d_position_ids(data) -> None:
        if "position_ids" in data.keys() and _packed_on_rope_dim(data["position_ids"]):
            packed = data["position_ids"]
            values, offsets = packed.values(), packed.offsets()
            rows = [values[int(offsets[i]) : int(offsets[i + 1])] for i in range(offsets.numel() - 1)]
            data["position_ids"] = tensordict_utils.nested_tensor_from_tensor_list(rows, ragged_idx=2)
        original(data)

    fix_3d_position_ids.__visionr3_fix__ = True
    fix_3d_position_ids.__wrapped__ = original
    fix_3d_position_ids.__doc__ = (original.__doc__ or "") + "\n(visionr3: also repairs equal-length rows; visionr3.platform.verl_fixes)"
    tensordict_utils.maybe_fix_3d_position_ids = fix_3d_position_ids


def install_text_only_fix(qwen2_vl: ModuleType) -> None:
    """Let Qwen2-VL / Qwen2.5-VL train on micro-batches without images under transformers 5 (idempotent).

    verl 0.9.1's ``verl/models/transformers/qwen2_vl.py`` (``_get_input_embeds``, lines 388-394) runs the vision tower
    on a dummy image when a micro-batch has no image, so every rank's vision parameters join the backward pass, and
    adds ``0.0 * image_embeds.mean()``. Under transformers 5 the tower returns a ``BaseModelOutputWithPooling``, which
    has no ``mean`` (``AttributeError``); verl unpacks it everywhere else (``unpack_visual_output``, as its own
    ``qwen3_vl.py`` does in the same branch). The wrapper makes the tower return the unpacked embeddings for exactly
    that call, and leaves every other call to verl's function. Found by the cold-start SFT tests (tests/train/).
    """
    from verl.utils.transformers_compat import unpack_visual_output

    original = qwen2_vl._get_input_embeds
    if getattr(original, "__visionr3_fix__", False):
        return

    def _get_input_embeds(model, input_ids, attention_mask=None, pixel_values=None, pixel_values_videos=None, *rest):
        if pixel_values is not None or pixel_values_videos is not None:
            return original(model, input_ids, attention_mask, pixel_values, pixel_values_videos, *rest)
        visual = model.visual
        own = visual.__dict__.get("forward")
        tower = visual.forward
        visual.forward = lambda *args, **kwargs: unpack_visual_output(tower(*args, **kwargs))[0]
        try:
            return original(model, input_ids, attention_mask, pixel_values, pixel_values_videos, *rest)
        finally:
            if own is None:
                del visual.forward
            else:
                visual.forward = own

    _get_input_embeds.__visionr3_fix__ = True
    _get_input_embeds.__wrapped__ = original
    qwen2_vl._get_input_embeds = _get_input_embeds


# ---- 3. actor.freeze_vision_tower ------------------------------------------------------------------------------------

VISION_MARK = "visual."
"""Qwen2.5-VL's and Qwen3-VL's vision tower and merger live under ``visual`` (``model.visual.*`` in transformers 5)."""
_freeze_vision_tower = False  # set while the actor's engine is built (ActorRolloutRefWorker.init_model)


def freeze_vision_tower(module) -> int:
    """Turn ``requires_grad`` off for every parameter whose name contains :data:`VISION_MARK`; how many it froze."""
    frozen = 0
    for name, parameter in module.named_parameters():
        if VISION_MARK in f"{name}" and parameter.requires_grad:
            parameter.requires_grad_(False)
            frozen += 1
    return frozen


class vision_tower_frozen:
    """While active, the FSDP engines built in this process freeze the vision tower (what the worker wrapper sets
    from ``actor.freeze_vision_tower``; usable directly around verl's ``TrainingWorker``)."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.saved = enabled, False

    def __enter__(self):
        global _freeze_vision_tower
        self.saved, _freeze_vision_tower = _freeze_vision_tower, self.enabled
        return self

    def __exit__(self, *exc):
        global _freeze_vision_tower
        _freeze_vision_tower = self.saved


def install_freeze_vision_tower(module: ModuleType) -> None:
    """Wrap ``ActorRolloutRefWorker.init_model`` (``verl.workers.engine_workers``) or ``FSDPEngine._build_fsdp_module``
    (``verl.workers.engine.fsdp.transformer_impl``), whichever ``module`` is (idempotent)."""
    import functools
    import logging

    worker = getattr(module, "ActorRolloutRefWorker", None)
    if worker is not None and not getattr(worker.init_model, "__visionr3_fix__", False):
        original_init = worker.init_model

        @functools.wraps(original_init)  # keeps verl's dispatch attributes (@register)
        def init_model(self, *args, **kwargs):
            actor = self.config.get("actor") if "actor" in getattr(self, "role", "") else None
            with vision_tower_frozen(bool(actor is not None and actor.get("freeze_vision_tower", False))):
                return original_init(self, *args, **kwargs)

        init_model.__visionr3_fix__ = True
        worker.init_model = init_model

    engine = getattr(module, "FSDPEngine", None)
    if engine is not None and not getattr(engine._build_fsdp_module, "__visionr3_fix__", False):
        original_build = engine._build_fsdp_module

        @functools.wraps(original_build)
        def _build_fsdp_module(self, module_, *args, **kwargs):
            if _freeze_vision_tower and not self.engine_config.forward_only:
                frozen = freeze_vision_tower(module_)
                logging.getLogger(__name__).warning("visionr3: actor.freeze_vision_tower froze %d vision parameters", frozen)
            return original_build(self, module_, *args, **kwargs)

        _build_fsdp_module.__visionr3_fix__ = True
        engine._build_fsdp_module = _build_fsdp_module


# ---- 4. verl's replay-buffer poll ----------------------------------------------------------------------------------

REPLAY_BUFFER_POLL_S = 0.25
"""How often the v1 trainer's replay buffer looks for finished rollouts (verl's default: 2.0 s); the environment
variable ``VISIONR3_REPLAY_BUFFER_POLL_S``, read when the fix is installed, overrides it (benchmarks/bench_cpu_step.py
sets verl's 2.0 for its ``today`` arm)."""


def install_poll_interval(replay_buffer: ModuleType) -> None:
    """Make verl's v1 ``ReplayBuffer`` poll every :data:`REPLAY_BUFFER_POLL_S` seconds unless told otherwise
    (idempotent).

    verl 0.9.1's ``ReplayBuffer.sample`` (``verl/trainer/ppo/v1/replay_buffer.py``, the sync trainer's ``gen`` stage)
    reads TransferQueue's metadata, and while a batch is not finished sleeps ``poll_interval`` — 2.0 s, which the
    trainer never passes and no config key sets. So ``gen`` ends on the first poll after the last trajectory: the CPU
    demo's ``timing_s/gen`` read 6.0x or 8.0x s on every step (benchmarks/bench_cpu_step.py), about 1 s lost per step
    on average. A poll is one metadata read from the TransferQueue controller. ``ReplayBufferAsync`` inherits the
    constructor; a caller that passes ``poll_interval`` keeps its value. Remove when verl makes it configurable.
    """
    import functools
    import os

    interval = float(os.environ.get("VISIONR3_REPLAY_BUFFER_POLL_S", REPLAY_BUFFER_POLL_S))
    cls = replay_buffer.ReplayBuffer
    original = cls.__init__
    if getattr(original, "__visionr3_fix__", False):
        return

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        if len(args) < 5:  # poll_interval is the fifth parameter after self
            kwargs.setdefault("poll_interval", interval)
        original(self, *args, **kwargs)

    __init__.__visionr3_fix__ = True
    cls.__init__ = __init__
