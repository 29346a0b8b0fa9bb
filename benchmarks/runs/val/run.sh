#!/bin/sh
# Issue 13: the Fashion-MNIST runs with a validation split (55,000 train / 5,000 val / 10,000 test),
# one after the other, at low priority, one torch thread each:
#
#   nohup nice -n 19 sh benchmarks/runs/val/run.sh >> benchmarks/runs/val/run.out 2>&1 &
#
# Re-running the same command continues every unfinished run from its state file
# (<out-dir>/<arch>-fashion-mnist-state.pt, saved after every epoch) and leaves finished ones alone.
# Per-run logs: <out-dir>/<arch>-fashion-mnist.out. sh reads this file as it runs it: do not edit it while it runs.
set -u
cd "$(dirname "$0")/../../.." || exit 1
. benchmarks/runs/train.sh

# Paper recipe: Adam lr 1e-3, batch 100, dense to convergence (early stopping on val, patience 10),
# SVDO from the best dense net, log sigma^2 = -10, KL warm-up 5 epochs, 200 epochs, LR linear to 0.
PAPER="$DENSE_CONVERGED $SVDO_RECIPE"
# 1. LeNet-300-100, the paper's schedule (finished 2026-12-06: 21.9x, test 88.89% vs dense 89.45%).
# shellcheck disable=SC2086
train benchmarks/runs/val lenet300 $PAPER --schedule linear
# 2. Same converged dense net, the schedule of the earlier runs (LR held, linear to 0 over the last 40%):
#    separates the schedule from the dense start as the reason for run 1's low compression.
# shellcheck disable=SC2086
train benchmarks/runs/val-holddecay lenet300 $PAPER --schedule hold-decay --decay-frac 0.4 \
    --init-from benchmarks/runs/val/lenet300-fashion-mnist-dense.pt
# 3. LeNet-5 from its converged dense net, with the hold-then-decay schedule that gave every earlier
#    high-compression run (68x at 80 epochs); ~1 min per SVDO epoch, so it continues next session.
# shellcheck disable=SC2086
train benchmarks/runs/val lenet5 $PAPER --schedule hold-decay --decay-frac 0.4
