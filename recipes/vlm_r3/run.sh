#!/usr/bin/env bash
# VLM-R3 (arXiv 2505.16192): inline bbox crops, R-GRPO rewards, groups of 5, no KL. MODEL: your VLIR cold-start checkpoint.
#   bash recipes/vlm_r3/run.sh                       # the defaults below
#   MODEL=... TRAIN=... VAL=... CLUSTER=a100_1x8 bash recipes/vlm_r3/run.sh trainer.total_epochs=1   # any Hydra override
#   visionr3 submit --recipe vlm_r3 -- +cluster=$CLUSTER ...   # the same as a Ray job (README "Submitting to a cluster")
set -euo pipefail
MODEL=${MODEL:-checkpoints/vlm_r3_sft/merged}
TRAIN=${TRAIN:-data/vlm_r3/train.parquet}
VAL=${VAL:-data/vlm_r3/val.parquet}
CLUSTER=${CLUSTER:-a100_1x8}
exec visionr3 train --recipe vlm_r3 "+cluster=$CLUSTER" "actor_rollout_ref.model.path=$MODEL" \
    "data.train_files=$TRAIN" "data.val_files=$VAL" "visionr3.reward.judge.base_url=${JUDGE_URL:-https://dashscope.aliyuncs.com/compatible-mode/v1}" "visionr3.reward.judge.model=${JUDGE_MODEL:-qwen2.5-72b-instruct}" "visionr3.reward.judge.api_key_env=${JUDGE_KEY_ENV:-DASHSCOPE_API_KEY}" "$@"
