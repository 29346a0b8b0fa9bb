#!/bin/sh
# Issue 13: LeNet-5 SVDO from a briefly trained dense net (6 epochs on the 55,000 training images, as the
# bundled LeNet-5's start), compared with the converged dense net of benchmarks/runs/val (--dense-ref).
# The LeNet-5 run of benchmarks/runs/val starts from that converged net; the 60,000-image runs before
# issue 13 started from a 6-epoch dense net and reached 62-68x. ~50 s per SVDO epoch: several sessions.
#
#   nohup nice -n 19 sh benchmarks/runs/val-short/run-lenet5.sh >> benchmarks/runs/val-short/run.out 2>&1 &
#
# Re-running the same command continues the run from its state file.
set -u
cd "$(dirname "$0")/../../.." || exit 1
. .venv/bin/activate
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
out=benchmarks/runs/val-short
state=$out/lenet5-fashion-mnist-state.pt
set -- --dense-epochs 6 --dense-patience 0 --svdo-epochs 200 --kl-warmup-epochs 5 --lr 1e-3 --batch 100 \
    --log-sigma2-init -10 --schedule hold-decay --decay-frac 0.4 \
    --dense-ref benchmarks/runs/val/lenet5-fashion-mnist-dense.pt
if [ -f "$state" ]; then
    set -- --resume "$state"
fi
echo "$(date '+%F %T') $out lenet5: train_zoo.py $*"
nice -n 19 python benchmarks/train_zoo.py --arch lenet5 --data fashion-mnist --out-dir "$out" --threads 1 "$@" \
    >> "$out/lenet5-fashion-mnist.out" 2>&1
echo "$(date '+%F %T') $out lenet5: exit $?"
