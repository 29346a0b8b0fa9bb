"""File plumbing: atomic output (write beside the target, then rename), output-path checks, and handing
back the pages of memory-mapped checkpoint tensors."""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ExportError, OutputExistsError

if TYPE_CHECKING:  # torch is not imported at run time: the runtime imports this module without it
    import torch

__all__ = ["atomic_path", "check_output_path", "release_pages"]


def check_output_path(
    out: str | os.PathLike[str], *, force: bool, inputs: tuple[str | os.PathLike[str], ...] = ()
) -> Path:
    """Refuse to overwrite an input, or an existing file without ``force``, or a directory where no file can be
    created (tried with a temporary file, removed at once)."""
    out_p = Path(out)
    for inp in inputs:
        try:
            if out_p.exists() and os.path.samefile(out_p, inp):
                raise OutputExistsError(f"{out_p}: output path is the input file; choose another output path")
        except FileNotFoundError:
            pass
        if out_p.resolve() == Path(inp).resolve():
            raise OutputExistsError(f"{out_p}: output path is the input file; choose another output path")
    if out_p.is_dir():
        raise OutputExistsError(f"{out_p}: is a directory; give a file path as the output")
    if out_p.exists() and not force:
        raise OutputExistsError(f"{out_p}: already exists; pass force=True to overwrite it")
    parent = out_p.parent if str(out_p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputExistsError(f"{out_p}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OutputExistsError(f"{out_p}: directory {parent} is not writable; choose another output path")
    # os.access says yes to root everywhere, even in /proc or on a read-only mount: try it, before any work.
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{out_p.name}.", suffix=".probe", dir=parent)
    except OSError as e:
        raise ExportError(
            f"{out_p}: cannot create a file in {parent} ({e.strerror or e}); choose another output path"
        ) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return out_p


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto ``target`` on success.

    On any exception the temporary file is removed and ``target`` is left as it was.
    """
    target_p = Path(target)
    parent = target_p.parent if str(target_p.parent) else Path(".")
    # Keep the target's extension last: writers that dispatch on it (torch.export.save) then neither warn nor guess.
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target_p.name}.", suffix=f".tmp{target_p.suffix}", dir=parent)
    except OSError as e:  # the temporary name means nothing to the user: name the target and its directory
        raise ExportError(
            f"{target_p}: cannot create a file in {parent} ({e.strerror or e}); choose another output path"
        ) from None
    os.close(fd)
    tmp_p = Path(tmp)
    # mkstemp creates the file 0600; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_p, 0o666 & ~umask)
    try:
        yield tmp_p
        os.replace(tmp_p, target_p)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_p.unlink()
        if e.filename is not None and Path(e.filename) == tmp_p:  # disk full, ... while writing the temporary
            raise OSError(e.errno, e.strerror, str(target_p)) from None
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_p.unlink()
        raise


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_MADV_DONTNEED = 4


def release_pages(t: torch.Tensor) -> None:
    """Hand back the pages of ``t`` if it lies in a memory-mapped file (``torch.load(mmap=True)``, safetensors).

    Pages of a mapped file that were read stay resident, and counted in RSS, until the whole file is unmapped:
    scanning a 1 GB checkpoint would end with 1 GB resident. MADV_DONTNEED drops them; a page read again is
    re-read from the page cache. It is only done when /proc/self/pagemap shows that no page in the range holds
    private data (written or swapped), so no content can be lost. A no-op off Linux and for ordinary tensors.
    """
    if _LIBC is None or t.device.type != "cpu" or t.numel() == 0:
        return
    try:
        span = (1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride(), strict=True))) * t.element_size()
        start, page = t.data_ptr(), mmap.PAGESIZE
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                if lo <= start < hi:
                    break
            else:
                return
        if len(fields) < 6 or not fields[5].startswith("/"):
            return  # anonymous memory (an ordinary tensor): nothing to hand back
        a, b = start // page * page, min(-(-(start + span) // page) * page, hi)
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        try:
            entries = np.frombuffer(os.pread(fd, (b - a) // page * 8, a // page * 8), dtype=np.uint64)
        finally:
            os.close(fd)
        present, swapped, file_page = (
            (entries >> np.uint64(63)) & 1,
            (entries >> np.uint64(62)) & 1,
            (entries >> np.uint64(61)) & 1,
        )
        if swapped.any() or (present & (1 - file_page)).any():
            return  # a page was written (copy-on-write) or swapped: dropping it would lose data
        _LIBC.madvise(ctypes.c_void_p(a), ctypes.c_size_t(b - a), _MADV_DONTNEED)
    except (OSError, ValueError):
        return  # best effort: memory is only released sooner
