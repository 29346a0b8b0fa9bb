# Shared by the run scripts under benchmarks/runs/ (sourced, not run): one torch thread, low priority,
# every run continued from its state file when it has one.
#
#   train OUT_DIR ARCH [train_zoo options...]
#
# runs benchmarks/train_zoo.py on Fashion-MNIST into OUT_DIR, appending its output to
# OUT_DIR/ARCH-fashion-mnist.out. When OUT_DIR/ARCH-fashion-mnist-state.pt exists (saved after every epoch),
# it adds --resume: an unfinished run continues bit for bit, a finished one is left alone. Scripts that
# source this file must first cd to the repository root.
. .venv/bin/activate
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

train() {
    out=$1
    arch=$2
    shift 2
    mkdir -p "$out"
    state=$out/$arch-fashion-mnist-state.pt
    if [ -f "$state" ]; then
        set -- "$@" --resume "$state"
    fi
    echo "$(date '+%F %T') $out $arch: train_zoo.py $*"
    nice -n 19 python benchmarks/train_zoo.py --arch "$arch" --data fashion-mnist --out-dir "$out" --threads 1 "$@" \
        >> "$out/$arch-fashion-mnist.out" 2>&1
    echo "$(date '+%F %T') $out $arch: exit $?"
}

# The paper's recipe where it applies: Adam lr 1e-3, batch 100, log sigma^2 = -10, KL warm-up 5 epochs, 200 epochs.
SVDO_RECIPE="--svdo-epochs 200 --kl-warmup-epochs 5 --lr 1e-3 --batch 100 --log-sigma2-init -10"
# The dense net trained to convergence: early stopping on the validation split, patience 10.
DENSE_CONVERGED="--dense-epochs 100 --dense-patience 10"
