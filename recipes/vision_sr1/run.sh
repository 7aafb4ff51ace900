#!/usr/bin/env bash
# Vision-SR1 (arXiv 2508.19652): description/think/boxed, self-reward from the description. MODEL: your cold-start checkpoint.
#   bash recipes/vision_sr1/run.sh                       # the defaults below
#   MODEL=... TRAIN=... VAL=... CLUSTER=a100_1x8 bash recipes/vision_sr1/run.sh trainer.total_epochs=1   # any Hydra override
#   visionr3 submit --recipe vision_sr1 -- +cluster=$CLUSTER ...   # the same as a Ray job (README "Submitting to a cluster")
set -euo pipefail
MODEL=${MODEL:-checkpoints/vision_sr1_sft/merged}
TRAIN=${TRAIN:-data/vision_sr1/train.parquet}
VAL=${VAL:-data/vision_sr1/val.parquet}
CLUSTER=${CLUSTER:-a100_1x8}
exec visionr3 train --recipe vision_sr1 "+cluster=$CLUSTER" "actor_rollout_ref.model.path=$MODEL" \
    "data.train_files=$TRAIN" "data.val_files=$VAL" "$@"
