"""Regression tests for the bugs of issue 24 (round three): each fails without its fix."""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from svdcompress.checkpoint import load_checkpoint
from svdcompress.cli import _convention_notes
from svdcompress.errors import CheckpointError

# --- 1: a warning under prune/export/bench hung the command --------------------------------------------------


@contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """Raise TimeoutError in this (main) thread after ``seconds``: a hang fails the test instead of the run."""

    def _expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, _expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_other_warnings_are_replayed_once_after_the_command(recwarn: pytest.WarningsRecorder) -> None:
    # Replayed inside catch_warnings(record=True), showwarning appended to the list being replayed: endless.
    with _deadline(3), _convention_notes():
        warnings.warn("a library's warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in recwarn] == ["a library's warning"]


@pytest.mark.parametrize("protocol", [2, 4])
def test_plain_pickle_given_to_export_fails_in_one_line(protocol: int, tmp_path: Path) -> None:
    ckpt, out = tmp_path / "weights.pkl", tmp_path / "out.csr"
    tensors = {"fc1.weight": torch.randn(6, 4), "fc1.log_sigma2": torch.randn(6, 4), "fc1.bias": torch.zeros(6)}
    with open(ckpt, "wb") as f:
        pickle.dump(tensors, f, protocol=protocol)
    argv = [sys.executable, "-m", "svdcompress", "export", str(ckpt), "--format", "csr", "-o", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr  # no torch warning about the pickle protocol, no traceback
    assert lines[0].startswith(f"Error: {ckpt}: is a plain Python pickle"), proc.stderr
    assert "torch.save" in lines[0]
    assert not out.exists()


def test_legacy_torch_file_with_a_newer_pickle_protocol_names_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "legacy4.pt"
    torch.save({"fc1.weight": torch.ones(2, 2)}, path, _use_new_zipfile_serialization=False, pickle_protocol=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's pickle-protocol warning must not reach the user
        with pytest.raises(CheckpointError, match=r"legacy \(non-zip\) format with pickle protocol 4.*trust_pickle"):
            load_checkpoint(path)
    assert set(load_checkpoint(path, trust_pickle=True).tensors) == {"fc1.weight"}
