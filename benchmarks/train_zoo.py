"""Train a zoo LeNet dense, then with Sparse Variational Dropout, on real offline data.

    python benchmarks/train_zoo.py --arch lenet5 --data fashion-mnist --out-dir benchmarks/runs/val
    python benchmarks/train_zoo.py --resume benchmarks/runs/val/lenet5-fashion-mnist-state.pt

Data: the last --val-size images of the training split are held out for validation (Fashion-MNIST:
55,000 train / 5,000 val / 10,000 test; mnist5k: 3,500 / 500 / 1,000). Every epoch reports the
validation and the test accuracy separately; only the validation accuracy decides anything.

Dense baseline: Adam at a constant --lr, early stopping on validation accuracy (--dense-patience
epochs without a new best, at most --dense-epochs); the best state is kept, saved, and is the net
SVDO starts from and the "dense" every comparison uses. --dense-patience 0 trains exactly
--dense-epochs epochs and keeps the last state (the old behaviour).

SVDO (the paper's recipe): starts from the dense net with log sigma^2 = --log-sigma2-init, Adam,
batch 100, KL weight 0 -> 1 over --kl-warmup-epochs, log alpha clipped to +-8 in the KL term
(svdcompress.nn.layers), --svdo-epochs epochs (200 by default), learning rate decayed linearly to 0
over the whole run (--schedule linear). --schedule hold-decay holds it, then decays it linearly to
0 over the last --decay-frac of the steps (the schedule of the runs before issue 13).

State: after every epoch the whole run (models, optimizer, LR-scheduler position, KL warm-up step,
RNG states of torch/numpy/python and of the data-shuffle generator, early-stopping bookkeeping,
the log so far) is written atomically to --state (default <out-dir>/<arch>-<data>-state.pt).
--resume STATE continues bit-for-bit with the settings stored in the state (one torch thread
per run and the same machine give the same bits). A finished run's state says "done"; resuming
it does nothing. --stop-after-epochs N stops cleanly after N epochs (for time-boxed sessions).

Writes, under --out-dir: ``<arch>-<data>-dense.pt``, ``<arch>-<data>-svdo.pt`` (svdcompress
checkpoints recording architecture and provenance), ``<arch>-<data>-log.json`` (when finished:
per-epoch loss, validation/test accuracy, compression and time; the dense curve and stopping point)
and ``<arch>-<data>-progress.json`` (the same, rewritten every epoch while the run is going). Times:
``seconds`` is wall clock per phase (pauses such as SIGSTOP included), ``cpu_seconds`` this process's CPU time.
``--bundle`` also copies the SVDO checkpoint into the package.

Data parallel: ``torchrun --standalone --nproc-per-node 2 benchmarks/train_zoo.py ...`` trains with
DistributedDataParallel (gloo, CPU). Every process reads the same data and the same shuffle; each global
batch of --batch examples is split evenly over the processes (--batch must divide by their number), so the
recipe and the ELBO (train_size = the whole training set: the KL is counted once per global step, see
``ELBOLoss``) are the single-process ones. Each process draws its own noise (torch reseeded per epoch from
--seed, the epoch and the rank). Only rank 0 prints and writes files; all ranks evaluate, so their
bookkeeping (early stopping) stays identical.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import svdcompress
from svdcompress._io import atomic_path
from svdcompress.checkpoint.formats import save_checkpoint
from svdcompress.nn.layers import ELBOLoss, kl_divergence, sparsify, svdo_layers
from svdcompress.nn.zoo import INPUT_SHAPES, build
from svdcompress.tuning.datasets import load_dataset

PACKAGE_CKPT_DIR = Path(svdcompress.__file__).parent / "checkpoint" / "bundled"
SCRIPT = "benchmarks/train_zoo.py"
STATE_VERSION = 1

VAL_SIZES = {"fashion-mnist": 5000, "mnist5k": 500}
"""Images held out from the end of each data set's training split for validation: the same images as the
data specs ``fashion-mnist:val`` and ``mnist5k:val`` (svdcompress.tuning.dataspec):
tune never picks on trained-on data."""

# Settings that define a run: a resumed run must use the stored values (see _resolve_resume).
TRAIN_KEYS = (
    "arch",
    "data",
    "val_size",
    "dense_epochs",
    "dense_patience",
    "svdo_epochs",
    "from_scratch",
    "init_from",
    "dense_ref",
    "kl_warmup_epochs",
    "batch",
    "lr",
    "schedule",
    "decay_frac",
    "log_sigma2_init",
    "seed",
    "log_step_losses",
)

Loader = Callable[[str, str], tuple[torch.Tensor, torch.Tensor]]
"""``loader(data_name, split)`` with split "train" or "test" -> (images, labels); load_dataset by default."""


# ---------------------------------------------------------------------------------------------- torchrun


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _log(*args: Any, **kwargs: Any) -> None:
    """print, on rank 0 only."""
    if _rank() == 0:
        print(*args, **kwargs)


# ---------------------------------------------------------------------------------------------- data


def load_splits(
    data: str, val_size: int, loader: Loader = load_dataset
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """train / val / test: val is the last ``val_size`` images of the training split, train the rest."""
    x, y = loader(data, "train")
    if not 0 < val_size < len(x):
        raise SystemExit(
            f"--val-size {val_size}: must be between 1 and {len(x) - 1} ({data} has {len(x)} train images)"
        )
    return {
        "train": (x[:-val_size], y[:-val_size]),
        "val": (x[-val_size:], y[-val_size:]),
        "test": loader(data, "test"),
    }


# ---------------------------------------------------------------------------------------------- schedule


def _lr_lambda(total_steps: int, decay_frac: float) -> Callable[[int], float]:
    """LR factor: 1 for the first (1 - decay_frac) of the steps, then linear to 0; decay_frac 1 is linear to 0."""
    hold = int(total_steps * (1.0 - decay_frac))

    def f(step: int) -> float:
        if step < hold:
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - hold))

    return f


def _constant(step: int) -> float:
    return 1.0


def _decay_frac(cfg: dict[str, Any]) -> float:
    return 1.0 if cfg["schedule"] == "linear" else float(cfg["decay_frac"])


# ---------------------------------------------------------------------------------------------- metrics


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / len(x)


@torch.no_grad()
def evaluate_nomask(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of the SVDO net with theta and no mask (threshold +inf): what ``tune`` compares against."""
    layers = [layer for _, layer in svdo_layers(model)]
    saved = [layer.threshold for layer in layers]
    try:
        for layer in layers:
            layer.threshold = float("inf")
        return evaluate(model, x, y)
    finally:
        for layer, thr in zip(layers, saved, strict=True):
            layer.threshold = thr


@torch.no_grad()
def sparsity_stats(model: nn.Module) -> dict[str, Any]:
    total = kept = 0
    per_layer = {}
    for name, layer in svdo_layers(model):
        for pname, m in layer.masks().items():  # an LSTM has one per weight matrix: lstm.weight_ih_l0, ...
            per_layer[name if pname == "weight" else f"{name}.{pname}"] = {"weights": m.numel(), "kept": int(m.sum())}
            total += m.numel()
            kept += int(m.sum())
    return {"weights": total, "kept": kept, "compression": total / max(1, kept), "layers": per_layer}


# ---------------------------------------------------------------------------------------------- RNG state


def _rng_state() -> dict[str, Any]:
    """torch / numpy / python global RNG states as tensors, lists and numbers (loadable with weights_only)."""
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "python": {"version": int(py_version), "internal": [int(v) for v in py_internal], "gauss_next": py_gauss},
    }


def _set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = st["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def _load_dense(path: str, arch: str) -> tuple[nn.Module, dict[str, Any]]:
    """A dense svdcompress checkpoint of ``arch`` (as this script writes it) -> (module, provenance)."""
    ck = torch.load(path, weights_only=True)
    if not isinstance(ck, dict) or "state_dict" not in ck or ck.get("arch") != arch:
        raise SystemExit(f"--init-from {path}: not a dense svdcompress checkpoint of {arch}")
    model = build(arch, **{**(ck.get("arch_kwargs") or {}), "svdo": False})
    model.load_state_dict(ck["state_dict"])
    return model, dict(ck.get("provenance") or {})


# ---------------------------------------------------------------------------------------------- one phase


class Phase:
    """One training phase (dense or SVDO): model, Adam, LR schedule, KL warm-up, shuffle generator."""

    def __init__(self, model: nn.Module, cfg: dict[str, Any], *, svdo: bool, train_size: int) -> None:
        self.model = model
        self.svdo = svdo
        self.batch = int(cfg["batch"])
        self.steps_per_epoch = (train_size + self.batch - 1) // self.batch
        self.opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
        if svdo:
            self.epochs = int(cfg["svdo_epochs"])
            lam = _lr_lambda(self.epochs * self.steps_per_epoch, _decay_frac(cfg))
        else:  # early stopping: the length is not known in advance, so the dense LR is constant
            self.epochs = int(cfg["dense_epochs"])
            lam = _constant
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lam)
        warm = int(float(cfg["kl_warmup_epochs"]) * self.steps_per_epoch) if svdo else 0
        self.elbo = ELBOLoss(model, train_size=train_size, warmup_steps=warm)
        self.gen = torch.Generator().manual_seed(1234 + int(cfg["seed"]))
        self.seed = int(cfg["seed"])
        # Under torchrun the forward runs through DDP (gradients averaged over the processes); the model, its
        # state and the evaluations stay the plain module.
        self.net: nn.Module = DistributedDataParallel(model) if _world() > 1 else model

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "kl_step": self.elbo.step,
            "generator": self.gen.get_state(),
        }

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.elbo.step = int(st["kl_step"])
        self.gen.set_state(st["generator"])

    def train_epoch(self, x: torch.Tensor, y: torch.Tensor, desc: str) -> list[float]:
        self.model.train()
        perm = torch.randperm(len(x), generator=self.gen)
        rank, world = _rank(), _world()
        if world > 1:  # every process its own noise, reproducible per epoch (a resume starts at an epoch)
            torch.manual_seed(self.seed * 1_000_003 + int(self.sched.last_epoch) * 101 + rank)
        losses: list[float] = []
        bar = tqdm(
            range(self.steps_per_epoch),
            desc=desc,
            file=sys.stderr,
            leave=False,
            disable=not sys.stderr.isatty() or _rank() != 0,
        )
        for s in bar:
            idx = perm[s * self.batch : (s + 1) * self.batch][rank::world]  # this process's share of the batch
            logits = self.net(x[idx])
            loss = self.elbo(logits, y[idx]) if self.svdo else F.cross_entropy(logits, y[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            losses.append(loss.item())
            if s % 50 == 0:
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
        return losses


# ---------------------------------------------------------------------------------------------- provenance


def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", *args], capture_output=True, text=True, check=False, cwd=Path(__file__).parent)
    except OSError:
        return None
    return r.stdout if r.returncode == 0 else None


def _git_provenance() -> dict[str, Any]:
    """The real commit (``git rev-parse HEAD``), "+dirty" when tracked files differ from it, and which ones."""
    head = (_git("rev-parse", "HEAD") or "").strip() or "unknown"
    status = _git("status", "--porcelain", "--untracked-files=no")
    dirty = sorted(line[3:] for line in (status or "").splitlines() if line.strip())
    return {"git_commit": head + ("+dirty" if dirty else ""), "git_dirty_files": dirty}


def _session(cfg: dict[str, Any], book: dict[str, Any] | None) -> dict[str, Any]:
    return {
        **_git_provenance(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "threads": int(cfg["threads"]),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "start_phase": book["phase"] if book else "start",
        "start_epoch": book["epoch"] if book else 0,
    }


# ---------------------------------------------------------------------------------------------- arguments


def _parser(suppress: bool = False) -> argparse.ArgumentParser:
    d: Callable[[Any], Any] = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=d(None)
    )
    p.add_argument("--arch", choices=["lenet300", "lenet5"])
    p.add_argument("--data", choices=sorted(VAL_SIZES), default=d("fashion-mnist"))
    p.add_argument("--val-size", type=int, help="validation images held out from the end of the train split")
    p.add_argument(
        "--dense-epochs", type=int, default=d(100), help="most dense epochs (early stopping may stop sooner)"
    )
    p.add_argument(
        "--dense-patience",
        type=int,
        default=d(10),
        help="stop dense training after this many epochs without a better validation accuracy; 0: no early stopping",
    )
    p.add_argument("--svdo-epochs", type=int, default=d(200))
    p.add_argument(
        "--from-scratch",
        action="store_true",
        default=d(False),
        help="train SVDO from random init, not from the dense net",
    )
    p.add_argument(
        "--init-from", type=str, help="start SVDO from this dense svdcompress checkpoint (skips dense training)"
    )
    p.add_argument(
        "--dense-ref",
        type=str,
        help="the dense net every comparison uses (its val/test accuracy and epochs), when SVDO starts from "
        "another one (a briefly trained dense net, --dense-epochs N --dense-patience 0)",
    )
    p.add_argument("--kl-warmup-epochs", type=float, default=d(5.0))
    p.add_argument("--batch", type=int, default=d(100))
    p.add_argument("--lr", type=float, default=d(1e-3))
    p.add_argument(
        "--schedule",
        choices=["linear", "hold-decay"],
        default=d("linear"),
        help="SVDO learning rate: linear to 0 over the whole run (the paper), or held then decayed over --decay-frac",
    )
    p.add_argument(
        "--decay-frac", type=float, default=d(0.3), help="with --schedule hold-decay: share of steps decayed"
    )
    p.add_argument("--log-sigma2-init", type=float, default=d(-10.0))
    p.add_argument("--seed", type=int, default=d(0))
    p.add_argument("--log-step-losses", action="store_true", default=d(False), help="record every step's loss")
    p.add_argument("--threads", type=int, default=d(1), help="torch.set_num_threads")
    p.add_argument("--out-dir", type=str, default=d("benchmarks/runs"))
    p.add_argument("--state", type=str, help="state file (default <out-dir>/<arch>-<data>-state.pt)")
    p.add_argument("--resume", type=str, metavar="STATE", help="continue the run saved in STATE, bit for bit")
    p.add_argument("--stop-after-epochs", type=int, help="stop (state saved) after this many epochs in this process")
    p.add_argument("--bundle", action="store_true", default=d(False), help="copy the SVDO checkpoint into the package")
    return p


def _stem(cfg: dict[str, Any]) -> str:
    return f"{cfg['arch']}-{cfg['data']}"


def _state_path(cfg: dict[str, Any]) -> Path:
    return Path(cfg["state"]) if cfg.get("state") else Path(cfg["out_dir"]) / f"{_stem(cfg)}-state.pt"


def _resume_command(state_path: Path) -> str:
    return f"python {SCRIPT} --resume {state_path}"


# ---------------------------------------------------------------------------------------------- the run


class Run:
    """The whole training run as a state machine over epochs: dense -> svdo -> done."""

    def __init__(self, cfg: dict[str, Any], splits: dict[str, tuple[torch.Tensor, torch.Tensor]], argv: list[str]):
        self.cfg = cfg
        self.splits = splits
        self.argv = argv
        self.out_dir = Path(cfg["out_dir"])
        self.stem = _stem(cfg)
        self.state_path = _state_path(cfg)
        self.phase: Phase | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.book: dict[str, Any] = {}

    # -- bookkeeping ----------------------------------------------------------------------------

    def _sizes(self) -> dict[str, int]:
        return {f"{k}_size": len(v[0]) for k, v in self.splits.items()}

    def fresh(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg["seed"])
        np.random.seed(cfg["seed"])
        random.seed(cfg["seed"])
        self.book = {
            "version": STATE_VERSION,
            "config": {k: cfg[k] for k in TRAIN_KEYS},
            "command": " ".join([SCRIPT, *self.argv]),
            "out_dir": str(cfg["out_dir"]),
            "sizes": self._sizes(),
            "phase": "dense",
            "epoch": 0,
            "log": [],
            "elapsed": {"dense": 0.0, "svdo": 0.0},  # wall clock, pauses (SIGSTOP) included
            "cpu": {"dense": 0.0, "svdo": 0.0},  # this process's CPU time: the compute, pauses excluded
            "dense": None,
            "early_stop": {"best_val": -1.0, "best_epoch": 0, "bad_epochs": 0},
            "sessions": [],
        }
        if cfg["init_from"] is not None or cfg["dense_epochs"] <= 0:
            self._finish_dense(None)
        else:
            self.phase = Phase(build(cfg["arch"], svdo=False), cfg, svdo=False, train_size=len(self.splits["train"][0]))

    def load(self, st: dict[str, Any]) -> None:
        self.book = st["book"]
        ph = self.book["phase"]
        train_size = len(self.splits["train"][0])
        if ph == "dense":
            self.phase = Phase(build(self.cfg["arch"], svdo=False), self.cfg, svdo=False, train_size=train_size)
            self.phase.load_state_dict(st["phase"])
            self.best_state = st["best_state"]
        elif ph == "svdo":
            self.phase = Phase(self._svdo_skeleton(), self.cfg, svdo=True, train_size=train_size)
            self.phase.load_state_dict(st["phase"])
        _set_rng_state(st["rng"])

    def save(self) -> None:
        if _rank() != 0:
            return
        st = {
            "book": self.book,
            "phase": self.phase.state_dict() if self.phase is not None and self.book["phase"] != "done" else None,
            "best_state": self.best_state if self.book["phase"] == "dense" else None,
            "rng": _rng_state(),
        }
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.state_path) as tmp:
            torch.save(st, tmp)
        self._write_json(self.out_dir / f"{self.stem}-progress.json", self._report(status=self.book["phase"]))

    def _write_json(self, path: Path, obj: Any) -> None:
        if _rank() != 0:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(obj, indent=2, default=str))

    def _report(self, status: str) -> dict[str, Any]:
        return {
            "status": status,
            "resume_command": _resume_command(self.state_path),
            "config": self.book["config"],
            "sizes": self.book["sizes"],
            "dense": self.book["dense"],
            "sessions": self.book["sessions"],
            "epochs": self.book["log"],
        }

    # -- phases ---------------------------------------------------------------------------------

    def _svdo_skeleton(self) -> nn.Module:
        """An SVDO model shaped like the one being trained (its values are overwritten or initialised by the caller)."""
        cfg = self.cfg
        if cfg["from_scratch"]:
            model = build(cfg["arch"], svdo=True)
            with torch.no_grad():
                for _, layer in svdo_layers(model):
                    for _, _, log_sigma2 in layer.svdo_pairs():
                        log_sigma2.fill_(cfg["log_sigma2_init"])
            return model
        return sparsify(build(cfg["arch"], svdo=False), log_sigma2_init=cfg["log_sigma2_init"])

    def _dense_done(self) -> bool:
        es, cfg = self.book["early_stop"], self.cfg
        if self.book["epoch"] >= cfg["dense_epochs"]:
            return True
        return bool(cfg["dense_patience"] > 0 and es["bad_epochs"] >= cfg["dense_patience"])

    def _finish_dense(self, dense: nn.Module | None) -> None:
        """Keep the best dense state, save it, and start the SVDO phase from it (or from scratch)."""
        cfg, book = self.cfg, self.book
        xval, yval = self.splits["val"]
        xte, yte = self.splits["test"]
        summary: dict[str, Any] = {}
        if cfg["init_from"] is not None:
            dense, prov = _load_dense(cfg["init_from"], cfg["arch"])
            # A dense checkpoint written by this script records its stopping point as dense_*; keep it.
            summary = {k[len("dense_") :]: v for k, v in prov.items() if k.startswith("dense_") and "acc" not in k}
            summary.update(init_from=cfg["init_from"], loaded_stopped=summary.get("stopped"), stopped="loaded")
            summary.setdefault("epochs", prov.get("epochs"))
        elif dense is not None:
            es = book["early_stop"]
            if cfg["dense_patience"] > 0 and self.best_state is not None:
                dense.load_state_dict(self.best_state)
                kept = es["best_epoch"]
            else:
                kept = book["epoch"]
            summary = {
                "epochs": book["epoch"],
                "best_epoch": es["best_epoch"],
                "kept_epoch": kept,
                "max_epochs": cfg["dense_epochs"],
                "patience": cfg["dense_patience"],
                "stopped": "max_epochs" if book["epoch"] >= cfg["dense_epochs"] else "patience",
                "train_seconds": book["elapsed"]["dense"],
                "train_cpu_seconds": book.get("cpu", {}).get("dense"),
            }
        if dense is not None:
            summary["val_acc"] = evaluate(dense, xval, yval)
            summary["test_acc"] = evaluate(dense, xte, yte)
            if cfg["init_from"] is None and _rank() == 0:
                save_checkpoint(
                    self.out_dir / f"{self.stem}-dense.pt",
                    dense,
                    arch=cfg["arch"],
                    arch_kwargs={"svdo": False},
                    input_shape=INPUT_SHAPES[cfg["arch"]],
                    provenance={**self._base_provenance(), **{f"dense_{k}": v for k, v in summary.items()}},
                )
            _log(
                f"[dense] kept epoch {summary.get('kept_epoch', '-')} of {summary.get('epochs')} "
                f"({summary.get('stopped')}): val acc {summary['val_acc']:.4f}, test acc {summary['test_acc']:.4f}",
                file=sys.stderr,
                flush=True,
            )
        if cfg.get("dense_ref") is not None:
            # SVDO starts from `dense`; the comparisons use the reference net (e.g. one trained to convergence).
            ref, ref_prov = _load_dense(cfg["dense_ref"], cfg["arch"])
            start = {**summary}
            summary = {k[len("dense_") :]: v for k, v in ref_prov.items() if k.startswith("dense_") and "acc" not in k}
            summary.setdefault("epochs", ref_prov.get("epochs"))
            summary.update(
                ref=cfg["dense_ref"], val_acc=evaluate(ref, xval, yval), test_acc=evaluate(ref, xte, yte), start=start
            )
            _log(
                f"[dense] comparisons use {cfg['dense_ref']}: val acc {summary['val_acc']:.4f}, "
                f"test acc {summary['test_acc']:.4f}",
                file=sys.stderr,
                flush=True,
            )
        book["dense"] = summary or None
        book["phase"], book["epoch"] = "svdo", 0
        self.best_state = None
        train_size = len(self.splits["train"][0])
        if cfg["from_scratch"] or dense is None:
            model = self._svdo_skeleton()
        else:
            model = sparsify(dense, log_sigma2_init=cfg["log_sigma2_init"])
        self.phase = Phase(model, cfg, svdo=True, train_size=train_size)

    def _epoch(self) -> None:
        cfg, book, ph = self.cfg, self.book, self.phase
        assert ph is not None
        name = book["phase"]
        total = ph.epochs
        xtr, ytr = self.splits["train"]
        t0, c0 = time.perf_counter(), time.process_time()
        losses = ph.train_epoch(xtr, ytr, f"{name} {book['epoch'] + 1}/{total}")
        train_s = time.perf_counter() - t0
        book["epoch"] += 1
        rec: dict[str, Any] = {
            "phase": name,
            "epoch": book["epoch"],
            "train_loss": sum(losses) / len(losses),
            "lr_end": ph.opt.param_groups[0]["lr"],
            "val_acc": evaluate(ph.model, *self.splits["val"]),
            "test_acc": evaluate(ph.model, *self.splits["test"]),
        }
        if cfg["log_step_losses"]:
            rec["step_losses"] = losses
        if ph.svdo:
            st = sparsity_stats(ph.model)
            rec.update(
                val_acc_nomask=evaluate_nomask(ph.model, *self.splits["val"]),
                compression=st["compression"],
                kept=st["kept"],
                kl=float(kl_divergence(ph.model).detach()),
                kl_weight=ph.elbo.kl_weight,
            )
        else:
            es = book["early_stop"]
            if rec["val_acc"] > es["best_val"]:
                es.update(best_val=rec["val_acc"], best_epoch=book["epoch"], bad_epochs=0)
                self.best_state = {k: v.detach().clone() for k, v in ph.model.state_dict().items()}
            else:
                es["bad_epochs"] += 1
            rec["best_epoch"] = es["best_epoch"]
        book["elapsed"][name] += time.perf_counter() - t0
        cpu = book.setdefault("cpu", {"dense": 0.0, "svdo": 0.0})  # states from before cpu time was kept
        cpu[name] += time.process_time() - c0
        rec["epoch_seconds"] = train_s
        rec["seconds"] = book["elapsed"][name]
        rec["cpu_seconds"] = cpu[name]
        book["log"].append(rec)
        extra = f" compression {rec['compression']:.1f}x kl_w {rec['kl_weight']:.2f}" if ph.svdo else ""
        if not ph.svdo:
            extra = f" (best {book['early_stop']['best_epoch']}, {book['early_stop']['bad_epochs']} without gain)"
        _log(
            f"[{name}] epoch {book['epoch']}/{total} loss {rec['train_loss']:.4f} lr {rec['lr_end']:.2e} "
            f"val acc {rec['val_acc']:.4f} test acc {rec['test_acc']:.4f}{extra} "
            f"({train_s:.0f}s train, {rec['seconds']:.0f}s total)",
            file=sys.stderr,
            flush=True,
        )

    # -- outputs --------------------------------------------------------------------------------

    def _base_provenance(self) -> dict[str, Any]:
        cfg, book = self.cfg, self.book
        first = book["sessions"][0] if book["sessions"] else _session(cfg, None)
        return {
            "data": cfg["data"],
            **book["sizes"],
            "seed": cfg["seed"],
            "batch": cfg["batch"],
            "lr": cfg["lr"],
            "torch": first["torch"],
            "python": first["python"],
            "threads": first["threads"],
            "git_commit": first["git_commit"],
            "git_dirty_files": first["git_dirty_files"],
            "sessions": len(book["sessions"]),
            "command": book["command"],
            "date": first["date"][:10],
        }

    def _finish_svdo(self) -> Path:
        cfg, book, ph = self.cfg, self.book, self.phase
        assert ph is not None
        model = ph.model
        st = sparsity_stats(model)
        dense = book["dense"] or {}
        prov = {
            **self._base_provenance(),
            "epochs": cfg["svdo_epochs"],
            "dense_epochs": dense.get("epochs"),
            "dense_best_epoch": dense.get("best_epoch"),
            "dense_max_epochs": dense.get("max_epochs"),
            "dense_patience": dense.get("patience"),
            "dense_stopped": dense.get("stopped"),
            "dense_train_seconds": dense.get("train_seconds"),
            "init": "scratch" if cfg["from_scratch"] or not dense else "dense",
            "kl_warmup_epochs": cfg["kl_warmup_epochs"],
            "schedule": cfg["schedule"],
            "lr_decay_frac": _decay_frac(cfg),
            "log_sigma2_init": cfg["log_sigma2_init"],
            "log_alpha_clip": 8.0,
            "test_acc": evaluate(model, *self.splits["test"]),
            "val_acc": evaluate(model, *self.splits["val"]),
            "val_acc_nomask": evaluate_nomask(model, *self.splits["val"]),
            "dense_test_acc": dense.get("test_acc", float("nan")),
            "dense_val_acc": dense.get("val_acc", float("nan")),
            "compression": st["compression"],
            "kept": st["kept"],
            "weights": st["weights"],
            "train_seconds": book["elapsed"]["svdo"],
            "train_cpu_seconds": book.get("cpu", {}).get("svdo"),
            "dense_train_cpu_seconds": dense.get("train_cpu_seconds"),
        }
        if cfg["init_from"] is not None:
            prov["init_from"] = cfg["init_from"]
        if cfg.get("dense_ref") is not None:
            start = dense.get("start") or {}
            prov.update(
                dense_ref=cfg["dense_ref"],
                start_dense_epochs=start.get("epochs"),
                start_dense_val_acc=start.get("val_acc"),
                start_dense_test_acc=start.get("test_acc"),
            )
        out = self.out_dir / f"{self.stem}-svdo.pt"
        if _rank() != 0:
            return out
        save_checkpoint(
            out,
            model,
            arch=cfg["arch"],
            arch_kwargs={"svdo": True},
            input_shape=INPUT_SHAPES[cfg["arch"]],
            threshold=3.0,
            provenance=prov,
        )
        log = {**self._report(status="done"), "provenance": prov, "layers": st["layers"]}
        self._write_json(self.out_dir / f"{self.stem}-log.json", log)
        _log(
            f"{self.stem}: dense val/test acc {prov['dense_val_acc']:.4f}/{prov['dense_test_acc']:.4f}, "
            f"svdo val/test acc {prov['val_acc']:.4f}/{prov['test_acc']:.4f}, compression {st['compression']:.1f}x, "
            f"svdo time {prov['train_seconds']:.0f}s -> {out}",
            flush=True,
        )
        if cfg["bundle"]:
            PACKAGE_CKPT_DIR.mkdir(exist_ok=True)
            dst = PACKAGE_CKPT_DIR / f"{cfg['arch']}.pt"
            shutil.copyfile(out, dst)
            shutil.copyfile(self.out_dir / f"{self.stem}-log.json", PACKAGE_CKPT_DIR / f"{cfg['arch']}-log.json")
            _log(f"bundled -> {dst}")
        return out

    def run(self, stop_after: int | None) -> str:
        """Train until done or ``stop_after`` epochs; returns the phase reached ("done" when finished)."""
        book = self.book
        if book["phase"] == "done":
            _log(f"{self.stem}: already finished; outputs in {self.out_dir}", file=sys.stderr, flush=True)
            return "done"
        book["sessions"].append(_session(self.cfg, book))
        _log(
            f"{self.stem}: {book['phase']} epoch {book['epoch']}; state saved after every epoch to {self.state_path}\n"
            f"  to continue after an interruption: {_resume_command(self.state_path)}",
            file=sys.stderr,
            flush=True,
        )
        done = 0
        while True:
            if book["phase"] == "dense" and self._dense_done():
                assert self.phase is not None
                self._finish_dense(self.phase.model)
                self.save()
            if book["phase"] == "svdo" and book["epoch"] >= self.cfg["svdo_epochs"]:
                self._finish_svdo()
                book["phase"] = "done"
                self.save()
                return "done"
            if stop_after is not None and done >= stop_after:
                _log(
                    f"{self.stem}: stopped after {done} epochs this session ({book['phase']} epoch {book['epoch']}); "
                    f"continue with: {_resume_command(self.state_path)}",
                    file=sys.stderr,
                    flush=True,
                )
                return str(book["phase"])
            self._epoch()
            self.save()
            done += 1


def _resolve_resume(a: argparse.Namespace, given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Config of a resumed run: the stored settings; explicitly given training settings must agree with them."""
    path = Path(a.resume)
    if not path.exists():
        raise SystemExit(f"--resume {path}: no such state file")
    st = torch.load(path, weights_only=True)
    if not isinstance(st, dict) or st.get("book", {}).get("version") != STATE_VERSION:
        raise SystemExit(f"--resume {path}: not a train_zoo state file (version {STATE_VERSION})")
    stored = st["book"]["config"]
    clash = {k: (given[k], stored.get(k)) for k in TRAIN_KEYS if k in given and given[k] != stored.get(k)}
    if clash:
        diffs = ", ".join(f"--{k.replace('_', '-')} {new!r} (state has {old!r})" for k, (new, old) in clash.items())
        raise SystemExit(f"--resume {path}: the run was started with other settings: {diffs}")
    cfg = {**vars(a), **stored, "state": str(path), "out_dir": given.get("out_dir", st["book"]["out_dir"])}
    first = st["book"]["sessions"][0] if st["book"]["sessions"] else None
    if first is not None and first["threads"] != cfg["threads"]:
        _log(
            f"warning: the run started with {first['threads']} thread(s), now {cfg['threads']}: "
            "results may differ from an uninterrupted run in the last bits",
            file=sys.stderr,
        )
    return cfg, st


def main(argv: list[str] | None = None, *, loader: Loader = load_dataset) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = _parser().parse_args(argv)
    given = vars(_parser(suppress=True).parse_args(argv))
    if a.resume:
        cfg, st = _resolve_resume(a, given)
    else:
        if a.arch is None:
            raise SystemExit("--arch is required (unless --resume)")
        cfg, st = vars(a), None
        if cfg["val_size"] is None:
            cfg["val_size"] = VAL_SIZES[cfg["data"]]
        for k in ("init_from", "dense_ref"):
            if cfg[k] is not None:
                cfg[k] = str(cfg[k])
        path = _state_path(cfg)
        if path.exists():
            raise SystemExit(f"{path} exists: continue it with --resume {path}, or remove it to start over")

    torch.set_num_threads(cfg["threads"])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")  # torchrun's env:// rendezvous
    if cfg["batch"] % _world():
        raise SystemExit(f"--batch {cfg['batch']} does not divide over {_world()} processes; pick a multiple")
    splits = load_splits(cfg["data"], cfg["val_size"], loader)
    sizes = {k: len(v[0]) for k, v in splits.items()}
    _log(
        f"{_stem(cfg)}: train {sizes['train']:,} / val {sizes['val']:,} (last of the train split) / "
        f"test {sizes['test']:,}",
        file=sys.stderr,
        flush=True,
    )
    run = Run(cfg, splits, argv)
    if st is None:
        run.fresh()
    else:
        if st["book"]["sizes"] != run._sizes():
            raise SystemExit(f"--resume: the data sizes changed ({st['book']['sizes']} -> {run._sizes()})")
        run.load(st)
    try:
        run.run(cfg["stop_after_epochs"])
    finally:
        if dist.is_initialized():
            dist.barrier()  # rank 0 has written everything before any process leaves
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
