#!/bin/sh
# Issue 13: SVDO from a briefly trained dense net (10 epochs for LeNet-300-100, 6 for LeNet-5, on the 55,000
# training images, no early stopping), compared with the converged dense nets of benchmarks/runs/val
# (--dense-ref). These are the bundled checkpoints: LeNet-300-100 60.9x (the runs from its converged net
# reached 22-24x, from scratch 76x but 1.7 points below dense), LeNet-5 84.7x (63.2x from its converged net).
# LeNet-5 takes ~50 s per SVDO epoch: several sessions.
#
#   nohup nice -n 19 sh benchmarks/runs/val-short/run.sh >> benchmarks/runs/val-short/run.out 2>&1 &
#
# Re-running the same command continues every unfinished run from its state file and leaves finished ones
# alone. sh reads this file as it runs it: do not edit it while it runs.
set -u
cd "$(dirname "$0")/../../.." || exit 1
. benchmarks/runs/train.sh

# shellcheck disable=SC2086
train benchmarks/runs/val-short lenet300 --dense-epochs 10 --dense-patience 0 $SVDO_RECIPE \
    --schedule hold-decay --decay-frac 0.4 --dense-ref benchmarks/runs/val/lenet300-fashion-mnist-dense.pt
# shellcheck disable=SC2086
train benchmarks/runs/val-short lenet5 --dense-epochs 6 --dense-patience 0 $SVDO_RECIPE \
    --schedule hold-decay --decay-frac 0.4 --dense-ref benchmarks/runs/val/lenet5-fashion-mnist-dense.pt
