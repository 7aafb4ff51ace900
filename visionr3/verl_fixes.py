"""One correction to verl 0.9.1, applied in every verl process by :mod:`visionr3.plugin`: equal-length multimodal
rollouts crash ``update_actor``.

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
Any other tensor goes through verl's function untouched. tests/test_verl_fixes.py reproduces the crash with verl's own
functions and shows the fix; NOTE.md "Known problem" has the history. Remove this module when verl fixes the packing.
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
    fix_3d_position_ids.__doc__ = (original.__doc__ or "") + "\n(visionr3: also repairs equal-length rows; visionr3.verl_fixes)"
    tensordict_utils.maybe_fix_3d_position_ids = fix_3d_position_ids
