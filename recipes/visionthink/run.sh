#!/usr/bin/env bash
# VisionThink (arXiv 2507.13348): resize tool, GPT judge, apply-ratio penalty. Needs OPENAI_API_KEY on the nodes.
#   bash recipes/visionthink/run.sh                       # the defaults below
#   MODEL=... TRAIN=... VAL=... CLUSTER=a100_1x8 bash recipes/visionthink/run.sh trainer.total_epochs=1   # any Hydra override
#   visionr3 submit --recipe visionthink -- +cluster=$CLUSTER ...   # the same as a Ray job (README "Submitting to a cluster")
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen2.5-VL-7B-Instruct}
TRAIN=${TRAIN:-data/visionthink/train.parquet}
VAL=${VAL:-data/visionthink/val.parquet}
CLUSTER=${CLUSTER:-a100_4x8}
exec visionr3 train --recipe visionthink "+cluster=$CLUSTER" "actor_rollout_ref.model.path=$MODEL" \
    "data.train_files=$TRAIN" "data.val_files=$VAL" "visionr3.reward.judge.base_url=${JUDGE_URL:-https://api.openai.com/v1}" "visionr3.reward.judge.model=${JUDGE_MODEL:-gpt-4o-2024-11-20}" "$@"
