"""Command line: ``svdcompress analyze | prune | export | bench``. Thin wrappers over the Python API.

Exit codes: 0 success; 1 bad input or a failed check (one line on stderr, no traceback);
2 bad usage (unknown option, bad value).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .errors import SvdcompressError

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


def _friendly(fn: F) -> F:
    """Turn library errors into one-line click errors (exit 1) instead of tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SvdcompressError as e:
            raise click.ClickException(str(e)) from None
        except MemoryError:
            raise click.ClickException("out of memory; try a smaller batch or checkpoint") from None

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature


_CKPT = click.Path(path_type=Path)  # existence is checked by the loader, which names the fix
_threshold_opt = click.option("--threshold", type=float, default=3.0, show_default=True,
                              help="log α above which a weight is noise and set to zero.")
_trust_opt = click.option("--trust-pickle", is_flag=True,
                          help="Allow unpickling arbitrary objects. Unpickling runs code: only for files you trust.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="svdcompress")
def main() -> None:
    """Turn Sparse Variational Dropout checkpoints into small, fast CPU artifacts."""


@main.command()
@click.argument("ckpt", type=_CKPT)
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


def _run() -> None:  # pragma: no cover - console-script shim
    main(prog_name="svdcompress")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
