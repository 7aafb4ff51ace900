"""verl's synchronous v1 trainer, registered as ``trainer.v1.trainer_mode=visionr3_sync``, plus visionr3 metrics.

verl's v1 trainer logs ``num_turns`` but none of an agent loop's ``extra_fields``. This subclass changes only
``_compute_metrics``: after verl's own metrics it reads the batch's ``extra_fields`` from TransferQueue (before verl
clears it) and adds ``visionr3/<key>/{mean,min,max}`` for the per-trajectory counters ``visionr3_agent`` records,
plus ``visionr3/tool_call_rate`` (share of trajectories with at least one call), ``visionr3/valid_call_ratio`` and
``visionr3/reward/<component>/mean`` for each numeric field of the reward function's dict (accuracy, format, ...),
which verl's v1 trainer otherwise logs only during validation.
Everything else — the training loop, weight sync, checkpoints — is verl's ``PPOTrainerSync`` unchanged.

The class registers when this module is imported; :mod:`visionr3.plugin` imports it in every process verl starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

TRAJECTORY_COUNTERS = (
    "tool_calls",
    "valid_tool_calls",
    "invalid_tool_calls",
    "num_images",
    "tool_images",
    "image_tokens",
    "image_limit_hits",
)


def aggregate_trajectory_metrics(extra_fields: Sequence[Mapping[str, Any] | None], prefix: str = "visionr3/") -> dict[str, float]:
    """``{prefix}<counter>/{mean,min,max}`` over trajectories, plus the tool-call rate and the valid-call ratio.

    Trajectories that lack a counter (another agent loop in the same batch) are left out of that counter's stats.
    """
    metrics: dict[str, float] = {}
    rows = [row for row in extra_fields if isinstance(row, Mapping)]
    for key in TRAJECTORY_COUNTERS:
        values = np.array([float(row[key]) for row in rows if isinstance(row.get(key), (int, float, np.number))])
        if values.size:
            metrics[f"{prefix}{key}/mean"] = float(values.mean())
            metrics[f"{prefix}{key}/min"] = float(values.min())
            metrics[f"{prefix}{key}/max"] = float(values.max())
    rewards: dict[str, list[float]] = {}
    for row in rows:  # the reward function's dict (accuracy, format, ...), which verl keeps per trajectory
        for key, value in (row.get("reward_extra_info") or {}).items():
            if isinstance(value, (int, float, np.number)) and key not in TRAJECTORY_COUNTERS:
                rewards.setdefault(key, []).append(float(value))
    for key, values in rewards.items():
        metrics[f"{prefix}reward/{key}/mean"] = float(np.mean(values))
    calls = [float(row["tool_calls"]) for row in rows if isinstance(row.get("tool_calls"), (int, float, np.number))]
    if calls:
        metrics[f"{prefix}tool_call_rate"] = float(np.mean([c > 0 for c in calls]))
        valid = sum(float(row.get("valid_tool_calls") or 0) for row in rows)
        metrics[f"{prefix}valid_call_ratio"] = valid / sum(calls) if sum(calls) else 0.0
    return metrics


def _register() -> None:
    from verl.trainer.ppo.v1.trainer_base import register_trainer
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    @register_trainer("visionr3_sync")
    class VisionR3SyncTrainer(PPOTrainerSync):
        """``PPOTrainerSync`` that also logs visionr3's per-trajectory tool metrics."""

        def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
            super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
            import transfer_queue as tq

            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
            rows = list(data["extra_fields"].tolist()) if hasattr(data["extra_fields"], "tolist") else list(data["extra_fields"])
            padding = [tag.get("is_padding", False) for tag in batch.tags]
            metrics.update(aggregate_trajectory_metrics([row for row, pad in zip(rows, padding) if not pad]))

    globals()["VisionR3SyncTrainer"] = VisionR3SyncTrainer


_register()
