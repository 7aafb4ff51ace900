"""verl's synchronous v1 trainer, registered as ``trainer.v1.trainer_mode=visionr3_sync``, plus visionr3 metrics.

verl's v1 trainer logs ``num_turns`` but none of an agent loop's ``extra_fields``. This subclass extends
``_compute_metrics``: after verl's own metrics it reads the batch's ``extra_fields`` from TransferQueue (before verl
clears it) and adds ``visionr3/<key>/{mean,min,max}`` for the per-trajectory counters ``visionr3_agent`` records,
plus ``visionr3/tool_call_rate`` (share of trajectories with at least one call), ``visionr3/valid_call_ratio`` and
``visionr3/reward/<component>/mean`` for each numeric field of the reward function's dict (accuracy, format, ...),
which verl's v1 trainer otherwise logs only during validation.

It also overrides ``_compute_advantage`` — the one place where all ``n`` rollouts of every prompt are present — for
visionr3's group-level rewards (pure functions in :mod:`visionr3.reward.shaping`), and only when they are configured
(otherwise it is verl's own, with no extra TransferQueue read):

1. ``visionr3.shaping.apply_ratio.enable``: VisionThink's apply-ratio penalty rewrites each trajectory's score
   (``rm_scores`` in TransferQueue) *before* verl computes advantages, so verl's ``critic/score/*`` metrics, KL-in-
   reward and rollout correction all see the shaped reward;
2. trajectories marked ``excluded`` by the reward (a judge that failed after its retries, ``on_failure: exclude``)
   or ``visionr3.advantage.decouple`` (Vision-SR1 v2's decoupled advantages): verl computes its advantages first,
   then they are replaced by :func:`~visionr3.reward.shaping.grpo_advantages` /
   :func:`~visionr3.reward.shaping.decoupled_advantages` over the same rows (GRPO only).

With ``trainer.rollout_data_dir`` set, the rollout dump verl writes per step (``<step>.jsonl``: decoded prompt and
response, ground truth, score) gets visionr3's columns too (:func:`~visionr3.agent.trajectory.dump_columns`): every
reward component, the tool calls and crop boxes, the assistant turns, and the prompt image saved as
``<step>.images/<i>.jpg`` — so ``visionr3 view <rollout_data_dir>`` shows what the policy looked at.

With ``trainer.rollout_data_dir`` set, the dump also carries, per row, what verl's *batch* holds for its images
(``batch_images``: each image's ``image_grid_thw`` and a digest and statistics of its slice of
``multi_modal_inputs["pixel_values"]``, :func:`batch_image_summary`), the reward function's own score before
visionr3's shaping (``reward_score``) and the dataset row (``row_index``) — so a test can re-make a crop from the
row's source image and find its pixels in the batch the actor trained on.

**Weight-sync check** (``visionr3.verify_weight_sync``: null = on for the HF rollout, where
``actor_rollout_ref.rollout.engine_kwargs.hf.verify_weight_sync`` can still turn it off, and off for vLLM; true/false
forces it). For verl's vLLM replicas it compares fingerprints (:mod:`visionr3.rollout.vllm_weights`: element count,
sum and sum of squares, since vLLM fuses and renames tensors) and logs ``match``, ``mismatched``, ``sumsq_rel_diff``
and the first worker's ``engine_numel/sum/sumsq``. For HF replicas: after verl's every weight sync (the one after ``init`` and the one ending each step), the trainer reads the
actor's full parameters from its FSDP engine (:func:`actor_weight_digests`, one ``__ray_call__`` per trainer worker,
independent of the sync path) and asks each replica's server for the digest of the weight each name loads into
(:meth:`~visionr3.rollout.hf.server.HFServer.get_weight_digests`). It logs ``visionr3/weight_sync/match`` (1.0 when
every replica holds exactly the actor's weights), ``mismatched`` (tensors that differ), and 48-bit prefixes of the
combined ``actor_digest`` / ``replica_digest``; the check after ``init`` is logged with step 1 as
``visionr3/weight_sync/initial_*``. A stale replica logs ``match`` 0.0 and a warning naming the tensors. It costs two
SHA-256 passes over the weights per sync (~0.2 s for the 14M-parameter tiny model; turn it off for large models).

Checkpoints are verl's, saved so that a kill cannot leave a root that does not resume (:mod:`visionr3.train.checkpoints`:
a completion mark, an atomic pointer, rotation after the pointer moves, and a pointer check before verl's resume).
Everything else — the training loop, weight sync — is verl's ``PPOTrainerSync`` unchanged.

The class registers when this module is imported; :mod:`visionr3.plugin` imports it in every process verl starts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from visionr3.agent.trajectory import (
    DUMP_ADVANTAGE,
    DUMP_BATCH_IMAGES,
    DUMP_IMAGE_SIZE,
    DUMP_REWARD_SCORE,
    DUMP_ROW_INDEX,
    REWARD_EXTRA_INFO,
    aggregate_trajectory_metrics,
    dump_columns,
    dump_number,
    dump_value,
    reward_rows,
)
from visionr3.config import VisionR3Settings
from visionr3.reward.shaping import custom_advantages, shape_scores

DUMP_IMAGE_MAX_SIDE = 512

logger = logging.getLogger(__name__)


def _padded(tensor: Any, fill: float) -> Any:
    """A TransferQueue field as one dense tensor (response fields come back nested, one row per trajectory)."""
    return tensor.to_padded_tensor(fill) if tensor.is_nested else tensor


def _rows(column: Any) -> list:
    """A TransferQueue non-tensor column as a list, one entry per key."""
    return list(column.tolist()) if hasattr(column, "tolist") else list(column)


def first_prompt_image(prompt: Sequence[Mapping[str, Any]] | None) -> Any:
    """The first image of a trajectory's ``raw_prompt`` (chat messages; verl's v1 trainer keeps them in
    TransferQueue's ``raw_prompt`` field), or ``None``."""
    from visionr3.processing import image_items, open_image

    if prompt is None:
        return None
    items = image_items(list(prompt))
    if not items:
        return None
    try:
        return open_image(items[0])
    except Exception:
        return None


def batch_image_summary(multi_modal_inputs: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Per image of one trajectory, what verl's batch holds for it: ``grid_thw`` and the ``sha256`` (dtype, shape and
    bytes: :func:`~visionr3.rollout.hf.digests.tensor_digest`), ``mean`` and ``std`` of its rows of
    ``pixel_values`` (images are consecutive, ``t*h*w`` patch rows each, in ``image_grid_thw`` order)."""
    if not isinstance(multi_modal_inputs, Mapping):
        return []
    grid, pixels = multi_modal_inputs.get("image_grid_thw"), multi_modal_inputs.get("pixel_values")
    if grid is None or pixels is None:
        return []
    from visionr3.rollout.hf.digests import tensor_digest

    images, start = [], 0
    for t, h, w in grid.tolist():
        rows = pixels[start : start + t * h * w]
        start += t * h * w
        values = rows.double()
        images.append({
            "grid_thw": [int(t), int(h), int(w)],
            "sha256": tensor_digest(rows),
            "mean": float(values.mean()),
            "std": float(values.std()) if values.numel() > 1 else 0.0,
        })
    if start != len(pixels):
        raise ValueError(f"image_grid_thw covers {start} pixel rows, pixel_values has {len(pixels)}")
    return images


WEIGHT_DIGEST_BITS = 48
"""Digests are logged as their first 48 bits: an integer a float64 metric holds exactly."""


def digest_number(digest: str) -> float:
    return float(int(digest[: WEIGHT_DIGEST_BITS // 4], 16))


def _engine_worker(actor_self: Any) -> Any:
    """The ``ActorRolloutRefWorker`` inside a trainer worker actor (verl wraps it in a ``WorkerDict``)."""
    candidates = [actor_self, *getattr(actor_self, "worker_dict", {}).values(), *getattr(actor_self, "fused_worker_dict", {}).values()]
    for worker in candidates:
        if hasattr(getattr(worker, "actor", None), "engine"):
            return worker
    raise RuntimeError(f"no actor engine in trainer worker {type(actor_self).__name__}")


def actor_weight_digests(actor_self: Any, dtype: str | None = None) -> dict[str, str] | None:
    """Runs in every trainer worker (``__ray_call__``): ``{name: digest}`` of the actor's full parameters as the
    weight sync would send them (verl's ``get_per_tensor_param``, HF names), floating ones cast to ``dtype``.
    ``None`` on ranks other than 0 (they iterate too: gathering a DTensor is a collective), and for LoRA adapters."""
    import torch

    from visionr3.rollout.hf.digests import named_tensor_digests

    worker = _engine_worker(actor_self)
    params, peft_config = worker.actor.engine.get_per_tensor_param(
        layered_summon=getattr(worker, "layered_summon", False), base_sync_done=True
    )
    digests = named_tensor_digests(params, dtype)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    return digests if rank == 0 and peft_config is None else None


def actor_weight_fingerprint(actor_self: Any) -> dict[str, float] | None:
    """Runs in every trainer worker (``__ray_call__``): :func:`~visionr3.rollout.vllm_weights.weight_fingerprint` of
    the actor's full parameters as the weight sync sends them. A tied ``lm_head`` (equal to the embedding it is tied
    to) is counted once, as vLLM holds it. ``None`` on ranks other than 0 and for LoRA adapters."""
    import torch

    from visionr3.rollout.vllm_weights import weight_fingerprint

    worker = _engine_worker(actor_self)
    params, peft_config = worker.actor.engine.get_per_tensor_param(
        layered_summon=getattr(worker, "layered_summon", False), base_sync_done=True
    )
    full: dict[str, torch.Tensor] = {}
    for name, tensor in params:
        tensor = tensor.detach()
        full[name] = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
    embeddings = [t for name, t in full.items() if name.endswith("embed_tokens.weight")]
    tied = [name for name in full if name.endswith("lm_head.weight") and any(torch.equal(full[name], e) for e in embeddings)]
    fingerprint = weight_fingerprint(full.items(), skip=tied)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    return fingerprint if rank == 0 and peft_config is None else None


def _vllm_sync_metrics(actor_wg: Any, servers: Sequence[Any], prefix: str) -> dict[str, float]:
    """The check for verl's vLLM replicas: the actor's fingerprint against every vLLM worker's."""
    import logging
    import time

    import ray

    from visionr3.rollout.vllm_weights import fingerprints_agree, vllm_server_fingerprints

    start = time.perf_counter()
    results = ray.get([worker.__ray_call__.remote(actor_weight_fingerprint) for worker in actor_wg.workers])
    expected = next((r for r in results if r is not None), None)
    if expected is None:  # LoRA adapters: nothing comparable
        return {}
    engines = [fp for per_server in vllm_server_fingerprints(servers) for fp in per_server]
    stale = [fp for fp in engines if not fingerprints_agree(expected, fp)]
    if stale:
        logging.getLogger(__name__).warning(
            "visionr3: %d vLLM worker(s) do not hold the actor's weights after the sync: actor %s, engine %s",
            len(stale), expected, stale[0],
        )
    scale = max(abs(expected["sumsq"]), 1e-30)
    return {
        f"{prefix}match": float(not stale),
        f"{prefix}mismatched": float(len(stale)),
        f"{prefix}sumsq_rel_diff": max(abs(fp["sumsq"] - expected["sumsq"]) / scale for fp in engines),
        # the first worker's fingerprint: a test can match it to a saved checkpoint, and tell syncs apart
        **{f"{prefix}engine_{key}": float(engines[0][key]) for key in ("numel", "sum", "sumsq")},
        f"{prefix}check_s": time.perf_counter() - start,
    }


def weight_sync_metrics(actor_wg: Any, replicas: Sequence[Any], prefix: str = "visionr3/weight_sync/") -> dict[str, float]:
    """Compare the actor's weights with every rollout replica's (see the module docstring): digests for HF replicas,
    fingerprints for verl's vLLM replicas; ``{}`` for other backends."""
    import logging
    import time

    import ray

    from visionr3.rollout.hf.digests import replica_weight_report
    from visionr3.rollout.hf.replica import HFReplica

    vllm_servers = [server for replica in replicas if type(replica).__name__ == "vLLMReplica" for server in replica.servers]
    if vllm_servers:
        return _vllm_sync_metrics(actor_wg, vllm_servers, prefix)
    servers = [replica.server_handle for replica in replicas if isinstance(replica, HFReplica)]
    if not servers:
        return {}
    start = time.perf_counter()
    dtype = ray.get(servers[0].get_info.remote())["dtype"]
    results = ray.get([worker.__ray_call__.remote(actor_weight_digests, dtype) for worker in actor_wg.workers])
    expected = next((r for r in results if r is not None), None)
    if expected is None:  # LoRA adapters: the replica holds merged weights, nothing comparable
        return {}
    report = replica_weight_report(expected, servers)
    if not report["match"]:
        logging.getLogger(__name__).warning(
            "visionr3: the rollout replica does not hold the actor's weights after the sync: %d tensor(s) differ, "
            "e.g. %s", len(report["mismatched"]), report["mismatched"][:5],
        )
    return {
        f"{prefix}match": float(report["match"]),
        f"{prefix}mismatched": float(len(report["mismatched"])),
        f"{prefix}actor_digest": digest_number(report["actor_digest"]),
        f"{prefix}replica_digest": digest_number(report["replica_digests"][0]),
        f"{prefix}check_s": time.perf_counter() - start,
    }








@register_trainer("visionr3_sync")
class VisionR3SyncTrainer(PPOTrainerSync):
    """``PPOTrainerSync`` that also logs visionr3's per-trajectory tool metrics."""

    # ---- weight-sync check (after verl's syncs: on_init_end, on_step_end) ----------------------------------

    def _visionr3_check_weights(self, prefix: str) -> None:
        from visionr3.rollout.hf.config import ROLLOUT_NAME, _engine_options

        rollout = self.config.actor_rollout_ref.rollout
        forced = self._visionr3_block().verify_weight_sync
        if rollout.name == ROLLOUT_NAME:
            enabled = _engine_options(rollout).get("verify_weight_sync", True) if forced is None else forced
        else:
            enabled = rollout.name == "vllm" and bool(forced)
        if not enabled:
            return
        metrics = weight_sync_metrics(self.actor_rollout_wg, self.checkpoint_manager.replicas, prefix)
        self._pending_sync_metrics = {**(getattr(self, "_pending_sync_metrics", None) or {}), **metrics}

    # ---- checkpoints a kill cannot corrupt (visionr3.train.checkpoints) ---------------------------------------

    def _save_checkpoint(self):
        """verl's save with its rotation off, then the folder marked complete, the pointer rewritten atomically, and
        only then the folders beyond ``trainer.max_actor_ckpt_to_keep`` removed (see :mod:`visionr3.train.checkpoints`
        for the two windows this closes). With ``actor.checkpoint.async_save`` verl writes no pointer: left to verl."""
        import shutil

        from omegaconf import open_dict

        from visionr3.train import checkpoints

        trainer = self.config.trainer
        if self.config.actor_rollout_ref.actor.get("checkpoint", {}).get("async_save", False):
            return super()._save_checkpoint()
        keep = 1 if trainer.get("remove_previous_ckpt_in_save", False) else trainer.get("max_actor_ckpt_to_keep", None)
        saved = {key: trainer.get(key, None) for key in ("max_actor_ckpt_to_keep", "max_critic_ckpt_to_keep",
                                                          "remove_previous_ckpt_in_save")}
        with open_dict(trainer):
            trainer.max_actor_ckpt_to_keep = trainer.max_critic_ckpt_to_keep = None
            trainer.remove_previous_ckpt_in_save = False
        try:
            super()._save_checkpoint()
        finally:
            with open_dict(trainer):
                for key, value in saved.items():
                    trainer[key] = value
        root = self._visionr3_checkpoint_root()
        checkpoints.mark_complete(os.path.join(root, f"global_step_{self.global_steps}"), self.global_steps)
        checkpoints.write_tracker(root, self.global_steps)
        for folder in checkpoints.prunable(root, keep, self.global_steps):
            shutil.rmtree(folder, ignore_errors=True)

    def _visionr3_checkpoint_root(self) -> str:
        """``trainer.default_local_dir``, made absolute against the working directory as verl's save and resume do."""
        return os.path.abspath(self.config.trainer.default_local_dir)

    def _load_checkpoint(self):
        """verl's resume, after the pointer was checked: an unreadable one, or one naming a folder a kill left half
        written, is set to the newest complete step (with a warning) instead of failing or training from scratch."""
        from visionr3.train import checkpoints

        trainer = self.config.trainer
        if trainer.resume_mode == "auto":
            step, warning = checkpoints.repair(self._visionr3_checkpoint_root())
            if warning:
                logger.warning(warning)
                print(f"[visionr3] {warning}", flush=True)
        super()._load_checkpoint()

    # ---- a lost node ends the run (visionr3.cluster.liveness) ---------------------------------------------------

    def _build_replay_buffer(self):
        """verl's replay buffer, with two bounds verl 0.9.1 lacks on its wait for a batch: it fails the run once a
        node that held its workers is dead (otherwise it polls for ever: :mod:`visionr3.cluster.liveness`), and it
        honours ``algorithm.filter_groups.max_num_gen_batches`` (:meth:`_visionr3_bound_refills`)."""
        from visionr3.cluster.liveness import NodeWatch

        buffer = super()._build_replay_buffer()
        watch = NodeWatch(self._visionr3_placement_groups, context=lambda: f" (step {self.global_steps}, rollout)")
        sync = buffer._sync_metadata_from_transfer_queue

        def _sync_metadata_from_transfer_queue():
            watch.check()
            return sync()

        buffer._sync_metadata_from_transfer_queue = _sync_metadata_from_transfer_queue
        self._visionr3_bound_refills(buffer)
        return buffer

    def _resolve_filter_groups_metric(self):
        """verl's, without its warning that ``max_num_gen_batches`` is ignored: :meth:`_visionr3_bound_refills`
        honours it."""
        from omegaconf import open_dict

        filter_groups = self.config.algorithm.get("filter_groups", None)
        limit = filter_groups.get("max_num_gen_batches", 0) if filter_groups is not None else 0
        if not limit:
            return super()._resolve_filter_groups_metric()
        with open_dict(filter_groups):
            filter_groups.max_num_gen_batches = 0
        try:
            return super()._resolve_filter_groups_metric()
        finally:
            with open_dict(filter_groups):
                filter_groups.max_num_gen_batches = limit

    def _visionr3_bound_refills(self, buffer) -> None:
        """DAPO's ``max_num_gen_batches``: a step generates at most that many batches of prompts, counting its first
        (a batch is the sampled batch size, ``train_batch_size``: verl forces ``data.gen_batch_size`` to 1 under
        filtering); 0 means no limit. verl 0.9.1's v1 replay buffer ignores the setting (it warns) and refills for as
        long as groups score alike, so a policy whose groups all score alike never finishes a step.

        The buffer's refill callback counts the prompts one ``sample`` call dispatches and dispatches no more than
        the limit allows. The buffer's wait for trajectories raises, naming the setting, once the limit is reached,
        nothing is in flight and the batch is still short (the buffer waits only while it cannot select a batch), as
        DAPO's and VisionThink's trainers raise."""
        filter_groups = self.config.algorithm.get("filter_groups", None)
        if getattr(buffer, "filter_groups_metric", None) is None or filter_groups is None:
            return
        limit = int(filter_groups.get("max_num_gen_batches", 0) or 0)
        if limit <= 0 or getattr(buffer, "refill_fn", None) is None:
            return
        refill, sample, wait = buffer.refill_fn, buffer.sample, buffer._wait_for_next_poll
        state = {"prompts": 0, "batch_size": int(self.config.data.train_batch_size)}

        def remaining() -> int:
            return (limit - 1) * state["batch_size"] - state["prompts"]

        def counted_sample(global_steps, partition_id, batch_size):
            state.update(prompts=0, batch_size=batch_size)
            return sample(global_steps=global_steps, partition_id=partition_id, batch_size=batch_size)

        def bounded_refill(num_prompts):
            count = min(num_prompts, remaining())
            if count <= 0:
                return 0
            state["prompts"] += count
            return refill(count)

        def _wait_for_next_poll(partition_id, last_debug_time):
            in_flight = len(buffer.pending_keys[partition_id]) + len(buffer.running_keys[partition_id])
            if partition_id != "val" and remaining() <= 0 and in_flight == 0:
                raise RuntimeError(
                    f"algorithm.filter_groups.max_num_gen_batches={limit}: step {self.global_steps} generated "
                    f"{state['batch_size'] + state['prompts']} prompts ({limit} batches of {state['batch_size']}) and "
                    f"fewer than {state['batch_size']} of their groups had a {filter_groups.get('metric')!r} that "
                    f"differs between samples (DAPO filtering drops the rest). The data may be too hard or too easy "
                    f"for this policy; raise the setting, or set it to 0 for no limit.")
            return wait(partition_id, last_debug_time)

        buffer.sample, buffer.refill_fn, buffer._wait_for_next_poll = counted_sample, bounded_refill, _wait_for_next_poll

    # ---- a prompt image that does not decode (visionr3.data.dataset) ----------------------------------------------

    def _fetch_one_gen_batch(self):
        """verl's next prompts, each prompt image decoded first. The dataset build reads only image headers, so a
        truncated file passes it; verl then decodes the image where it serialises the batch into TransferQueue and the
        step crashes on an anonymous ``OSError: image file is truncated``. Here such a row raises naming its file, row
        and image, or with ``data.skip_bad_rows`` is skipped for the next prompt and counted
        (``visionr3/data/skipped_rows``). In verl's v1 trainer a fetch is one prompt (``data.gen_batch_size`` 1 in
        this mode: NOTE.md, "visionr3_sync and verl's buffers"); a larger fetch with a bad row is fetched again whole."""
        from visionr3.data.dataset import ROW_FIELD, undecodable_image

        skip = bool(self.config.data.get("skip_bad_rows", False))
        for _ in range(len(self.train_dataset) + 1):
            batch = super()._fetch_one_gen_batch()
            prompts = batch["raw_prompt"]
            problems = [(i, problem) for i in range(len(batch)) if (problem := undecodable_image(prompts[i]))]
            if not problems:
                return batch
            i, problem = problems[0]
            where = batch[ROW_FIELD][i] if ROW_FIELD in batch.keys() else f"data_source {batch['data_source'][i]!r}"
            field = problem.split(":", 1)[0]
            message = f"{where}: field '{field}': {problem.split(': ', 1)[1]} (its header is readable: it passed the build)"
            if not skip:
                raise ValueError(f"{message}; set data.skip_bad_rows=true to skip such rows")
            self._visionr3_undecodable_rows = getattr(self, "_visionr3_undecodable_rows", 0) + len(problems)
            print(f"visionr3: skipped {message} (data.skip_bad_rows=true)", flush=True)
        raise ValueError("no prompt of the training set has images that decode (data.skip_bad_rows=true skipped all)")

    def _visionr3_placement_groups(self) -> list:
        manager = getattr(self, "resource_pool_manager", None)
        pools = manager.resource_pool_dict.values() if manager is not None else ()
        return [group for pool in pools for group in (getattr(pool, "pgs", None) or ())]

    def on_init_end(self):
        super().on_init_end()
        self._visionr3_check_weights("visionr3/weight_sync/initial_")

    def on_step_end(self):
        super().on_step_end()
        self._visionr3_check_weights("visionr3/weight_sync/")

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
        import transfer_queue as tq

        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
        rows = _rows(data["extra_fields"])
        padding = [tag.get("is_padding", False) for tag in batch.tags]
        metrics.update(aggregate_trajectory_metrics([row for row, pad in zip(rows, padding) if not pad]))
        # rows data.skip_bad_rows left out: when the training set was built (visionr3.data.dataset), and since
        # (_fetch_one_gen_batch: images that do not decode)
        metrics["visionr3/data/skipped_rows"] = (getattr(self.train_dataset, "skipped_rows", 0)
                                                 + getattr(self, "_visionr3_undecodable_rows", 0))

    # ---- rollout dumps (trainer.rollout_data_dir) -------------------------------------------------------------

    def _log_rollout_data(self, batch, timing_raw, rollout_data_dir):
        self._visionr3_dump_batch = batch  # read back in _dump_generations, which verl calls from here
        try:
            return super()._log_rollout_data(batch, timing_raw, rollout_data_dir)
        finally:
            self._visionr3_dump_batch = None

    def _dump_generations(self, inputs, outputs, gts, scores, reward_extra_infos_dict, dump_path):
        batch = getattr(self, "_visionr3_dump_batch", None)
        keys = reward_extra_infos_dict.get("uid")
        if batch is not None and keys and len(keys) == len(inputs):
            try:
                reward_extra_infos_dict = {**reward_extra_infos_dict, **self._visionr3_dump_columns(batch, keys, dump_path)}
            except Exception as exc:  # a richer dump must never cost a training step
                import logging

                logging.getLogger(__name__).warning("visionr3: rollout dump without visionr3 columns (%s)", exc)
        return super()._dump_generations(inputs, outputs, gts, scores, reward_extra_infos_dict, dump_path)

    def _visionr3_dump_columns(self, batch, keys, dump_path) -> dict[str, list]:
        import os

        import transfer_queue as tq

        from visionr3.processing import save_display_copy

        fields = ["extra_fields", "raw_prompt", "multi_modal_inputs", "extra_info"]
        data = tq.kv_batch_get(keys=list(keys), partition_id=batch.partition_id, select_fields=fields)
        rows, prompts, multi_modal, extra_info = (_rows(data[field]) for field in fields)
        step = self.global_steps
        folder = f"{step}.images"
        images, names = [], []
        for i, prompt in enumerate(prompts):
            image = first_prompt_image(prompt)
            names.append(None if image is None else f"{folder}/{i}.jpg")
            images.append(image)

        def write_images() -> None:  # on verl's dump thread, before the JSONL that references them
            for name, image in zip(names, images):
                if image is not None:
                    save_display_copy(image, os.path.join(dump_path, name), DUMP_IMAGE_MAX_SIDE, quality=85)

        self._dump_futures.append(self._dump_executor.submit(write_images))
        columns = dump_columns(rows, names)
        columns[DUMP_IMAGE_SIZE] = [None if im is None else list(im.size) for im in images]
        columns[DUMP_BATCH_IMAGES] = [batch_image_summary(mm) for mm in multi_modal]
        columns[DUMP_REWARD_SCORE] = [dump_number((row.get(REWARD_EXTRA_INFO) or {}).get("score")) for row in rows]
        columns[DUMP_ROW_INDEX] = [dump_value((info or {}).get("index")) for info in extra_info]
        columns[DUMP_ADVANTAGE] = self._visionr3_dump_advantages(batch, keys)
        return columns

    @staticmethod
    def _visionr3_dump_advantages(batch, keys) -> list[float | None]:
        """Each trajectory's advantage as the actor trained on it (the dump runs after the update), so a reader can
        check what a reward became: an excluded sample's 0, a group's normalisation."""
        import transfer_queue as tq

        try:
            data = tq.kv_batch_get(keys=list(keys), partition_id=batch.partition_id,
                                   select_fields=["advantages", "response_mask"])
        except Exception as exc:  # no advantages in the batch (nothing trained): the column stays empty
            logger.debug("visionr3: no advantages for the rollout dump (%s)", exc)
            return [None] * len(keys)
        advantages, mask = _padded(data["advantages"], 0.0).double(), _padded(data["response_mask"], 0).double()
        means = (advantages * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return [float(value) for value in means.tolist()]

    # ---- group-level rewards --------------------------------------------------------------------------------

    def _visionr3_block(self) -> VisionR3Settings:
        """The ``visionr3`` block, parsed once per trainer."""
        if getattr(self, "_visionr3_parsed", None) is None:
            self._visionr3_parsed = VisionR3Settings.from_config(self.config)
        return self._visionr3_parsed

    def _compute_advantage(self, batch, metrics):
        block = self._visionr3_block()
        shaping, decouple, apply_ratio, may_exclude = block.shaping, block.decouple, block.apply_ratio, block.may_exclude
        if not (apply_ratio or decouple or may_exclude):
            return super()._compute_advantage(batch, metrics)  # nothing of ours configured: verl's own

        import torch
        import transfer_queue as tq
        from tensordict import TensorDict
        from verl.workers.utils.padding import response_to_nested

        fields = ["uid", "rm_scores", "response_mask", "extra_fields"]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        uids = [str(uid) for uid in data["uid"].tolist()] if hasattr(data["uid"], "tolist") else list(data["uid"])
        extra = data["extra_fields"]
        rewards = reward_rows(_rows(extra))
        padding = np.array([bool(tag.get("is_padding", False)) for tag in batch.tags])
        excluded = np.array([float(r.get("excluded", 0.0)) > 0 for r in rewards])
        valid = ~padding & ~excluded
        response_mask = data["response_mask"]
        mask = _padded(response_mask, 0)
        padded_scores = _padded(data["rm_scores"], 0.0)
        scores = padded_scores.sum(-1).double().numpy()
        metrics["visionr3/excluded_samples"] = float(excluded[~padding].sum())

        if apply_ratio:
            shaped, shaping_metrics = shape_scores(uids, scores, rewards, ~padding, shaping)
            metrics.update(shaping_metrics)
            last = (mask.sum(-1).long() - 1).clamp(min=0)  # verl puts the score on the last response token
            new_scores = torch.zeros_like(padded_scores)
            new_scores[torch.arange(len(last)), last] = torch.as_tensor(shaped, dtype=padded_scores.dtype)
            output = TensorDict({"rm_scores": response_to_nested(new_scores, response_mask)}, batch_size=len(batch))
            batch = tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=output)
            scores = shaped

        batch = super()._compute_advantage(batch, metrics)
        if not (excluded.any() or decouple):
            return batch
        if self.config.algorithm.adv_estimator != "grpo" or self.config.algorithm.use_kl_in_reward:
            raise ValueError(
                "visionr3.advantage.decouple and judge.on_failure=exclude need algorithm.adv_estimator=grpo and "
                "algorithm.use_kl_in_reward=False (use the actor's KL loss instead)"
            )
        advantages = custom_advantages(
            uids, scores, rewards, valid, decouple,
            norm_by_std=bool(self.config.algorithm.get("norm_adv_by_std_in_grpo", True)),
        )
        dense = torch.as_tensor(advantages, dtype=torch.float32).unsqueeze(-1) * mask.float()
        nested = response_to_nested(dense, response_mask)
        output = TensorDict({"advantages": nested, "returns": nested.clone()}, batch_size=len(batch))
        return tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=output)
