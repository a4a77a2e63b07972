#!/usr/bin/env bash
# Reproduce Sulam et al. 2020 (MNIST and CIFAR-10): the six models over seeds, then one table with the
# published accuracy (the official notebooks' mean over the last epochs) beside each model's mean.
#   scripts/sweep_sulam2020.sh [mnist|cifar10] [seeds, default 0,1,2] [extra overrides...]
# Needs the dataset under data.root (or network for the download). Hours per model on a GPU.
set -euo pipefail
dataset=${1:-mnist}
seeds=${2:-0,1,2}
shift $(( $# > 2 ? 2 : $# ))
sweep=outputs/multirun/sulam2020_${dataset}
unroll-train -m +experiment=sulam2020_${dataset} model=cnn,ml_ista,ml_fista,ml_lista,lbp,all_free \
  seed=${seeds} hydra.sweep.dir=${sweep} "$@" || true   # failed jobs are listed by the report
unroll-report ${sweep}
