"""Command line: ``svdcompress analyze | prune | export | bench``. Thin wrappers over the Python API.

Exit codes: 0 success; 1 bad input or a failed check (one line on stderr, no traceback);
2 bad usage (unknown option, bad value).
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .errors import InvalidInputError, SvdcompressError

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


# Library messages name Python parameters; on the command line the same things are flags.
_FLAGS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bmodel="), "--model "),
    (re.compile(r"\btrust_pickle=True\b"), "--trust-pickle"),
    (re.compile(r"\bforce=True\b"), "--force"),
    (re.compile(r"\bgather_inputs=True\b"), "--gather-inputs"),
    (re.compile(r"\binput_shape\b"), "--input-shape"),
    (re.compile(r"\bthe output\b|\banother output path\b"), "another -o path"),
)


def _cli_message(e: BaseException) -> str:
    """The library's message in the CLI's words (flags, not parameters), on one line."""
    text = " ".join(str(e).split())
    for pattern, flag in _FLAGS:
        text = pattern.sub(flag, text)
    return text


def _friendly(fn: F) -> F:
    """Turn library errors into one-line click errors (exit 1) instead of tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SvdcompressError as e:
            raise click.ClickException(_cli_message(e)) from None
        except MemoryError:
            raise click.ClickException("out of memory; try a smaller batch or checkpoint") from None
        except OSError as e:  # disk full, permission denied... while writing an output: one line, not a traceback
            where = f"{e.filename}: " if e.filename else ""
            raise click.ClickException(f"{where}{e.strerror or e}") from None

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature


_CKPT = click.Path(path_type=Path, readable=False)  # existence and permissions: the loader checks them, naming the fix


def _bundled(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    """``bundled:lenet5`` names a checkpoint shipped with the package."""
    text = str(value)
    if not text.startswith("bundled:"):
        return value
    from .models import BUNDLED, bundled_checkpoint

    name = text.split(":", 1)[1]
    if name not in BUNDLED:
        raise click.BadParameter(f"no bundled checkpoint {name!r}; choose bundled:{' or bundled:'.join(BUNDLED)}")
    try:
        return bundled_checkpoint(name)
    except SvdcompressError as e:
        raise click.ClickException(_cli_message(e)) from None


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number; log α thresholds are finite, e.g. 3")
    return value


_threshold_opt = click.option(
    "--threshold",
    type=float,
    default=3.0,
    show_default=True,
    callback=_finite,
    help="log α above which a weight is noise and set to zero.",
)
_trust_opt = click.option(
    "--trust-pickle",
    is_flag=True,
    help="Allow unpickling arbitrary objects. Unpickling runs code: only for files you trust.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="svdcompress")
def main() -> None:
    """Turn Sparse Variational Dropout checkpoints into small, fast CPU artifacts."""


@main.command()
@click.argument("ckpt", type=_CKPT, callback=_bundled)
@_threshold_opt
@click.option("--json", "as_json", is_flag=True, help="Write the report as JSON to stdout.")
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), help="Write a PNG of log α histograms.")
@click.option("--force", is_flag=True, help="Overwrite an existing --plot file.")
@_trust_opt
@_friendly
def analyze(ckpt: Path, threshold: float, as_json: bool, plot: Path | None, force: bool, trust_pickle: bool) -> None:
    """Report per layer how many weights log α < THRESHOLD keeps, and which units are dead."""
    from ._io import check_output_path
    from .analysis import analyze as _analyze

    if plot is not None:
        check_output_path(plot, force=force, inputs=(ckpt,))
    report = _analyze(ckpt, threshold, trust_pickle=trust_pickle)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.format_table())
    if plot is not None:
        report.plot(plot)
        click.echo(f"wrote {plot}", err=as_json)


_model_opt = click.option(
    "--model",
    "model_spec",
    metavar="PKG.MODULE:FACTORY",
    help="Import path of a function returning the nn.Module the checkpoint belongs to. "
    "Not needed for checkpoints written by svdcompress.",
)


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    """A comma-separated list of positive integers (``--batch-sizes 1,16,256``, ``--input-shape 1,28,28``)."""
    if value is None:
        return None
    from ._inputs import parse_int_list

    try:
        return parse_int_list(value, "", example="1,28,28" if param.name == "input_shape" else "1,16,256")
    except InvalidInputError as e:
        raise click.BadParameter(str(e)) from None


_shape_opt = click.option(
    "--input-shape",
    metavar="C,H,W",
    callback=_int_list,
    help="Per-example input shape, if the checkpoint does not record it (e.g. 1,28,28).",
)
_force_opt = click.option("--force", is_flag=True, help="Overwrite an existing output file.")


def _resolve(ckpt: Path, model_spec: str | None, trust_pickle: bool, input_shape: tuple[int, ...] | None) -> Any:
    from .models import load_model

    resolved = load_model(ckpt, model=model_spec, trust_pickle=trust_pickle, input_shape=input_shape)
    if resolved.input_shape is None:
        raise click.UsageError(
            f"{ckpt}: the checkpoint does not record its input shape; pass --input-shape, e.g. --input-shape 1,28,28"
        )
    return resolved


def _load_inputs(spec: str | None, limit: int | None = None) -> tuple[Any, Any] | None:
    """``fashion-mnist`` / ``mnist5k`` (test split) or a .npy file of inputs (no labels)."""
    if spec is None:
        return None
    import numpy as np
    import torch

    from .datasets import load_dataset

    if spec.endswith(".npy"):
        try:
            x = torch.from_numpy(np.load(spec, allow_pickle=False)).float()
        except (OSError, ValueError, TypeError) as e:  # missing, not .npy, object or non-numeric arrays
            raise InvalidInputError(
                f"--data {spec}: cannot read inputs ({e}); give a float .npy array (N, ...)"
            ) from None
        if x.dim() < 2 or x.shape[0] == 0:
            raise InvalidInputError(f"--data {spec}: expected a batch of inputs (N, ...), got shape {tuple(x.shape)}")
        return (x[:limit] if limit else x), None
    x, y = load_dataset(spec, "test")
    return (x[:limit], y[:limit]) if limit else (x, y)


@main.command()
@click.argument("ckpt", type=_CKPT, callback=_bundled)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Where to write the pruned model (a torch.export program, .pt2).",
)
@_model_opt
@_threshold_opt
@_shape_opt
@click.option("--gather-inputs", is_flag=True, help="Drop input features no weight reads, behind an index gather.")
@click.option("--data", help="Verify on this data instead of random inputs: fashion-mnist, mnist5k or FILE.npy.")
@click.option("--json", "as_json", is_flag=True, help="Write the report as JSON to stdout.")
@_trust_opt
@_force_opt
@_friendly
def prune(
    ckpt: Path,
    output: Path,
    model_spec: str | None,
    threshold: float,
    input_shape: tuple[int, ...] | None,
    gather_inputs: bool,
    data: str | None,
    as_json: bool,
    trust_pickle: bool,
    force: bool,
) -> None:
    """Zero the noise, remove dead neurons and filters, verify, and save a model that loads without source."""
    from ._io import check_output_path
    from .pt2 import save_pruned
    from .structured import prune as _prune

    check_output_path(output, force=force, inputs=(ckpt,))
    resolved = _resolve(ckpt, model_spec, trust_pickle, input_shape)
    batch = _load_inputs(data, limit=1000)
    result = _prune(
        resolved.module,
        threshold=threshold,
        gather_inputs=gather_inputs,
        input_shape=resolved.input_shape,
        example_inputs=None if batch is None else batch[0],
    )
    save_pruned(result.model, output, input_shape=resolved.input_shape)
    if as_json:
        click.echo(json.dumps({**result.report.to_dict(), "output": str(output)}, indent=2))
    else:
        click.echo(result.report.format_table())
        click.echo(f"wrote {output} ({output.stat().st_size / 1024:,.1f} KB)")


@main.command()
@click.argument("ckpt", type=_CKPT, callback=_bundled)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "onnx-sparse", "csr"]),
    default="onnx",
    show_default=True,
    help="onnx: compact dense ONNX; onnx-sparse: sparse initializers (small file, "
    "ORT densifies at load); csr: CSR bundle for svdcompress.runtime.",
)
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True)
@_model_opt
@_threshold_opt
@_shape_opt
@click.option("--opset", type=click.IntRange(13, 21), default=17, show_default=True, help="ONNX opset.")
@click.option(
    "--dtype",
    type=click.Choice(["fp32", "fp16"]),
    default="fp32",
    show_default=True,
    help="Stored weight precision. fp16 halves the file; arithmetic stays fp32.",
)
@_trust_opt
@_force_opt
@_friendly
def export(
    ckpt: Path,
    fmt: str,
    output: Path,
    model_spec: str | None,
    threshold: float,
    input_shape: tuple[int, ...] | None,
    opset: int,
    dtype: str,
    trust_pickle: bool,
    force: bool,
) -> None:
    """Prune and export a deployable artifact, verified against the masked model."""
    from .export import export_model

    res = export_model(
        ckpt,
        fmt,
        output,
        input_shape=input_shape,
        model=model_spec,
        trust_pickle=trust_pickle,
        threshold=threshold,
        dtype=dtype,
        opset=opset,
        force=force,
    )
    click.echo(res.summary())
    compression = (
        "" if res.parameter_compression is None else f"; parameter compression {res.parameter_compression:.1f}×"
    )
    click.echo(
        f"size: {res.file_bytes:,} B vs dense fp32 {res.dense_fp32_bytes:,} B = {res.bytes_ratio:.1f}× "
        f"smaller{compression}"
    )


@main.command()
@click.argument("ckpt", type=_CKPT, callback=_bundled)
@_model_opt
@_threshold_opt
@_shape_opt
@click.option("--batch-sizes", callback=_int_list, default="1,16,256", show_default=True)
@click.option("--threads", callback=_int_list, default="1", show_default=True)
@click.option(
    "--repeats",
    type=click.IntRange(3, 10000),
    default=30,
    show_default=True,
    help="Timed samples per contender and setting.",
)
@click.option(
    "--contenders",
    help="Comma-separated subset of: "
    + ", ".join(
        (
            "torch-dense",
            "ort-dense",
            "openvino-dense",
            "torch-masked",
            "torch-pruned",
            "ort-compact",
            "openvino-compact",
            "ort-sparse",
            "csr-runtime",
        )
    )
    + " (openvino-* need the peers extra).",
)
@click.option("--data", help="Report accuracy on: fashion-mnist, mnist5k (test split).")
@click.option("--json", "json_out", type=click.Path(path_type=Path, dir_okay=False), help="Write records as JSON.")
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), help="Write latency vs batch size PNG.")
@_trust_opt
@_force_opt
@_friendly
def bench(
    ckpt: Path,
    model_spec: str | None,
    threshold: float,
    input_shape: tuple[int, ...] | None,
    batch_sizes: tuple[int, ...],
    threads: tuple[int, ...],
    repeats: int,
    contenders: str | None,
    data: str | None,
    json_out: Path | None,
    plot: Path | None,
    trust_pickle: bool,
    force: bool,
) -> None:
    """Time dense, masked, pruned, ONNX and CSR forms of the model side by side."""
    from ._io import check_output_path
    from .bench import CONTENDERS, BenchConfig
    from .bench import bench as _bench

    for out in (json_out, plot):
        if out is not None:
            check_output_path(out, force=force, inputs=(ckpt,))
    chosen: tuple[str, ...] = CONTENDERS
    if contenders:
        chosen = tuple(c.strip() for c in contenders.split(",") if c.strip())
        bad = [c for c in chosen if c not in CONTENDERS]
        if bad:
            raise click.BadParameter(
                f"unknown contender(s) {', '.join(bad)}; choose from {', '.join(CONTENDERS)}", param_hint="--contenders"
            )
    resolved = _resolve(ckpt, model_spec, trust_pickle, input_shape)
    loaded = _load_inputs(data)
    labelled = (loaded[0], loaded[1]) if loaded is not None and loaded[1] is not None else None
    cfg = BenchConfig(batch_sizes=batch_sizes, threads=threads, repeats=repeats, contenders=chosen, threshold=threshold)
    report = _bench(resolved.module, input_shape=resolved.input_shape, config=cfg, data=labelled, name=Path(ckpt).stem)
    click.echo(report.markdown())
    if json_out is not None:
        report.write_json(json_out)
        click.echo(f"wrote {json_out}")
    if plot is not None:
        report.plot(plot)
        click.echo(f"wrote {plot}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
