"""Every CLI option that takes a value, given a bad one: exit 2 (bad argument) or 1 (the library refused
it), one error line, no traceback, and the message in the CLI's words (flags, not Python parameters)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from svdcompress.cli import main

MISSING_DIR = "{tmp}/no/such/dir"


def _run(args: list[str], tmp: Path) -> tuple[int, str]:
    argv = [a.replace("{tmp}", str(tmp)) for a in args]
    res = CliRunner().invoke(main, argv)
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), repr(res.exception)
    return res.exit_code, res.output


@pytest.fixture
def files(tmp_path: Path) -> Path:
    np.save(tmp_path / "scalar.npy", np.float32(1.0))
    np.save(tmp_path / "strings.npy", np.array(["a", "b"]))
    (tmp_path / "taken.json").write_text("{}")
    return tmp_path


# (argv, expected exit code, a fragment of the error line). Every option that takes a value appears.
CASES: list[tuple[list[str], int, str]] = [
    # analyze: CKPT, --threshold, --plot, --json-out, --convention
    (["analyze", "{tmp}/missing.pt"], 1, "no such file"),
    (["analyze", "bundled:lenet7"], 2, "no bundled checkpoint"),
    (["analyze", "bundled:lenet5", "--threshold", "high"], 2, "--threshold"),
    (["analyze", "bundled:lenet5", "--threshold", "nan"], 2, "not a finite number"),
    (["analyze", "bundled:lenet5", "--plot", MISSING_DIR + "/h.png"], 1, "does not exist"),
    (["analyze", "bundled:lenet5", "--plot", "{tmp}/h.xyz"], 2, "suffix '.xyz' is not an image format"),
    (["analyze", "bundled:lenet5", "--json-out", MISSING_DIR + "/r.json"], 1, "does not exist"),
    (["analyze", "bundled:lenet5", "--convention", "nope"], 2, "not a known convention"),
    (["analyze", "bundled:lenet5", "--model", "nodots"], 1, "--model 'nodots'"),
    # prune: -o, --model, --threshold, --input-shape, --data
    (["prune", "bundled:lenet5", "-o", "{tmp}"], 2, "is a directory"),
    (["prune", "bundled:lenet5", "-o", MISSING_DIR + "/m.pt2"], 1, "does not exist"),
    (["prune", "bundled:lenet5", "-o", "{tmp}/m.pt2", "--model", "nodots"], 1, "--model 'nodots'"),
    (["prune", "bundled:lenet5", "-o", "{tmp}/m.pt2", "--model", "no_such_pkg.x:f"], 1, "cannot import"),
    (["prune", "bundled:lenet5", "-o", "{tmp}/m.pt2", "--threshold", "inf"], 2, "not a finite number"),
    (["prune", "bundled:lenet5", "-o", "{tmp}/m.pt2", "--input-shape", "1,5,5"], 2, "check --input-shape"),
    (["prune", "bundled:lenet5", "-o", "-"], 2, "give a file path"),
    (["prune", "bundled:lenet5", "-o", "{tmp}/m.pt2", "--json-out", "{tmp}/taken.json"], 1, "already exists"),
    (["prune", "bundled:lenet5", "-o", "{tmp}/m.pt2", "--input-shape", "abc"], 2, "--input-shape"),
    (["prune", "bundled:lenet5", "-o", "{tmp}/m.pt2", "--input-shape", "0,28"], 2, "positive integers"),
    (["prune", "bundled:lenet5", "-o", "{tmp}/m.pt2", "--data", "{tmp}/missing.npy"], 1, "--data"),
    (["prune", "bundled:lenet5", "-o", "{tmp}/m.pt2", "--data", "{tmp}/scalar.npy"], 1, "batch of inputs"),
    (["prune", "bundled:lenet5", "-o", "{tmp}/m.pt2", "--data", "{tmp}/strings.npy"], 1, "cannot read inputs"),
    (["prune", "bundled:lenet5", "-o", "{tmp}/m.pt2", "--data", "cifar-10"], 1, "unknown data set"),
    # export: --format, -o, --model, --threshold, --input-shape, --opset, --dtype, --bits
    (["export", "bundled:lenet5", "--format", "tflite", "-o", "{tmp}/m.x"], 2, "--format"),
    (["export", "bundled:lenet5", "-o", "{tmp}/taken.json"], 1, "pass --force"),
    (["export", "bundled:lenet5", "-o", "{tmp}/m.onnx", "--model", "svdcompress.nn.zoo:nothing"], 1, "no attribute"),
    (["export", "bundled:lenet5", "-o", "{tmp}/m.onnx", "--threshold", "x"], 2, "--threshold"),
    (["export", "bundled:lenet5", "-o", "{tmp}/m.onnx", "--input-shape", "1,5,5"], 2, "check --input-shape"),
    (["export", "bundled:lenet5", "-o", "{tmp}/m.onnx", "--input-shape", "1;28"], 2, "--input-shape"),
    (["export", "bundled:lenet5", "-o", "{tmp}/m.onnx", "--opset", "99"], 2, "--opset"),
    (["export", "bundled:lenet5", "-o", "{tmp}/m.onnx", "--round-to", "many"], 2, "--round-to"),
    (["warmup", "--threads", "0"], 2, "--threads"),
    (["prune", "bundled:lenet5", "-o", "{tmp}/m.pt2", "--round-to", "auto"], 2, "--round-to"),
    (["export", "bundled:lenet5", "-o", "{tmp}/m.onnx", "--dtype", "fp8"], 2, "--dtype"),
    (["export", "bundled:lenet5", "-o", "{tmp}/m.csr", "--bits", "1"], 2, "--bits"),
    (["export", "bundled:lenet5", "-o", "{tmp}/m.onnx", "--bits", "4"], 2, "quantises CSR bundles only"),
    # bench: --model, --threshold, --input-shape, --batch-sizes, --threads, --repeats, --contenders, --data,
    # --json, --plot
    (["bench", "bundled:lenet5", "--model", ":f"], 1, "--model"),
    (["bench", "bundled:lenet5", "--threshold", "-nan"], 2, "not a finite number"),
    (["bench", "bundled:lenet5", "--input-shape", "x"], 2, "--input-shape"),
    (["bench", "bundled:lenet5", "--input-shape", "1,5,5", "--contenders", "torch-pruned"], 2, "--input-shape"),
    (["bench", "bundled:lenet5", "--batch-sizes", "0"], 2, "--batch-sizes"),
    (["bench", "bundled:lenet5", "--batch-sizes", "1,,16"], 2, "empty entry"),
    (["bench", "bundled:lenet5", "--threads", "one"], 2, "--threads"),
    (["bench", "bundled:lenet5", "--threads", "0"], 2, "like 1,2"),
    (["bench", "bundled:lenet5", "--repeats", "1"], 2, "--repeats"),
    (["bench", "bundled:lenet5", "--contenders", "warp-drive"], 2, "--contenders"),
    (["bench", "bundled:lenet5", "--contenders", "torch-dense", "--data", "cifar-10"], 1, "unknown data set"),
    (["bench", "bundled:lenet5", "--json-out", "{tmp}/taken.json"], 1, "already exists"),
    (["bench", "bundled:lenet5", "--plot", "{tmp}/p.jpeg2000"], 2, "not an image format"),
    (["bench", "bundled:lenet5", "--plot", MISSING_DIR + "/p.png"], 1, "does not exist"),
    # --convention (prune, export, bench)
    (["prune", "bundled:lenet5", "-o", "{tmp}/m.pt2", "--convention", "nope"], 2, "not a known convention"),
    (["export", "bundled:lenet5", "-o", "{tmp}/m.onnx", "--convention", "nope"], 2, "not a known convention"),
    (["bench", "bundled:lenet5", "--convention", "nope"], 2, "not a known convention"),
    (["export", "bundled:lenet5", "-o", "{tmp}/m.onnx", "--convention", "kefirski"], 1, "reads theta + log_sigma2"),
    # --threshold auto and --max-drop (prune, export, bench); export's --data
    (["prune", "bundled:lenet5", "-o", "{tmp}/m.pt2", "--threshold", "auto"], 2, "add --data SPEC"),
    (["prune", "bundled:lenet5", "-o", "{tmp}/m.pt2", "--max-drop", "1"], 2, "with --threshold auto"),
    (["export", "bundled:lenet5", "-o", "{tmp}/m.csr", "--threshold", "auto", "--data", "mnist5k"], 2, "test split"),
    (["export", "bundled:lenet5", "-o", "{tmp}/m.csr", "--max-drop", "x"], 2, "--max-drop"),
    (
        ["export", "bundled:lenet5", "-o", "{tmp}/m.csr", "--bits", "4", "--max-quant-drop", "-1"],
        2,
        "between 0 and 100",
    ),
    (["export", "bundled:lenet5", "-o", "{tmp}/m.csr", "--data", "fashion-mnist:val"], 2, "--threshold auto"),
    (["export", "bundled:lenet5", "-o", "{tmp}/m.onnx", "--input-dtype", "int8"], 2, "--input-dtype"),
    (["prune", "bundled:lenet5", "-o", "{tmp}/m.pt2", "--input-dtype", "int8"], 2, "--input-dtype"),
    (["export", "bundled:lenet5", "-o", "{tmp}/m.csr", "--format", "csr", "--input-dtype", "int64"], 2, "float32"),
    (["bench", "bundled:lenet5", "--threshold", "auto", "--data", "fashion-mnist"], 2, "test split"),
    (["bench", "bundled:lenet5", "--threshold", "auto", "--max-drop", "200"], 2, "between 0 and 100"),
    # tune: CKPT, --data, --max-drop, --metric, --model, --input-shape, --json-out, --plot, --convention
    (["tune", "bundled:lenet7", "--data", "fashion-mnist:val"], 2, "no bundled checkpoint"),
    (["tune", "bundled:lenet5", "--data", "fashion-mnist:test"], 2, "cannot choose the threshold"),
    (["tune", "bundled:lenet5", "--data", "{tmp}/scalar.npy"], 2, "without labels"),
    (["tune", "bundled:lenet5", "--data", "{tmp}/missing.npz"], 1, "no such file"),
    (["tune", "bundled:lenet5", "--data", "cifar-10:val"], 2, "unknown data set"),
    (["tune", "bundled:lenet5", "--data", "fashion-mnist:val", "--max-drop", "-1"], 2, "between 0 and 100"),
    (["tune", "bundled:lenet5", "--data", "fashion-mnist:val", "--metric", "f1"], 2, "--metric"),
    (["tune", "bundled:lenet5", "--data", "fashion-mnist:val", "--model", "nodots"], 1, "--model 'nodots'"),
    (["tune", "bundled:lenet5", "--data", "fashion-mnist:val", "--input-shape", "abc"], 2, "--input-shape"),
    (["tune", "bundled:lenet5", "--data", "fashion-mnist:val", "--json-out", "{tmp}/taken.json"], 1, "already exists"),
    (["tune", "bundled:lenet5", "--data", "fashion-mnist:val", "--plot", "{tmp}/p.xyz"], 2, "not an image format"),
    (["tune", "bundled:lenet5", "--data", "fashion-mnist:val", "--convention", "nope"], 2, "not a known convention"),
]


@pytest.mark.parametrize(("args", "code", "fragment"), CASES, ids=[" ".join(c[0][0:1] + c[0][2:]) for c in CASES])
def test_bad_value_gives_one_line_and_no_traceback(args: list[str], code: int, fragment: str, files: Path) -> None:
    exit_code, output = _run(args, files)
    assert exit_code == code, output
    assert "Traceback" not in output and "While executing" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, output
    assert fragment in errors[0], output
    if code == 1:  # library errors: the one line is all there is (besides bench's progress bar on stderr)
        rest = [line for line in output.splitlines() if line.strip() and not line.startswith("bench:")]
        assert rest == errors, output
    # Python parameter names must not leak into the CLI's messages.
    for param in ("trust_pickle=", "force=True", "input_shape", "model="):
        assert param not in errors[0], output


def test_every_option_that_takes_a_value_is_covered() -> None:
    covered = {(c[0][0], a) for c in CASES for a in c[0] if a.startswith("-")}
    for name, command in main.commands.items():  # type: ignore[attr-defined]
        for param in command.params:
            if getattr(param, "is_flag", False) or param.param_type_name == "argument":
                continue
            flags = set(param.opts)
            assert any((name, f) in covered for f in flags), f"{name} {'/'.join(sorted(flags))} has no bad-value case"
