#!/bin/sh
# Issue 13: LeNet-300-100 SVDO from a dense net trained for 20 epochs, between the bundled run's 10-epoch start
# (benchmarks/runs/val-short: 60.9x at threshold 3, 0.71 points below the converged dense net; val-tuned 124x,
# 1.24 below) and the converged 47-epoch net (benchmarks/runs/val-holddecay: 23.7x, 0.74 below; val-tuned 28.8x,
# 0.93 below), compared with that converged net (--dense-ref). ~30 min on one thread.
#
#   nohup nice -n 19 sh benchmarks/runs/val-mid/run.sh >> benchmarks/runs/val-mid/run.out 2>&1 &
#
# Re-running the same command continues the run from its state file.
set -u
cd "$(dirname "$0")/../../.." || exit 1
. benchmarks/runs/train.sh

# shellcheck disable=SC2086
train benchmarks/runs/val-mid lenet300 --dense-epochs 20 --dense-patience 0 $SVDO_RECIPE \
    --schedule hold-decay --decay-frac 0.4 --dense-ref benchmarks/runs/val/lenet300-fashion-mnist-dense.pt
