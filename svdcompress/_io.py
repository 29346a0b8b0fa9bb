"""Atomic file output: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputExistsError

__all__ = ["atomic_path", "check_output_path"]


def check_output_path(
    out: str | os.PathLike[str], *, force: bool, inputs: tuple[str | os.PathLike[str], ...] = ()
) -> Path:
    """Refuse to overwrite an input, or an existing file without ``force``."""
    out_p = Path(out)
    for inp in inputs:
        try:
            if out_p.exists() and os.path.samefile(out_p, inp):
                raise OutputExistsError(f"{out_p}: output path is the input file; choose another -o path")
        except FileNotFoundError:
            pass
        if out_p.resolve() == Path(inp).resolve():
            raise OutputExistsError(f"{out_p}: output path is the input file; choose another -o path")
    if out_p.is_dir():
        raise OutputExistsError(f"{out_p}: is a directory; give a file path to -o")
    if out_p.exists() and not force:
        raise OutputExistsError(f"{out_p}: already exists; pass --force to overwrite it")
    parent = out_p.parent if str(out_p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputExistsError(f"{out_p}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OutputExistsError(f"{out_p}: directory {parent} is not writable; choose another -o path")
    return out_p


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto ``target`` on success.

    On any exception the temporary file is removed and ``target`` is left as it was.
    """
    target_p = Path(target)
    parent = target_p.parent if str(target_p.parent) else Path(".")
    # Keep the target's extension last: writers that dispatch on it (torch.export.save) then neither warn nor guess.
    fd, tmp = tempfile.mkstemp(prefix=f".{target_p.name}.", suffix=f".tmp{target_p.suffix}", dir=parent)
    os.close(fd)
    tmp_p = Path(tmp)
    # mkstemp creates the file 0600; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_p, 0o666 & ~umask)
    try:
        yield tmp_p
        os.replace(tmp_p, target_p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_p.unlink()
        raise
