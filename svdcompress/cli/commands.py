"""Command line: ``svdcompress analyze | tune | prune | export | bench``. Thin wrappers over the Python API.

Exit codes: 0 success; 1 bad input or a failed check (one line on stderr, no traceback);
2 bad usage (unknown option, bad value).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from ..benchmark.config import CONTENDERS  # names only: no torch at import
from ..errors import InputShapeError, InvalidInputError, MissingDependencyError, SvdcompressError

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


# Library messages name Python parameters (``data=``, ``input_shape``, ``trust_pickle=True``); on the command line
# the same things are the command's flags. The table comes from the command's own options: an option's Python
# name is the library parameter's, except where the command spells it otherwise (below).
_PARAM_OF_OPTION = {"model_spec": "model", "fmt": "format"}


def _flags() -> dict[str, str]:
    """Library parameter name -> the current command's flag for it (``{"data": "--data", ...}``)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return {}
    out: dict[str, str] = {}
    for p in ctx.command.params:
        if isinstance(p, click.Option) and p.name:
            out[_PARAM_OF_OPTION.get(p.name, p.name)] = max(p.opts, key=len)
    return out


def _cli_message(e: BaseException, output_flag: str = "-o") -> str:
    """The library's message in the CLI's words (the command's flags, not Python parameters), on one line.

    ``output_flag`` is the option that named the file being written (``-o``, ``--plot``, ``--json-out``).
    """
    text = " ".join(str(e).split())
    flags = _flags()
    for name, flag in flags.items():
        text = re.sub(rf"\b{name}=True\b", flag, text)
        text = re.sub(rf"\b{name}='auto'", f"{flag} auto", text)
        text = re.sub(rf"\b{name}=(?=[\s,;)]|$)", flag, text)  # "pass data= (...)": the flag alone
        text = re.sub(rf"\b{name}=", f"{flag} ", text)
        if "_" in name:  # a bare multi-word parameter name cannot be an ordinary word of the sentence
            text = re.sub(rf"\b{name}\b", flag, text)
    if "data" in flags:
        text = re.sub(r"\bdata spec\b", "--data", text)
    return re.sub(r"\banother output path\b|\bthe output\b", f"another {output_flag} path", text)


def _friendly(fn: F) -> F:
    """Turn library errors into one-line click errors (exit 1) instead of tracebacks.

    An input shape that does not run through the model is a bad ``--input-shape`` value: exit 2, like a
    missing one; so is an ``--input-dtype`` the model cannot read.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InputShapeError as e:
            raise click.BadParameter(_cli_message(e), param_hint="'--input-shape'") from None
        except InvalidInputError as e:
            if e.param == "input_shape":  # none known: a bad usage, like a missing --input-shape
                raise click.UsageError(_cli_message(e)) from None
            if e.param == "input_dtype":  # int64 ids for a model without an embedding: a bad --input-dtype
                raise click.BadParameter(_cli_message(e), param_hint="'--input-dtype'") from None
            raise click.ClickException(_cli_message(e)) from None
        except SvdcompressError as e:
            raise click.ClickException(_cli_message(e)) from None
        except MemoryError:
            raise click.ClickException("out of memory; try a smaller batch or checkpoint") from None
        except OSError as e:  # disk full, permission denied... while writing an output: one line, not a traceback
            where = f"{e.filename}: " if e.filename else ""
            raise click.ClickException(f"{where}{e.strerror or e}") from None

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature


def _check_out(path: Path, flag: str, *, force: bool, ckpt: Path) -> None:
    """Refuse an output path before any work, naming the option it came from."""
    from .._io import check_output_path

    try:
        check_output_path(path, force=force, inputs=(ckpt,))
    except SvdcompressError as e:
        raise click.ClickException(_cli_message(e, flag)) from None


def _write_or_explain(flag: str, write: Callable[[], object]) -> None:
    """Run ``write`` (the atomic write of a --plot / --json-out file); its errors name ``flag``."""
    try:
        write()
    except SvdcompressError as e:
        raise click.ClickException(_cli_message(e, flag)) from None


_CKPT = click.Path(path_type=Path, readable=False)  # existence and permissions: the loader checks them, naming the fix


_CKPT_NAME = "svdcompress.ckpt_name"  # ctx.meta key: CKPT as the user wrote it (bundled:lenet5, not a path)


def _bundled(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    """``bundled:lenet5`` names a checkpoint shipped with the package."""
    text = str(value)
    ctx.meta[_CKPT_NAME] = text
    if not text.startswith("bundled:"):
        return value
    from ..checkpoint.bundled import BUNDLED, bundled_checkpoint

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


class _ThresholdOrAuto(click.ParamType[float | str, Any]):
    """A finite log α threshold, or ``auto``: chosen on --data as ``svdcompress tune`` chooses it."""

    name = "float|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float | str:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number or 'auto'", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number; log α thresholds are finite, e.g. 3, or auto", param, ctx)
        return number


_threshold_auto_opt = click.option(
    "--threshold",
    type=_ThresholdOrAuto(),
    default=3.0,
    show_default=True,
    help="log α above which a weight is noise and set to zero; auto: choose it on --data (never a test split) "
    "as `svdcompress tune` does, and record it and the data in the output.",
)


def _max_drop_value(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and 0 <= value <= 100):
        raise click.BadParameter(f"{value} is not between 0 and 100 accuracy points (e.g. 0.5)")
    return value


def _max_drop_opt(default: float | None) -> Callable[[F], F]:
    return click.option(
        "--max-drop",
        type=float,
        default=default,
        show_default=default is not None,
        metavar="POINTS",
        callback=_max_drop_value,
        help="Accuracy points (percent) the chosen threshold may lose against the unthresholded model on the "
        "same data" + ("." if default is not None else "; with --threshold auto (default 0.5)."),
    )


def _selection_spec(data: str | None, threshold: float | str, max_drop: float | None) -> Any:
    """Before any work: ``--threshold auto`` needs ``--data`` that may choose (not a test split); --max-drop
    needs ``auto``. Returns the parsed spec (None without ``auto``)."""
    from ..tuning.dataspec import check_selectable

    if threshold != "auto":
        if max_drop is not None:
            raise click.UsageError("--max-drop is used with --threshold auto; give --threshold auto --data SPEC")
        return None
    if data is None:
        raise click.UsageError(
            "--threshold auto chooses the threshold on held-out data: add --data SPEC, e.g. --data fashion-mnist:val "
            "(or mnist5k:val, or FILE.npz with x and y); test splits are refused"
        )
    try:
        return check_selectable(data)
    except InvalidInputError as e:
        raise click.BadParameter(str(e), param_hint="'--data'") from None


def _prepare(
    ckpt: Path,
    *,
    model_spec: str | None,
    trust_pickle: bool,
    input_shape: tuple[int, ...] | None,
    threshold: float | str,
    data: str | None,
    max_drop: float | None,
    convention: str | None,
) -> Any:
    """:func:`svdcompress.pipeline.prepare` for a command: the checkpoint resolved, the threshold a number (with
    --threshold auto, chosen on --data and reported on stderr)."""
    from ..pipeline import DEFAULT_MAX_DROP, prepare

    prepared = prepare(
        ckpt,
        threshold=threshold,
        data=data if threshold == "auto" else None,
        max_drop=DEFAULT_MAX_DROP if max_drop is None else max_drop,
        input_shape=input_shape,
        model=model_spec,
        trust_pickle=trust_pickle,
        convention=convention,
    )
    if prepared.tuned is not None:
        _report_pick(prepared.tuned.selection())
    return prepared


def _report_pick(selection: dict[str, Any]) -> None:
    """One line on stderr: what --threshold auto chose, on which data (``TuneResult.selection()``), and warnings."""
    s = selection
    compression = "inf" if s["compression"] is None else f"{s['compression']:,.1f}×"
    click.echo(
        f"threshold auto: {s['threshold']:.6g} ({compression} compression, {s['accuracy']:.2f}% on {s['data']}, "
        f"reference {s['reference_accuracy']:.2f}%, allowed drop {s['max_drop']:g} points; "
        f"best of {s['candidates']} candidates, as `svdcompress tune` shows them)",
        err=True,
    )
    for w in s.get("warnings", []):
        click.echo(f"warning: {_cli_message(Exception(w))}", err=True)


class _RoundTo(click.ParamType[int | str, Any]):
    """A channel multiple from 1 to 1024, or ``auto`` (where the command allows it)."""

    name = "N|auto"

    def __init__(self, allow_auto: bool) -> None:
        self.allow_auto = allow_auto

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if self.allow_auto and isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a whole number{' or auto' if self.allow_auto else ''}", param, ctx)
        if not 1 <= number <= 1024:
            self.fail(f"{number} is not between 1 and 1024 channels (e.g. 8)", param, ctx)
        return number


_trust_opt = click.option(
    "--trust-pickle",
    is_flag=True,
    help="Allow unpickling arbitrary objects. Unpickling runs code: only for files you trust.",
)


def _file_out(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """An artifact path: a file, never ``-`` (these outputs are binary; stdout would get raw bytes)."""
    if value is not None and str(value) == "-":
        raise click.BadParameter("'-' (stdout) is for --json-out; give a file path for this output")
    return value


def _plot_path(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """--plot: matplotlib must be installed, checked before any work (the suffix is checked with the path)."""
    value = _file_out(ctx, param, value)
    if value is None:
        return None
    from .._plot import require_matplotlib

    try:
        require_matplotlib()
    except MissingDependencyError as e:
        raise click.ClickException(f"--plot {value}: {e}") from None
    return value


def _check_plot(plot: Path | None, *, force: bool, ckpt: Path) -> None:
    """The --plot path as an output (not the input, not existing without --force), then its image suffix."""
    if plot is None:
        return
    from .._plot import image_format

    _check_out(plot, "--plot", force=force, ckpt=ckpt)
    try:
        image_format(plot)
    except InvalidInputError as e:
        raise click.BadParameter(str(e), param_hint="'--plot'") from None


_json_opts = (
    click.option("--json", "as_json", is_flag=True, help="Print the report as JSON to stdout (and nothing else)."),
    click.option(
        "--json-out",
        type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
        metavar="FILE",
        help="Write the report as JSON to FILE ('-' for stdout).",
    ),
)


def _json_options(fn: F) -> F:
    for opt in reversed(_json_opts):
        fn = opt(fn)
    return fn


def _emit(text: str, *, as_json: bool, json_out: Path | None) -> None:
    """Human output: to stdout, unless stdout carries JSON (then stderr)."""
    click.echo(text, err=as_json or (json_out is not None and str(json_out) == "-"))


def _emit_json(obj: Any, *, as_json: bool, json_out: Path | None) -> None:
    from .._io import atomic_path

    text = json.dumps(obj, indent=2)
    if as_json or (json_out is not None and str(json_out) == "-"):
        click.echo(text)
    if json_out is not None and str(json_out) != "-":

        def write() -> None:
            with atomic_path(json_out) as tmp:
                tmp.write_text(text + "\n")

        _write_or_explain("--json-out", write)
        click.echo(f"wrote {json_out}", err=True)


def _check_json_out(json_out: Path | None, *, force: bool, ckpt: Path) -> None:
    if json_out is not None and str(json_out) != "-":
        _check_out(json_out, "--json-out", force=force, ckpt=ckpt)


def _display_name(ckpt: Path) -> str:
    """CKPT as the user wrote it: ``bundled:lenet5`` rather than the installed package path."""
    return str(click.get_current_context().meta.get(_CKPT_NAME, ckpt))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="svdcompress")
def main() -> None:
    """Turn Sparse Variational Dropout checkpoints into small, fast CPU artifacts."""
    # The library's notes (the CSR runtime compiling on first use, a skipped contender) are log records; the
    # command shows INFO and above on stderr, one line each, for as long as it runs (main() may run in-process).
    handler = _EchoHandler()
    logger = logging.getLogger("svdcompress")
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate

    click.get_current_context().call_on_close(restore)


class _EchoHandler(logging.Handler):
    """A log record as one ``note:`` line on stderr (click's echo: safe from the runtime's timer thread)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"note: {_cli_message(Exception(record.getMessage()))}", err=True)


def _convention_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from ..checkpoint.conventions import CONVENTION_NAMES

    if value not in CONVENTION_NAMES:
        raise click.BadParameter(f"{value!r} is not a known convention; choose one of {', '.join(CONVENTION_NAMES)}")
    return value


_convention_opt = click.option(
    "--convention",
    metavar="NAME",
    callback=_convention_name,
    help="The project the checkpoint comes from, when its names fit several (weight + log_sigma2: "
    "pytorch-ard, bayeswatch, svdcompress). Default: recognised from the file. Every layer is counted and "
    "masked by its project's formula, eps, clip and comparison.",
)


@contextlib.contextmanager
def _convention_notes() -> Iterator[None]:
    """The ConventionWarnings raised inside, each once on stderr in the CLI's words, as analyze prints them;
    other warnings are shown as Python shows them."""
    from ..errors import ConventionWarning

    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConventionWarning)
            yield
    finally:
        # Replayed after the block: inside it, showwarning appends to ``caught`` and this loop never ends.
        shown: set[str] = set()
        for w in caught:
            if not issubclass(w.category, ConventionWarning):
                warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
            elif str(w.message) not in shown:
                shown.add(str(w.message))
                click.echo(f"warning: {_cli_message(Exception(str(w.message)))}", err=True)


_CKPT_DOC = (
    "CKPT is a checkpoint file (.pt/.pth state_dict or svdcompress checkpoint, .safetensors, Lasagne .npy/.npz), "
    "or bundled:lenet5 / bundled:lenet300 for the checkpoints shipped with svdcompress."
)


@main.command(epilog=_CKPT_DOC)
@click.argument("ckpt", type=_CKPT, callback=_bundled)
@_threshold_opt
@_json_options
@click.option(
    "--plot",
    type=click.Path(path_type=Path, dir_okay=False),
    callback=_plot_path,
    help="Write log α histograms as an image; the suffix picks the format (.png, .svg, .pdf, ...).",
)
@click.option("--force", is_flag=True, help="Overwrite existing --plot / --json-out files.")
@click.option(
    "--model",
    "model_spec",
    metavar="PKG.MODULE:FACTORY",
    help="Import path of a function returning the nn.Module the checkpoint belongs to: the layers are counted "
    "from the live model (one row per layer for numenta's VDropCentralData, one flat group without it).",
)
@_trust_opt
@_convention_opt
@_friendly
def analyze(
    ckpt: Path,
    threshold: float,
    as_json: bool,
    json_out: Path | None,
    plot: Path | None,
    force: bool,
    model_spec: str | None,
    trust_pickle: bool,
    convention: str | None,
) -> None:
    """Report per layer how many weights log α < THRESHOLD keeps, and which units are dead."""
    import dataclasses

    from ..errors import ConventionWarning
    from ..pipeline import analyze as _analyze

    _check_plot(plot, force=force, ckpt=ckpt)
    _check_json_out(json_out, force=force, ckpt=ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConventionWarning)  # shown below, as one line in the CLI's words
        report = _analyze(ckpt, threshold, trust_pickle=trust_pickle, convention=convention, model=model_spec)
    for note in report.warnings:
        click.echo(f"warning: {_cli_message(Exception(note))}", err=True)
    report = dataclasses.replace(report, source=_display_name(ckpt))
    if as_json or json_out is not None:
        _emit_json(report.to_dict(), as_json=as_json, json_out=json_out)
    if not as_json:
        _emit(report.format_table(), as_json=as_json, json_out=json_out)
    if plot is not None:
        _write_or_explain("--plot", lambda: report.plot(plot))
        click.echo(f"wrote {plot}", err=True)


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
    from .._inputs import parse_int_list

    example = {"input_shape": "1,28,28", "threads": "1,2"}.get(param.name or "", "1,16,256")
    try:
        return parse_int_list(value, "", example=example)
    except InvalidInputError as e:
        raise click.BadParameter(str(e)) from None


_shape_opt = click.option(
    "--input-shape",
    metavar="C,H,W",
    callback=_int_list,
    help="Per-example input shape, if the checkpoint does not record it (e.g. 1,28,28).",
)
_force_opt = click.option("--force", is_flag=True, help="Overwrite an existing output file.")


def _load_inputs(spec: str | None, limit: int | None = None) -> tuple[Any, Any] | None:
    """A data spec (:mod:`svdcompress.tuning.dataspec`): ``NAME:SPLIT``, a bare ``fashion-mnist`` / ``mnist5k`` (the
    test split), ``FILE.npz`` (x and y) or ``FILE.npy`` (inputs only: no labels)."""
    if spec is None:
        return None
    from ..tuning.dataspec import load_data

    x, y = load_data(spec)
    if limit:
        x, y = x[:limit], None if y is None else y[:limit]
    return x, y


@main.command(epilog=_CKPT_DOC)
@click.argument("ckpt", type=_CKPT, callback=_bundled)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    callback=_file_out,
    required=True,
    help="Where to write the pruned model (a torch.export program, .pt2).",
)
@_model_opt
@_threshold_auto_opt
@_max_drop_opt(None)
@_shape_opt
@click.option(
    "--input-dtype",
    type=click.Choice(["float32", "int64"]),
    default="float32",
    show_default=True,
    help="Element type of the model input. int64: token ids (with --input-shape the sequence length, e.g. 40); "
    "random ids below the smallest embedding's vocabulary trace and verify the model.",
)
@click.option("--gather-inputs", is_flag=True, help="Drop input features no weight reads, behind an index gather.")
@click.option(
    "--round-to",
    type=_RoundTo(allow_auto=False),
    default=1,
    show_default=True,
    help="Keep the fewest extra dead (exact) channels that make each pruned layer's width a multiple of N.",
)
@click.option(
    "--data",
    metavar="SPEC",
    help="Verify on this data instead of random inputs: fashion-mnist:SPLIT, mnist5k:SPLIT (bare name: the test "
    "split), FILE.npz (x, y) or FILE.npy (inputs); with --threshold auto, also the data the threshold is chosen on.",
)
@_json_options
@_trust_opt
@click.option("--force", is_flag=True, help="Overwrite existing -o / --json-out files.")
@_convention_opt
@_friendly
def prune(
    ckpt: Path,
    output: Path,
    model_spec: str | None,
    threshold: float | str,
    max_drop: float | None,
    input_shape: tuple[int, ...] | None,
    input_dtype: str,
    gather_inputs: bool,
    round_to: int,
    data: str | None,
    as_json: bool,
    json_out: Path | None,
    trust_pickle: bool,
    force: bool,
    convention: str | None,
) -> None:
    """Zero the noise, remove dead neurons and filters, verify, and save a model that loads without source."""
    from .._inputs import INPUT_DTYPES, example_inputs, vocabulary
    from ..pruning.pt2 import save_pruned
    from ..pruning.structural import prune as _prune

    _check_out(output, "-o", force=force, ckpt=ckpt)
    _check_json_out(json_out, force=force, ckpt=ckpt)
    _selection_spec(data, threshold, max_drop)
    with _convention_notes():
        prepared = _prepare(
            ckpt,
            model_spec=model_spec,
            trust_pickle=trust_pickle,
            input_shape=input_shape,
            threshold=threshold,
            data=data,
            max_drop=max_drop,
            convention=convention,
        )
        batch = _load_inputs(data, limit=1000)
        example = None if batch is None else batch[0]
        if example is None and input_dtype != "float32":
            example = example_inputs(
                prepared.input_shape, 8, dtype=INPUT_DTYPES[input_dtype], high=vocabulary(prepared.module)
            )
        result = _prune(
            prepared.module,
            threshold=prepared.threshold,
            gather_inputs=gather_inputs,
            round_to=round_to,
            input_shape=prepared.input_shape,
            example_inputs=example,
            convention=convention,
        )
    selection = prepared.selection()
    meta: dict[str, Any] = {"threshold": prepared.threshold}
    if selection is not None:
        meta["threshold_selection"] = selection
    save_pruned(result.model, output, input_shape=prepared.input_shape, metadata=meta, example_inputs=example)
    if as_json or json_out is not None:
        _emit_json({**result.report.to_dict(), **meta, "output": str(output)}, as_json=as_json, json_out=json_out)
    if not as_json:
        _emit(result.report.format_table(), as_json=as_json, json_out=json_out)
        _emit(f"wrote {output} ({output.stat().st_size / 1000:,.1f} kB)", as_json=as_json, json_out=json_out)


@main.command(epilog=_CKPT_DOC)
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
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    callback=_file_out,
    required=True,
    help="Where to write the artifact (e.g. model.onnx, model.csr).",
)
@_model_opt
@_threshold_auto_opt
@_max_drop_opt(None)
@click.option(
    "--data",
    metavar="SPEC",
    help="Held-out labelled data (fashion-mnist:val, mnist5k:val or FILE.npz with x and y; never a test split): "
    "with --threshold auto the threshold is chosen on it (recorded in the artifact); with --bits 2..8 or auto the "
    "quantised bundle's accuracy on it is checked before the file is written.",
)
@click.option(
    "--max-quant-drop",
    type=float,
    default=0.3,
    show_default=True,
    metavar="POINTS",
    callback=_max_drop_value,
    help="With --bits and --data: accuracy points quantisation may lose against the unquantised model; more fails "
    "the export and writes no file.",
)
@_shape_opt
@click.option(
    "--input-dtype",
    type=click.Choice(["float32", "int64"]),
    default="float32",
    show_default=True,
    help="Element type of the model input. int64: token ids (with --input-shape the sequence length, e.g. 40); "
    "tracing and verification use random ids below the smallest embedding's vocabulary, and ONNX gets a dynamic "
    "sequence axis where the model takes other lengths; a CSR bundle then takes int64 ids of that length.",
)
@click.option("--opset", type=click.IntRange(13, 21), default=17, show_default=True, help="ONNX opset.")
@click.option(
    "--round-to",
    type=_RoundTo(allow_auto=True),
    help="Keep extra dead (exact) units so that each pruned layer's width is a multiple of N (ONNX Runtime runs "
    "ragged widths slower); auto: time 1, 4, 8 and 16 in ONNX Runtime on this machine and keep the fastest, "
    "recorded in the ONNX metadata. Default: 8 for onnx and onnx-sparse, 1 for csr.",
)
@click.option(
    "--dtype",
    type=click.Choice(["fp32", "fp16"]),
    default="fp32",
    show_default=True,
    help="Stored weight precision. fp16 halves the file; arithmetic stays fp32.",
)
@click.option(
    "--bits",
    type=click.Choice(["auto", "16", "8", "7", "6", "5", "4", "3", "2"]),
    help="CSR only: quantise kept weights (per layer: uniform per-row integers or a k-means codebook, whichever "
    "is smaller); auto picks each layer's fewest bits from the posterior σ of its kept weights. The runtime "
    "decodes to fp32 at load.",
)
@_trust_opt
@_force_opt
@_convention_opt
@_friendly
def export(
    ckpt: Path,
    fmt: str,
    output: Path,
    model_spec: str | None,
    threshold: float | str,
    max_drop: float | None,
    data: str | None,
    max_quant_drop: float,
    input_shape: tuple[int, ...] | None,
    input_dtype: str,
    opset: int,
    round_to: int | str | None,
    dtype: str,
    bits: str | None,
    trust_pickle: bool,
    force: bool,
    convention: str | None,
) -> None:
    """Prune and export a deployable artifact, verified against the masked model."""
    from ..export import export_model

    _check_out(output, "-o", force=force, ckpt=ckpt)
    if bits is not None and fmt != "csr":
        raise click.BadParameter(f"quantises CSR bundles only; got --format {fmt}", param_hint="'--bits'")
    quantised = bits is not None and bits != "16"
    if _selection_spec(data, threshold, max_drop) is None and data is not None:
        if not quantised:
            raise click.UsageError(
                "--data chooses the threshold (--threshold auto) or checks a quantised bundle's accuracy "
                "(--bits 2..8 or auto); export got neither"
            )
        _selection_spec(data, "auto", None)  # the same check: held-out labelled data, never a test split
    with _convention_notes():
        res = export_model(
            ckpt,
            fmt,
            output,
            input_shape=input_shape,
            input_dtype=input_dtype,
            model=model_spec,
            trust_pickle=trust_pickle,
            threshold=threshold,
            dtype=dtype,
            opset=opset,
            force=force,
            bits=None if bits is None else bits if bits == "auto" else int(bits),
            convention=convention,
            data=data,
            max_drop=0.5 if max_drop is None else max_drop,
            max_quant_drop=max_quant_drop,
            round_to=round_to,
        )
    if res.threshold_selection is not None:
        _report_pick(res.threshold_selection)
    if res.round_to_selection is not None:
        medians = ", ".join(
            f"{r}: {' / '.join(f'{v:,.0f}' for v in us)} µs" for r, us in res.round_to_selection["median_us"].items()
        )
        click.echo(f"round-to auto: {res.round_to} (ONNX Runtime, 1 thread, batch 1 / 32: {medians})", err=True)
    click.echo(res.summary())
    if res.dynamic_axes and len(res.dynamic_axes) > 1:
        click.echo("dynamic input axes: " + ", ".join(f"{a} ({n})" for a, n in sorted(res.dynamic_axes.items())))
    if res.quant:
        click.echo(_quant_table(res.quant))
        click.echo(
            f"outputs vs the fp32 model on random inputs: max |diff| = {res.quant_drift or 0:.2e} of the output scale"
        )
        a = res.accuracy
        if a is not None:  # without data, the exporter's note says that accuracy was not checked
            c = next((q["c"] for q in res.quant.values() if "c" in q), None)
            click.echo(
                f"accuracy on {a['data']} ({a['examples']:,} examples): {a['accuracy']:.2f}% quantised, "
                f"{a['fp32_accuracy']:.2f}% unquantised ({-a['drop_points']:+.2f} points; allowed "
                f"-{a['max_drop']:g})" + (f"; --bits auto held quantisation noise to {c:g}·σ²" if c is not None else "")
            )


def _quant_table(quant: dict[str, dict[str, Any]]) -> str:
    """Per quantised layer: bits, scheme, median σ, step Δ, RMS error vs its target, weights rounded to 0, bytes."""
    head = ("layer", "bits", "scheme", "median σ", "median Δ", "rms error", "target", "zeroed", "est. bytes")
    rows = [head]
    for name, q in quant.items():
        sigma, step = q.get("median_sigma"), q.get("step")
        rows.append(
            (
                name,
                str(q["bits"]),
                q["scheme"],
                "–" if sigma is None else f"{sigma:.3g}",
                "–" if step is None else f"{step:.3g}",
                f"{q['rms_error']:.3g}",
                f"{q['target_rms']:.3g}",
                f"{q.get('zeroed', 0):,}",
                f"{q['bytes']:,}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def _stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@main.command(epilog=_CKPT_DOC)
@click.argument("ckpt", type=_CKPT, callback=_bundled)
@_model_opt
@_threshold_auto_opt
@_max_drop_opt(None)
@_shape_opt
@click.option(
    "--batch-sizes",
    callback=_int_list,
    default="1,16,256",
    show_default=True,
    metavar="N,N,...",
    help="Batch sizes to time, comma-separated.",
)
@click.option(
    "--threads",
    callback=_int_list,
    default="1",
    show_default=True,
    metavar="N,N,...",
    help="Thread counts to time, comma-separated (at most the machine's cores, or timings measure contention).",
)
@click.option(
    "--repeats",
    type=click.IntRange(3, 10000),
    default=30,
    show_default=True,
    help="Timed samples per contender and setting.",
)
@click.option(
    "--contenders",
    help="Comma-separated subset of: " + ", ".join(CONTENDERS) + " (openvino-* need the peers extra).",
)
@click.option(
    "--data",
    metavar="SPEC",
    help="Report accuracy on this data: fashion-mnist:SPLIT, mnist5k:SPLIT (bare name: the test split) or FILE.npz "
    "(x, y); with --threshold auto, the data the threshold is chosen on (never a test split).",
)
@_json_options
@click.option(
    "--plot",
    type=click.Path(path_type=Path, dir_okay=False),
    callback=_plot_path,
    help="Write latency vs batch size as an image; the suffix picks the format (.png, .svg, .pdf, ...).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar (there is none when stderr is not a terminal).")
@_trust_opt
@click.option("--force", is_flag=True, help="Overwrite existing --plot / --json-out files.")
@_convention_opt
@_friendly
def bench(
    ckpt: Path,
    model_spec: str | None,
    threshold: float | str,
    max_drop: float | None,
    input_shape: tuple[int, ...] | None,
    batch_sizes: tuple[int, ...],
    threads: tuple[int, ...],
    repeats: int,
    contenders: str | None,
    data: str | None,
    as_json: bool,
    json_out: Path | None,
    plot: Path | None,
    quiet: bool,
    trust_pickle: bool,
    force: bool,
    convention: str | None,
) -> None:
    """Time dense, masked, pruned, ONNX and CSR forms of the model side by side."""
    from ..benchmark.config import BenchConfig
    from ..benchmark.harness import bench as _bench

    _check_plot(plot, force=force, ckpt=ckpt)
    _check_json_out(json_out, force=force, ckpt=ckpt)
    _selection_spec(data, threshold, max_drop)
    chosen: tuple[str, ...] = CONTENDERS
    if contenders:
        chosen = tuple(c.strip() for c in contenders.split(",") if c.strip())
        bad = [c for c in chosen if c not in CONTENDERS]
        if bad:
            raise click.BadParameter(
                f"unknown contender(s) {', '.join(bad)}; choose from {', '.join(CONTENDERS)}", param_hint="--contenders"
            )
    cores = _cores()
    if max(threads) > cores:
        click.echo(
            f"Warning: --threads {max(threads)} is more than the {cores} CPU core(s) this process may use; "
            "those timings measure contention, not the engines",
            err=True,
        )
    with _convention_notes():
        prepared = _prepare(
            ckpt,
            model_spec=model_spec,
            trust_pickle=trust_pickle,
            input_shape=input_shape,
            threshold=threshold,
            data=data,
            max_drop=max_drop,
            convention=convention,
        )
        loaded = _load_inputs(data)
        labelled = (loaded[0], loaded[1]) if loaded is not None and loaded[1] is not None else None
        cfg = BenchConfig(
            batch_sizes=batch_sizes,
            threads=threads,
            repeats=repeats,
            contenders=chosen,
            threshold=prepared.threshold,
            convention=convention,
        )
        report = _bench(
            prepared.module,
            input_shape=prepared.input_shape,
            config=cfg,
            data=labelled,
            name=Path(ckpt).stem,
            progress=not quiet and _stderr_is_tty(),  # no carriage returns in CI logs
        )
    tuned = prepared.tuned
    if tuned is not None:
        report.model["threshold_selection"] = tuned.selection()
    if as_json or json_out is not None:
        _emit_json(report.to_dict(), as_json=as_json, json_out=json_out)
    if not as_json:
        _emit(report.markdown(), as_json=as_json, json_out=json_out)
        if tuned is not None:
            _emit(
                f"Threshold {tuned.threshold:.6g}, chosen on {tuned.data} (accuracy above is on that data too).",
                as_json=as_json,
                json_out=json_out,
            )
    if plot is not None:
        _write_or_explain("--plot", lambda: report.plot(plot))
        click.echo(f"wrote {plot}", err=True)


@main.command("tune", epilog=_CKPT_DOC)
@click.argument("ckpt", type=_CKPT, callback=_bundled)
@click.option(
    "--data",
    metavar="SPEC",
    required=True,
    help="Held-out data to choose on: fashion-mnist:val, mnist5k:val or FILE.npz (x: float inputs, y: integer "
    "labels). Test splits are refused: they may evaluate a threshold, never choose one.",
)
@_max_drop_opt(0.5)
@click.option(
    "--metric", type=click.Choice(["accuracy"]), default="accuracy", show_default=True, help="Top-1 accuracy, %."
)
@_model_opt
@_shape_opt
@_json_options
@click.option(
    "--plot",
    type=click.Path(path_type=Path, dir_okay=False),
    callback=_plot_path,
    help="Write accuracy vs compression, the pick marked, as an image; the suffix picks the format (.png, .svg, ...).",
)
@click.option(
    "--latency",
    is_flag=True,
    help="Also time the CSR runtime (batch 1, one thread) at five candidates: the pick, 3 and some between. "
    "Exports each; a few seconds per candidate.",
)
@_trust_opt
@click.option("--force", is_flag=True, help="Overwrite existing --plot / --json-out files.")
@_convention_opt
@_friendly
def tune_cmd(
    ckpt: Path,
    data: str,
    max_drop: float,
    metric: str,
    model_spec: str | None,
    input_shape: tuple[int, ...] | None,
    as_json: bool,
    json_out: Path | None,
    plot: Path | None,
    latency: bool,
    trust_pickle: bool,
    force: bool,
    convention: str | None,
) -> None:
    """Choose the log α threshold on held-out data: the largest compression whose accuracy stays within
    --max-drop points of the unthresholded model's (θ, no mask) on the same data."""
    import dataclasses

    from ..nn.architecture import load_model
    from ..tuning.threshold import tune

    _check_plot(plot, force=force, ckpt=ckpt)
    _check_json_out(json_out, force=force, ckpt=ckpt)
    spec = _selection_spec(data, "auto", None)
    with _convention_notes():
        resolved = load_model(
            ckpt,
            model=model_spec,
            trust_pickle=trust_pickle,
            input_shape=input_shape,
            require_svdo=True,
            convention=convention,
        )
        result = tune(resolved, spec, max_drop=max_drop, metric=metric, input_shape=input_shape, convention=convention)
    result = dataclasses.replace(result, source=_display_name(ckpt))
    if latency:
        from ..benchmark.harness import csr_latency

        few = result.few(5)
        click.echo(f"timing the CSR runtime at thresholds {', '.join(f'{t:.6g}' for t in few)} ...", err=True)
        shape = resolved.input_shape or tuple(result.input_shape)  # else the data's, which ran through it
        timed = csr_latency(resolved.module, few, input_shape=shape, convention=convention)
        for r in result.rows:
            r.latency_us = timed.get(r.threshold, r.latency_us)
    if as_json or json_out is not None:
        _emit_json(result.to_dict(), as_json=as_json, json_out=json_out)
    if not as_json:
        _emit(result.format_table(), as_json=as_json, json_out=json_out)
    else:
        for w in result.warnings:
            click.echo(f"warning: {_cli_message(Exception(w))}", err=True)
    if plot is not None:
        _write_or_explain("--plot", lambda: result.plot(plot))
        click.echo(f"wrote {plot}", err=True)


@main.command()
@click.argument("bundles", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="As runtime.load's threads.")
@_friendly
def warmup(bundles: tuple[Path, ...], threads: int) -> None:
    """Compile the CSR runtime's kernels into numba's on-disk cache (a Dockerfile build step).

    With BUNDLE files, the kernels each bundle runs on this CPU (its recorded plan, else the plan chosen now);
    with none, every kernel (minutes). Prints the cache folder and its size. Run it as the build does, then
    point NUMBA_CACHE_DIR at the same folder when serving; a server running as another user reads it.
    """
    from ..runtime.warmup import warmup as run_warmup

    report = run_warmup(bundles, threads=threads)
    click.echo(report.summary())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
