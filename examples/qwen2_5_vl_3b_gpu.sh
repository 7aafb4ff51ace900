#!/usr/bin/env bash
# Single-GPU quickstart: GRPO with the crop/zoom tool on Qwen2.5-VL-3B-Instruct, vLLM rollout, one 80 GB GPU.
#
#   bash examples/qwen2_5_vl_3b_gpu.sh [extra Hydra overrides]
#
# Needs the GPU install (README "Install on a GPU cluster") and the model in the Hugging Face cache or a local dir
# (MODEL=/path/to/Qwen2.5-VL-3B-Instruct). Data: any parquet in visionr3's row format; by default the synthetic
# small-square task is written to ~/data/visionr3_marks (swap in `visionr3 prepare` outputs for real runs).
# Everything not set here comes from configs/visionr3_trainer.yaml (verl's ppo_trainer + visionr3's plug-ins).
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen2.5-VL-3B-Instruct}
DATA=${DATA:-$HOME/data/visionr3_marks}
python -c "from visionr3.demo.synthetic import write_parquet as w; w('$DATA/train.parquet', 2048, 0, (1344, 1008)); w('$DATA/val.parquet', 64, 1, (1344, 1008))"

visionr3 train \
  actor_rollout_ref.model.path="$MODEL" \
  data.train_files="$DATA/train.parquet" data.val_files="$DATA/val.parquet" \
  data.train_batch_size=32 data.max_prompt_length=2048 data.max_response_length=2048 \
  +data.max_pixels=1003520 \
  actor_rollout_ref.actor.ppo_mini_batch_size=16 actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2 \
  actor_rollout_ref.actor.optim.lr=1e-6 actor_rollout_ref.actor.fsdp_config.param_offload=true \
  actor_rollout_ref.actor.fsdp_config.optimizer_offload=true \
  actor_rollout_ref.rollout.name=vllm actor_rollout_ref.rollout.n=8 \
  actor_rollout_ref.rollout.tensor_model_parallel_size=1 actor_rollout_ref.rollout.gpu_memory_utilization=0.5 \
  actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4 actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4 \
  trainer.n_gpus_per_node=1 trainer.nnodes=1 trainer.total_epochs=1 trainer.save_freq=50 trainer.test_freq=25 \
  trainer.logger='[console]' trainer.experiment_name=qwen2_5_vl_3b_zoom \
  "$@"
