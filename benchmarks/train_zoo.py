"""Train a zoo LeNet dense, then with Sparse Variational Dropout, on real offline data.

    python benchmarks/train_zoo.py --arch lenet5 --data fashion-mnist --dense-epochs 8 --svdo-epochs 30

Writes, under --out-dir: ``<arch>-<data>-dense.pt``, ``<arch>-<data>-svdo.pt`` (svdcompress
checkpoints recording architecture and provenance) and ``<arch>-<data>-log.json`` (per-epoch
accuracy, compression and time). ``--bundle`` also copies the SVDO checkpoint into the package.

Recipe (DESIGN.md section 5): Adam lr 1e-3, batch 100; SVDO starts from the dense model with
log sigma^2 = -10; KL weight 0 -> 1 over the first epochs; learning rate held, then decayed
linearly to 0 over the last 30% of steps (most of the compression arrives then).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import svdcompress
from svdcompress.checkpoint import save_checkpoint
from svdcompress.datasets import load_dataset
from svdcompress.svdo import ELBOLoss, kl_divergence, sparsify, svdo_layers
from svdcompress.zoo import INPUT_SHAPES, build

PACKAGE_CKPT_DIR = Path(svdcompress.__file__).parent / "checkpoints"


def _lr_lambda(total_steps: int, decay_frac: float):
    hold = int(total_steps * (1.0 - decay_frac))

    def f(step: int) -> float:
        if step < hold:
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - hold))

    return f


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / len(x)


@torch.no_grad()
def sparsity_stats(model: nn.Module) -> dict[str, Any]:
    total = kept = 0
    per_layer = {}
    for name, layer in svdo_layers(model):
        m = layer.mask()
        per_layer[name] = {"weights": m.numel(), "kept": int(m.sum())}
        total += m.numel()
        kept += int(m.sum())
    return {"weights": total, "kept": kept, "compression": total / max(1, kept), "layers": per_layer}


def train(
    model: nn.Module,
    xtr: torch.Tensor,
    ytr: torch.Tensor,
    xte: torch.Tensor,
    yte: torch.Tensor,
    *,
    epochs: int,
    svdo: bool,
    kl_warmup_epochs: float,
    batch: int,
    lr: float,
    decay_frac: float,
    desc: str,
    log: list[dict[str, Any]],
) -> None:
    steps_per_epoch = (len(xtr) + batch - 1) // batch
    total = epochs * steps_per_epoch
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, decay_frac))
    elbo = ELBOLoss(model, train_size=len(xtr), warmup_steps=int(kl_warmup_epochs * steps_per_epoch))
    gen = torch.Generator().manual_seed(1234)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"{desc} {epoch + 1}/{epochs}", file=sys.stderr, leave=False)
        for s in bar:
            idx = perm[s * batch : (s + 1) * batch]
            logits = model(xtr[idx])
            loss = elbo(logits, ytr[idx]) if svdo else F.cross_entropy(logits, ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if s % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        acc = evaluate(model, xte, yte)
        rec: dict[str, Any] = {"phase": desc, "epoch": epoch + 1, "test_acc": acc, "seconds": time.perf_counter() - t0}
        if svdo:
            st = sparsity_stats(model)
            rec.update(
                compression=st["compression"], kept=st["kept"], kl=float(kl_divergence(model)), kl_weight=elbo.kl_weight
            )
        log.append(rec)
        extra = f" compression {rec['compression']:.1f}x" if svdo else ""
        print(
            f"[{desc}] epoch {epoch + 1}/{epochs} test acc {acc:.4f}{extra} ({rec['seconds']:.0f}s)",
            file=sys.stderr,
            flush=True,
        )


def _git_commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False, cwd=Path(__file__).parent
            ).stdout.strip()
            or "unknown"
        )
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["lenet300", "lenet5"], required=True)
    p.add_argument("--data", choices=["fashion-mnist", "mnist5k"], default="fashion-mnist")
    p.add_argument("--dense-epochs", type=int, default=10)
    p.add_argument("--svdo-epochs", type=int, default=30)
    p.add_argument("--from-scratch", action="store_true", help="train SVDO from random init, not from the dense net")
    p.add_argument(
        "--init-from", type=Path, help="start SVDO from this dense svdcompress checkpoint (skips dense training)"
    )
    p.add_argument("--kl-warmup-epochs", type=float, default=5.0)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--decay-frac", type=float, default=0.3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks/runs"))
    p.add_argument("--bundle", action="store_true", help="copy the SVDO checkpoint into svdcompress/checkpoints/")
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    xtr, ytr = load_dataset(a.data, "train")
    xte, yte = load_dataset(a.data, "test")
    a.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{a.arch}-{a.data}"
    log: list[dict[str, Any]] = []
    common = dict(batch=a.batch, lr=a.lr, decay_frac=a.decay_frac, log=log)
    base_prov = {
        "data": a.data,
        "train_size": len(xtr),
        "test_size": len(xte),
        "seed": a.seed,
        "batch": a.batch,
        "lr": a.lr,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": a.threads,
        "git_commit": _git_commit(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d"),
    }

    t0 = time.perf_counter()
    dense = build(a.arch, svdo=False)
    dense_acc = float("nan")
    if a.init_from is not None:
        from svdcompress.models import load_model

        dense = load_model(a.init_from).module
        dense_acc = evaluate(dense, xte, yte)
        base_prov["init_from"] = str(a.init_from)
        print(f"[dense] loaded {a.init_from}: test acc {dense_acc:.4f}", file=sys.stderr, flush=True)
    elif a.dense_epochs > 0:
        train(dense, xtr, ytr, xte, yte, epochs=a.dense_epochs, svdo=False, kl_warmup_epochs=0, desc="dense", **common)
        dense_acc = evaluate(dense, xte, yte)
        save_checkpoint(
            a.out_dir / f"{stem}-dense.pt",
            dense,
            arch=a.arch,
            arch_kwargs={"svdo": False},
            input_shape=INPUT_SHAPES[a.arch],
            provenance={
                **base_prov,
                "epochs": a.dense_epochs,
                "test_acc": dense_acc,
                "train_seconds": time.perf_counter() - t0,
            },
        )
    t1 = time.perf_counter()
    scratch = a.from_scratch or (a.dense_epochs == 0 and a.init_from is None)
    model = build(a.arch, svdo=True) if scratch else sparsify(dense)
    train(
        model,
        xtr,
        ytr,
        xte,
        yte,
        epochs=a.svdo_epochs,
        svdo=True,
        kl_warmup_epochs=a.kl_warmup_epochs,
        desc="svdo",
        **common,
    )
    acc = evaluate(model, xte, yte)
    st = sparsity_stats(model)
    prov = {
        **base_prov,
        "epochs": a.svdo_epochs,
        "dense_epochs": a.dense_epochs,
        "init": "scratch" if scratch else "dense",
        "kl_warmup_epochs": a.kl_warmup_epochs,
        "lr_decay_frac": a.decay_frac,
        "log_sigma2_init": -10.0,
        "test_acc": acc,
        "dense_test_acc": dense_acc,
        "compression": st["compression"],
        "kept": st["kept"],
        "weights": st["weights"],
        "train_seconds": time.perf_counter() - t1,
    }
    out = save_checkpoint(
        a.out_dir / f"{stem}-svdo.pt",
        model,
        arch=a.arch,
        arch_kwargs={"svdo": True},
        input_shape=INPUT_SHAPES[a.arch],
        threshold=3.0,
        provenance=prov,
    )
    (a.out_dir / f"{stem}-log.json").write_text(
        json.dumps({"provenance": prov, "epochs": log, "layers": st["layers"]}, indent=2)
    )
    print(
        f"{stem}: dense acc {dense_acc:.4f}, svdo acc {acc:.4f}, compression {st['compression']:.1f}x, "
        f"svdo time {prov['train_seconds']:.0f}s -> {out}",
        flush=True,
    )
    if a.bundle:
        PACKAGE_CKPT_DIR.mkdir(exist_ok=True)
        dst = PACKAGE_CKPT_DIR / f"{a.arch}.pt"
        shutil.copyfile(out, dst)
        shutil.copyfile(a.out_dir / f"{stem}-log.json", PACKAGE_CKPT_DIR / f"{a.arch}-log.json")
        print(f"bundled -> {dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
