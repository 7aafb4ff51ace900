#!/usr/bin/env bash
# Zoom, DeepEyes style (arXiv 2505.14362): hermes crop tool, correctness-gated tool bonus, LLM judge.
#   JUDGE_URL=http://judge-host:8000/v1 bash recipes/zoom/run.sh   # the defaults below; JUDGE_URL has none: the judge
#                                                  # (Qwen2.5-72B-Instruct in DeepEyes) is a server you run
#   MODEL=... TRAIN=... VAL=... CLUSTER=a100_1x8 bash recipes/zoom/run.sh trainer.total_epochs=1   # any Hydra override
#   visionr3 submit --recipe zoom -- +cluster=$CLUSTER ...   # the same as a Ray job (README "Submitting to a cluster")
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen2.5-VL-7B-Instruct}
TRAIN=${TRAIN:-data/zoom/train.parquet}
VAL=${VAL:-data/zoom/val.parquet}
CLUSTER=${CLUSTER:-a100_4x8}
exec visionr3 train --recipe zoom "+cluster=$CLUSTER" "actor_rollout_ref.model.path=$MODEL" \
    "data.train_files=$TRAIN" "data.val_files=$VAL" "visionr3.reward.judge.base_url=${JUDGE_URL:?set JUDGE_URL to your OpenAI-compatible judge server, e.g. http://judge-host:8000/v1 (recipes/zoom/README.md)}" "visionr3.reward.judge.model=${JUDGE_MODEL:-Qwen/Qwen2.5-72B-Instruct}" "$@"
