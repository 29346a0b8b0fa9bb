"""Generate a corpus of malformed checkpoint files (used by ``test_malformed.py``; not a test module itself).

Every case is built by code into a directory the caller chooses (a pytest ``tmp_path``), never into the
working tree. :data:`CASES` lists them; :func:`build` writes one and returns the path to hand to the CLI.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CASES", "MARKER", "Case", "build", "svdcompress_payload", "valid_checkpoint"]

#: Name of the file a code-running pickle would create next to the case's input. It must never appear.
MARKER = "PICKLE-RAN-CODE"


@dataclass(frozen=True)
class Case:
    """One malformed input.

    Attributes:
        id: readable test id.
        make: writes the input into the given directory and returns the path to pass on the command line.
        needs_non_root: skip when running as root (root ignores file permissions).
        runs_code: a pickle whose loading would create :data:`MARKER` beside the input.
        analyze_ok: why ``analyze`` legitimately succeeds (it reads tensors only and never builds the recorded
            architecture); empty when every command must fail.
    """

    id: str
    make: Callable[[Path], Path]
    needs_non_root: bool = False
    runs_code: bool = False
    analyze_ok: str = ""


def build(case: Case, directory: Path) -> Path:
    """Write ``case`` into ``directory`` (created if needed) and return the path to give the CLI."""
    directory.mkdir(parents=True, exist_ok=True)
    return case.make(directory)


# --------------------------------------------------------------------------------------------- helpers


class _RunsCode:
    """Unpickling this calls ``open(marker, "w")``: it creates a file, i.e. runs code from the pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def _lenet300_module() -> torch.nn.Module:
    from svdcompress.nn.zoo import build as build_arch

    torch.manual_seed(0)
    return build_arch("lenet300", svdo=True)


def _lenet300_state() -> dict[str, torch.Tensor]:
    from svdcompress.nn.zoo import build as build_arch

    torch.manual_seed(0)
    model = build_arch("lenet300", svdo=True)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def svdcompress_payload(state: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """The dict :func:`svdcompress.checkpoint.formats.save_checkpoint` writes for a lenet300, with fields overridden."""
    from svdcompress.checkpoint.formats import FORMAT_NAME, FORMAT_VERSION

    payload: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "arch": "lenet300",
        "arch_kwargs": {"svdo": True},
        "input_shape": [1, 28, 28],
        "threshold": 3.0,
        "provenance": {"note": "malformed corpus"},
        "state_dict": _lenet300_state() if state is None else state,
    }
    payload.update(overrides)
    return payload


def valid_checkpoint(path: Path) -> Path:
    """A genuine svdcompress checkpoint of an (untrained) lenet300, written by ``save_checkpoint``."""
    from svdcompress.checkpoint.formats import save_checkpoint
    from svdcompress.nn.zoo import build as build_arch

    torch.manual_seed(0)
    model = build_arch("lenet300", svdo=True)
    with torch.no_grad():  # make log alpha spread so some weights are kept and some pruned
        for name, p in model.named_parameters():
            if name.endswith("log_sigma2"):
                p.copy_(torch.empty_like(p).uniform_(-12.0, 2.0))
    return save_checkpoint(
        path, model, arch="lenet300", arch_kwargs={"svdo": True}, input_shape=(1, 28, 28), provenance={"test": True}
    )


def _write(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        p = d / name
        p.write_bytes(data)
        return p

    return make


def _torch_save(name: str, obj: Callable[[Path], Any], *, legacy: bool = False) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        p = d / name
        torch.save(obj(d), p, _use_new_zipfile_serialization=not legacy)
        return p

    return make


def _svdc(
    name: str, edit: Callable[[dict[str, torch.Tensor]], None] | None = None, **overrides: Any
) -> Callable[[Path], Path]:
    """An svdcompress-format checkpoint whose state_dict ``edit`` damages in place."""

    def obj(_d: Path) -> dict[str, Any]:
        state = _lenet300_state()
        if edit is not None:
            edit(state)
        return svdcompress_payload(state, **overrides)

    return _torch_save(name, obj)


def _plain(name: str, state: Callable[[], dict[str, Any]]) -> Callable[[Path], Path]:
    return _torch_save(name, lambda _d: state())


def _set(key: str, value: Callable[[torch.Tensor], Any]) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(sd: dict[str, Any]) -> None:
        sd[key] = value(sd[key])

    return edit


def _drop(key: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(sd: dict[str, Any]) -> None:
        del sd[key]

    return edit


def _with_nan(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t[3, 5] = float("nan")
    return t


def _with_inf(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t[-1, -1] = float("inf")
    return t


def _demo_layer(**edits: torch.Tensor) -> dict[str, torch.Tensor]:
    """A plain state_dict in the authors' demo convention (W, log_sigma, bias), with entries replaced."""
    g = torch.Generator().manual_seed(1)
    sd = {
        "fc.W": torch.randn(8, 16, generator=g),
        "fc.log_sigma": torch.randn(8, 16, generator=g) - 5,
        "fc.bias": torch.zeros(1, 8),
    }
    sd.update(edits)
    return sd


def _truncated_copy(name: str, source: Callable[[Path], Path], keep: Callable[[int], int]) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        full = source(d)
        data = full.read_bytes()
        full.unlink()
        p = d / name
        p.write_bytes(data[: keep(len(data))])
        return p

    return make


def _zip(name: str, members: dict[str, bytes]) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        p = d / name
        with zipfile.ZipFile(p, "w") as z:
            for member, data in members.items():
                z.writestr(member, data)
        return p

    return make


def _torch_zip_without_storage(d: Path) -> Path:
    """A torch zip checkpoint with its tensor data records removed (data.pkl still refers to them)."""
    src = d / "full.pt"
    torch.save({"fc1.weight": torch.ones(4, 4), "fc1.log_sigma2": torch.zeros(4, 4)}, src)
    p = d / "missing_storage.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(p, "w") as zout:
        for info in zin.infolist():
            if "/data/" not in info.filename:
                zout.writestr(info, zin.read(info.filename))
    src.unlink()
    return p


def _safetensors_bytes(header: dict[str, Any], data: bytes, header_len: int | None = None) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h) if header_len is None else header_len) + h + data


def _safetensors_lying_offsets() -> bytes:
    # Claims 8×16 float32 (512 bytes) at offsets 0..512 and 512..1024 but only 64 bytes follow.
    header = {
        "fc.weight": {"dtype": "F32", "shape": [8, 16], "data_offsets": [0, 512]},
        "fc.log_sigma2": {"dtype": "F32", "shape": [8, 16], "data_offsets": [512, 1024]},
    }
    return _safetensors_bytes(header, b"\0" * 64)


def _safetensors_shape_vs_offsets() -> bytes:
    # Offsets fit the file but do not match the shape (8×16 float32 needs 512 bytes, not 16).
    header = {
        "fc.weight": {"dtype": "F32", "shape": [8, 16], "data_offsets": [0, 16]},
        "fc.log_sigma2": {"dtype": "F32", "shape": [8, 16], "data_offsets": [16, 32]},
    }
    return _safetensors_bytes(header, b"\0" * 32)


def _safetensors_nan(d: Path) -> Path:
    from safetensors.torch import save_file

    p = d / "nan.safetensors"
    sd = {"fc.weight": torch.randn(8, 16), "fc.log_sigma2": torch.randn(8, 16)}
    sd["fc.weight"][0, 0] = float("nan")
    save_file(sd, str(p))
    return p


def _npy_object_list(name: str, arrays: list[Any]) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        p = d / name
        arr = np.empty(len(arrays), dtype=object)
        for i, a in enumerate(arrays):
            arr[i] = a
        np.save(p, arr, allow_pickle=True)
        return p

    return make


def _npy_runs_code(d: Path) -> Path:
    p = d / "runs_code.npy"
    arr = np.empty(2, dtype=object)
    arr[0] = np.zeros((4, 3), dtype=np.float32)
    arr[1] = _RunsCode(d / MARKER)
    np.save(p, arr, allow_pickle=True)
    return p


def _npz_runs_code(d: Path) -> Path:
    p = d / "runs_code.npz"
    arr = np.empty(1, dtype=object)
    arr[0] = _RunsCode(d / MARKER)
    np.savez(p, arr)
    return p


def _npy_huge_header(d: Path) -> Path:
    """A .npy whose header claims 10^12 float64 (8 TB) but holds 80 bytes."""
    p = d / "huge_header.npy"
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    p.write_bytes(buf.getvalue() + b"\0" * 80)
    return p


def _npz_huge_header(d: Path) -> Path:
    """An .npz whose member's header claims 10^12 float64."""
    p = d / "huge_header.npz"
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("arr_0.npy", buf.getvalue() + b"\0" * 80)
    return p


def _npy_truncated(d: Path) -> Path:
    p = d / "truncated.npy"
    np.save(p, np.ones((100, 50), dtype=np.float32))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def _lasagne(*shapes: tuple[int, ...]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def _npz_named(d: Path) -> Path:
    p = d / "named.npz"
    w, b, ls2 = _lasagne((16, 8), (8,), (16, 8))
    np.savez(p, W=w, b=b, ls2=ls2)
    return p


def _directory(d: Path) -> Path:
    p = d / "ckpt.pt"
    p.mkdir()
    (p / "data.pkl").write_bytes(b"not inside")
    return p


def _unreadable(d: Path) -> Path:
    p = valid_checkpoint(d / "unreadable.pt")
    p.chmod(0)
    return p


def _random_bytes(prefix: bytes = b"") -> bytes:
    rng = np.random.default_rng(1234)
    data = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    if not prefix:
        data = b"\x07" + data[1:]  # keep the seed's bytes but avoid starting like a known magic number
    return prefix + data


def _linear_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        k: v.detach()
        for k, v in torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        .state_dict()
        .items()
    }


# ------------------------------------------------------------------------------------------------ cases

CASES: tuple[Case, ...] = (
    # --- not a checkpoint at all
    Case("empty_file", _write("empty.pt", b"")),
    Case("random_bytes", _write("random.pt", _random_bytes())),
    Case("random_after_pickle_magic", _write("garbage.pt", _random_bytes(b"\x80\x02"))),
    Case("text_file", _write("notes.pt", b"these are not the weights you are looking for\n" * 20)),
    Case("json_named_pt", _write("config.pt", json.dumps({"lr": 0.1, "layers": [784, 300, 100]}).encode())),
    Case("zip_not_torch", _zip("archive.pt", {"readme.txt": b"hello", "weights.bin": b"\0" * 64})),
    Case("zip_empty", _zip("empty_zip.pt", {})),
    Case("directory", _directory),
    Case("missing_path", lambda d: d / "does_not_exist.pt"),
    Case("no_read_permission", _unreadable, needs_non_root=True),
    # --- truncated / corrupt torch files
    Case(
        "truncated_svdcompress_half",
        _truncated_copy("trunc_half.pt", lambda d: valid_checkpoint(d / "v.pt"), lambda n: n // 2),
    ),
    Case(
        "truncated_svdcompress_tail",
        _truncated_copy("trunc_tail.pt", lambda d: valid_checkpoint(d / "v.pt"), lambda n: n - 200),
    ),
    Case(
        "truncated_svdcompress_head",
        _truncated_copy("trunc_head.pt", lambda d: valid_checkpoint(d / "v.pt"), lambda n: 40),
    ),
    Case(
        "truncated_legacy_pickle",
        _truncated_copy(
            "legacy_trunc.pt", _torch_save("legacy.pt", lambda _d: _lenet300_state(), legacy=True), lambda n: n // 2
        ),
    ),
    Case("torch_zip_missing_storage", _torch_zip_without_storage),
    # --- pickles that would run code or need trust
    Case(
        "pickle_runs_code_raw",
        lambda d: _write("evil.pt", pickle.dumps(_RunsCode(d / MARKER), protocol=2))(d),
        runs_code=True,
    ),
    Case(
        "pickle_runs_code_torch_zip",
        _torch_save("evil_zip.pt", lambda d: {"state_dict": _RunsCode(d / MARKER)}),
        runs_code=True,
    ),
    Case(
        "pickle_runs_code_legacy",
        _torch_save("evil_legacy.pt", lambda d: {"net": _RunsCode(d / MARKER)}, legacy=True),
        runs_code=True,
    ),
    Case("npy_non_numpy_pickle", _npy_runs_code, runs_code=True),
    Case("npz_object_pickle", _npz_runs_code, runs_code=True),
    Case("whole_module_pickle", _torch_save("module.pt", lambda _d: _lenet300_module())),
    # --- unusable tensors in a named state_dict (no architecture recorded)
    Case("plain_nan_theta", _plain("plain_nan.pt", lambda: _demo_layer(**{"fc.W": _with_nan(torch.ones(8, 16))}))),
    Case(
        "plain_inf_log_sigma",
        _plain("plain_inf.pt", lambda: _demo_layer(**{"fc.log_sigma": _with_inf(torch.zeros(8, 16))})),
    ),
    Case(
        "plain_integer_tensors",
        _plain(
            "plain_int.pt",
            lambda: _demo_layer(
                **{"fc.W": torch.ones(8, 16, dtype=torch.int64), "fc.log_sigma": torch.zeros(8, 16, dtype=torch.int64)}
            ),
        ),
    ),
    Case(
        "plain_scalar_theta",
        _plain(
            "plain_scalar.pt", lambda: _demo_layer(**{"fc.W": torch.tensor(1.0), "fc.log_sigma": torch.tensor(-3.0)})
        ),
    ),
    Case(
        "plain_theta_5d",
        _plain(
            "plain_5d.pt",
            lambda: _demo_layer(**{"fc.W": torch.ones(2, 2, 2, 2, 2), "fc.log_sigma": torch.ones(2, 2, 2, 2, 2)}),
        ),
    ),
    Case("plain_shape_mismatch", _plain("plain_shapes.pt", lambda: _demo_layer(**{"fc.log_sigma": torch.ones(16, 8)}))),
    Case("plain_bias_wrong_size", _plain("plain_bias.pt", lambda: _demo_layer(**{"fc.bias": torch.zeros(7)}))),
    # --- unusable tensors in an svdcompress checkpoint (architecture recorded: the model would build)
    Case("svdc_nan_theta", _svdc("svdc_nan.pt", _set("fc1.weight", _with_nan))),
    Case("svdc_inf_log_sigma2", _svdc("svdc_inf.pt", _set("fc2.log_sigma2", _with_inf))),
    Case("svdc_nan_bias", _svdc("svdc_nan_bias.pt", _set("fc3.bias", lambda t: torch.full_like(t, float("nan"))))),
    Case("svdc_integer_tensors", _svdc("svdc_int.pt", _set("fc1.weight", lambda t: t.round().to(torch.int32)))),
    Case("svdc_bool_log_sigma2", _svdc("svdc_bool.pt", _set("fc3.log_sigma2", lambda t: t > 0))),
    Case("svdc_scalar_theta", _svdc("svdc_scalar.pt", _set("fc2.weight", lambda t: torch.tensor(0.5)))),
    Case("svdc_shape_mismatch", _svdc("svdc_shapes.pt", _set("fc2.log_sigma2", lambda t: t.t().contiguous()))),
    Case("svdc_bias_wrong_size", _svdc("svdc_bias.pt", _set("fc1.bias", lambda t: torch.zeros(299)))),
    Case(
        "svdc_missing_key",
        _svdc("svdc_missing.pt", _drop("fc3.log_sigma2")),
        analyze_ok="fc3 without log_sigma2 reads as a plain layer; fc1 and fc2 are still analysed",
    ),
    Case("svdc_wrong_shape_for_arch", _svdc("svdc_arch_shape.pt", _set("fc1.weight", lambda t: torch.zeros(300, 700)))),
    Case("svdc_future_version", _svdc("svdc_future.pt", format_version=99)),
    Case("svdc_version_not_int", _svdc("svdc_version_str.pt", format_version="2.0")),
    Case(
        "svdc_unknown_arch",
        _svdc("svdc_unknown_arch.pt", arch="resnet9000"),
        analyze_ok="analyze needs the tensors, not the architecture",
    ),
    Case(
        "svdc_bad_arch_kwargs",
        _svdc("svdc_arch_kwargs.pt", arch_kwargs={"hidden": "lots"}),
        analyze_ok="analyze needs the tensors, not the architecture",
    ),
    Case("svdc_arch_not_str", _svdc("svdc_arch_type.pt", arch=["lenet300"])),
    Case("svdc_bad_input_shape", _svdc("svdc_input_shape.pt", input_shape=["one", 28, 28])),
    Case("svdc_negative_input_shape", _svdc("svdc_neg_shape.pt", input_shape=[-1, 28, 28])),
    Case("svdc_no_state_dict", _svdc("svdc_empty_state.pt", state_dict={})),
    # --- readable, but not SVDO
    Case("plain_state_dict", _plain("plain.pt", _linear_state)),
    Case(
        "lookalike_bayesian_compression",
        _plain(
            "bc.pt",
            lambda: {
                "fc1.weight": torch.randn(8, 16),
                "fc1.z_mu": torch.randn(16),
                "fc1.z_logvar": torch.randn(16),
                "fc1.log_sigma2": torch.randn(8, 16),
            },
        ),
    ),
    Case(
        "lookalike_l0_log_alpha",
        _plain(
            "l0.pt",
            lambda: {"fc1.weight": torch.randn(8, 16), "fc1.log_alpha": torch.randn(16), "fc1.bias": torch.zeros(8)},
        ),
    ),
    Case(
        "lookalike_sbp_mu_log_sigma",
        _plain(
            "sbp.pt",
            lambda: {"fc1.weight": torch.randn(8, 16), "fc1.mu": torch.randn(8), "fc1.log_sigma": torch.randn(8)},
        ),
    ),
    Case("only_non_tensor_values", _plain("scalars.pt", lambda: {"epoch": 3, "lr": 0.1, "name": "run-7"})),
    Case("nested_dict_no_tensors", _plain("nested.pt", lambda: {"net": {"cfg": {"widths": [1, 2]}}, "epoch": 1})),
    Case("tensor_list_not_state_dict", _plain("list.pt", lambda: [torch.ones(3), torch.ones(3)])),
    # --- safetensors
    Case("safetensors_lying_offsets", _write("lie.safetensors", _safetensors_lying_offsets())),
    Case("safetensors_shape_vs_offsets", _write("shape.safetensors", _safetensors_shape_vs_offsets())),
    Case(
        "safetensors_header_len_too_big",
        _write(
            "long_header.safetensors",
            _safetensors_bytes(
                {"fc.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, header_len=1 << 40
            ),
        ),
    ),
    Case("safetensors_bad_json", _write("bad_json.safetensors", struct.pack("<Q", 12) + b"{not json!!}")),
    Case("safetensors_nan", _safetensors_nan),
    # --- Lasagne .npy / .npz lists
    Case("lasagne_odd_length", _npy_object_list("odd.npy", _lasagne((16, 8), (8,), (16, 8), (8, 4)))),
    Case("lasagne_ragged_pair", _npy_object_list("ragged.npy", _lasagne((16, 8), (8,)))),
    Case("lasagne_ls2_wrong_shape", _npy_object_list("ls2_shape.npy", _lasagne((16, 8), (8,), (8, 16)))),
    Case("lasagne_entry_not_array", _npy_object_list("ints.npy", [1, 2, 3])),
    Case("npy_single_array", lambda d: (np.save(d / "single.npy", np.ones((4, 4), np.float32)), d / "single.npy")[1]),
    Case("npy_truncated", _npy_truncated),
    Case("npy_huge_header", _npy_huge_header),
    Case("npz_huge_header", _npz_huge_header),
    Case("npz_non_positional_names", _npz_named),
)


def _check_unique() -> None:
    ids = [c.id for c in CASES]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise RuntimeError(f"duplicate case ids: {sorted(dupes)}")


_check_unique()

if __name__ == "__main__":  # pragma: no cover - manual inspection: python tests/malformed.py DIR
    import sys

    root = Path(sys.argv[1])
    for c in CASES:
        print(c.id, build(c, root / c.id), sep="\t")
    os.sync()
