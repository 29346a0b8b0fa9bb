"""The kernel plan a bundle records: which kernel and layout runs each layer, per batch regime, and on which CPU.

``export`` loads the bundle it writes (which chooses every layer's kernel on this machine) and stores the
choice in the manifest's ``kernel_plan``::

    "kernel_plan": {
      "cpu": {"name": "znver4", "features": "<16 hex digits>", "model": "AMD EPYC 9R14 ..."},
      "layers": {"conv1": {"batch1": {"kernel": "sparse", "layout": "shifted"},
                           "batched": {"kernel": "sparse", "layout": "blocked16"}}, ...},
      "single": true
    }

``cpu.name`` and ``cpu.features`` are what numba compiles for (LLVM's host CPU name and a digest of its feature
flags); ``model`` is for people. ``runtime.load`` on a CPU with the same name and features runs the recorded
choice: it times nothing and compiles only the kernels the plan runs. On another CPU it chooses again. A bundle
without the record (written before it existed) is chosen at load, as always.
"""

from __future__ import annotations

import functools
import hashlib
import platform
from typing import Any

from ..errors import BundleError

__all__ = ["KEY", "LAYOUTS", "REGIMES", "cpu_identity", "cpu_matches", "validate"]

KEY = "kernel_plan"
REGIMES = ("batch1", "batched")
LAYOUTS = ("wide", "shifted", "im2col", "blocked16", "blocked32", "chain")
"""Per-image convolution layouts (:mod:`.kernels.conv`), blocks of interleaved images, and a Linear chain."""
KERNEL_KINDS = ("sparse", "dense")
_MAX_TEXT = 256


@functools.cache
def cpu_identity() -> dict[str, str]:
    """This machine as numba compiles for it: LLVM's host CPU name, a digest of its feature flags, the model."""
    import llvmlite.binding as llvm

    name = str(llvm.get_host_cpu_name())
    features = str(llvm.get_host_cpu_features().flatten())
    flags = ",".join(sorted(f for f in features.split(",") if f.startswith("+")))
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"name": name, "features": hashlib.sha256(flags.encode()).hexdigest()[:16], "model": model[:_MAX_TEXT]}


def cpu_matches(cpu: dict[str, str]) -> bool:
    """Whether a record's ``cpu`` is this machine (same LLVM CPU name and feature flags)."""
    here = cpu_identity()
    return cpu.get("name") == here["name"] and cpu.get("features") == here["features"]


def validate(value: Any, node_names: set[str], path: str) -> None:
    """Raise :class:`BundleError` unless ``value`` is a well-formed ``kernel_plan`` naming only ``node_names``."""
    field = f"{path}: manifest field {KEY!r}"
    fix = "re-export the bundle, or delete the field (the runtime then chooses the kernels at load)"

    def bad(what: str) -> BundleError:
        return BundleError(f"{field}: {what}; {fix}")

    if not isinstance(value, dict):
        raise bad(f"must be an object, got {type(value).__name__}")
    unknown = set(value) - {"cpu", "layers", "single"}
    if unknown:
        raise bad(f"unknown key {sorted(unknown)[0]!r}")
    cpu = value.get("cpu")
    if not isinstance(cpu, dict) or not all(isinstance(cpu.get(k), str) for k in ("name", "features")):
        raise bad("cpu must be an object with string name and features")
    for k, v in cpu.items():
        if k not in ("name", "features", "model") or not isinstance(v, str) or len(v) > _MAX_TEXT:
            raise bad(f"cpu.{str(k)[:40]} must be one of name, features, model, a string of at most {_MAX_TEXT} chars")
    if not isinstance(value.get("single", False), bool):
        raise bad(f"single must be true or false, got {value.get('single')!r:.40}")
    layers = value.get("layers")
    if not isinstance(layers, dict):
        raise bad(f"layers must be an object, got {type(layers).__name__}")
    for name, regimes in layers.items():
        if name not in node_names:
            raise bad(f"layers names {str(name)[:80]!r}, which is no node of the graph")
        if not isinstance(regimes, dict) or set(regimes) != set(REGIMES):
            raise bad(f"layers.{name} must hold exactly {' and '.join(REGIMES)}")
        for regime, choice in regimes.items():
            if (
                not isinstance(choice, dict)
                or set(choice) != {"kernel", "layout"}
                or choice["kernel"] not in KERNEL_KINDS
                or choice["layout"] not in LAYOUTS
            ):
                raise bad(
                    f"layers.{name}.{regime} must be {{kernel: {' | '.join(KERNEL_KINDS)}, layout: "
                    f"{' | '.join(LAYOUTS)}}}, got {str(choice)[:80]}"
                )
