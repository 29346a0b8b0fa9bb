"""What a new user meets first (issue 12): a failure leaves no artifact and no traceback, a threshold is finite
everywhere, one rule for models without SVDO layers, a wrong --input-shape says what the model expects, --plot
without matplotlib fails before any work, the JSON and progress conventions, packaging and plot details.

Commands run in-process through click's CliRunner; the expensive parts (benchmark timing) are replaced by fakes
where the test is about the command line, not the measurement.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result
from torch import nn

import svdcompress
from svdcompress import bundled_checkpoint
from svdcompress.benchmark.harness import BenchConfig, BenchReport, BenchResult
from svdcompress.cli import main
from svdcompress.errors import InvalidInputError, MissingDependencyError, SvdcompressError
from svdcompress.nn.layers import LinearSVDO

bench_mod = importlib.import_module("svdcompress.benchmark.harness")
analysis_mod = importlib.import_module("svdcompress.checkpoint.analysis")
cli_mod = importlib.import_module("svdcompress.cli.commands")
plot_mod = importlib.import_module("svdcompress._plot")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_error_line(res: Result, code: int) -> str:
    """Exit ``code``, no traceback, exactly one ``Error`` line (returned)."""
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output and "While executing" not in res.output, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, res.output
    return errors[0]


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = LinearSVDO(6, 5)
        self.act = nn.ReLU()
        self.fc2 = LinearSVDO(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


# --- 1 and 3: a plain model is refused by every command, before any work, leaving nothing behind ----------

PLAIN_FACTORY = "issue12_plainnet:make"


@pytest.fixture
def plain_ckpt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "issue12_plainnet.py").write_text(
        "from torch import nn\n\ndef make():\n    return nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))\n"
    )
    monkeypatch.syspath_prepend(str(src))
    torch.manual_seed(0)
    ckpt = tmp_path / "plain.pt"
    torch.save(nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)).state_dict(), ckpt)
    return ckpt


PLAIN_COMMANDS = {
    "analyze": lambda c, o: ["analyze", str(c)],
    "prune": lambda c, o: ["prune", str(c), "-o", str(o / "p.pt2")],
    "prune-model": lambda c, o: [
        "prune",
        str(c),
        "--model",
        PLAIN_FACTORY,
        "--input-shape",
        "12",
        "-o",
        str(o / "p.pt2"),
    ],
    "export-model": lambda c, o: [
        "export",
        str(c),
        "--model",
        PLAIN_FACTORY,
        "--input-shape",
        "12",
        "--format",
        "csr",
        "-o",
        str(o / "r.csr"),
    ],
    "bench-model": lambda c, o: [
        "bench",
        str(c),
        "--model",
        PLAIN_FACTORY,
        "--input-shape",
        "12",
        "--contenders",
        "torch-dense",
        "--json-out",
        str(o / "b.json"),
    ],
}


@pytest.mark.parametrize("command", list(PLAIN_COMMANDS))
def test_plain_model_gets_the_same_refusal_everywhere(command: str, plain_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    before = _digest(plain_ckpt)
    line = _one_error_line(CliRunner().invoke(main, PLAIN_COMMANDS[command](plain_ckpt, out)), 1)
    assert f"{plain_ckpt}: no SVDO layers found among 4 tensors" in line
    assert "a plain (non-SVDO) checkpoint has nothing to prune" in line
    assert list(out.iterdir()) == []
    assert _digest(plain_ckpt) == before


def test_export_runs_every_check_before_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compression figure used to be computed after the artifact was renamed into place."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise SvdcompressError("analysis failed")

    monkeypatch.setattr(analysis_mod, "analyze", broken)
    with pytest.raises(SvdcompressError, match="analysis failed"):
        svdcompress.export_model(_Tiny().eval(), "onnx", tmp_path / "m.onnx", input_shape=(6,))
    assert list(tmp_path.iterdir()) == []


# --- 2: a threshold is finite everywhere ----------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_api_refuses_non_finite_thresholds(bad: float, tmp_path: Path) -> None:
    net = _Tiny().eval()
    calls = {
        "prune": lambda: svdcompress.prune(net, threshold=bad, input_shape=(6,)),
        "analyze": lambda: svdcompress.analyze(net, threshold=bad),
        "mask_model": lambda: svdcompress.mask_model(net, threshold=bad),
        "apply_masks_": lambda: svdcompress.apply_masks_(_Tiny(), threshold=bad),
        "export_model": lambda: svdcompress.export_model(
            net, "csr", tmp_path / "m.csr", input_shape=(6,), threshold=bad
        ),
        "BenchConfig": lambda: BenchConfig(threshold=bad),
    }
    for name, call in calls.items():
        with pytest.raises(InvalidInputError, match="finite number"):
            call()
        assert list(tmp_path.iterdir()) == [], name
    assert all(type(m) is not nn.Linear for m in net.modules())  # nothing was masked in place


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_export_with_non_finite_threshold_is_usage_error_and_writes_nothing(bad: str, tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["export", "bundled:lenet300", "--threshold", bad, "-o", str(tmp_path / "r.csr")])
    assert "not a finite number" in _one_error_line(res, 2)
    assert list(tmp_path.iterdir()) == []


# --- 4: a wrong --input-shape is one line that says what the model takes ---------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["prune", "bundled:lenet5", "--input-shape", "3,32,32"], "'conv1' (Conv2d) takes 1 input channels"),
        (["prune", "bundled:lenet5", "--input-shape", "784"], "e.g. --input-shape 1,H,W"),
        (["prune", "bundled:lenet300", "--input-shape", "3,32,32"], "'fc1' (Linear) takes 784 input features"),
        (["bench", "bundled:lenet5", "--input-shape", "3,32,32", "--contenders", "torch-dense"], "1 input channels"),
    ],
)
def test_wrong_input_shape_names_what_the_model_expects(
    args: list[str], expected: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = ["-o", str(tmp_path / "m.pt2")] if args[0] == "prune" else ["--json-out", str(tmp_path / "b.json")]
    res = CliRunner().invoke(main, [*args, *out])
    line = _one_error_line(res, 2)  # exit 2, like a missing --input-shape
    assert "Invalid value for '--input-shape'" in line and "does not run through" in line
    assert expected in line
    assert "input_shape" not in line.replace("--input-shape", "")
    assert list(tmp_path.iterdir()) == []
    # Nothing went around click to the real stderr either (torch's ShapeProp prints its own traceback there).
    assert "Traceback" not in capfd.readouterr().err


# --- 5: --plot without matplotlib fails before any work ---------------------------------------------------


def _no_bench(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the benchmark ran although the command should have stopped before it")


@pytest.mark.parametrize("command", ["analyze", "bench"])
def test_plot_without_matplotlib_fails_first(command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setattr(bench_mod, "bench", _no_bench)
    monkeypatch.setattr(analysis_mod, "analyze", _no_bench)
    res = CliRunner().invoke(main, [command, "bundled:lenet5", "--plot", str(tmp_path / "p.png")])
    line = _one_error_line(res, 1)
    assert "matplotlib" in line and "pip install 'svdcompress[plot]'" in line and "--plot" in line
    assert list(tmp_path.iterdir()) == []


def test_plot_api_without_matplotlib_raises_own_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = svdcompress.analyze(_Tiny())
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match=r"svdcompress\[plot\]"):
        report.plot(tmp_path / "h.png")
    assert list(tmp_path.iterdir()) == []


# --- 6: a pickled model whose class cannot be imported ----------------------------------------------------


@pytest.mark.parametrize("module", ["__main__", "issue12_gone_module"])
def test_unimportable_pickled_class_is_named(module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def init(self: nn.Module) -> None:
        nn.Module.__init__(self)
        self.fc = LinearSVDO(4, 2)

    resnet = type("ResNet18", (nn.Module,), {"__init__": init, "__module__": module})
    ckpt = tmp_path / "whole.pt"
    with monkeypatch.context() as m:  # the class is importable while saving, gone afterwards (a fresh process)
        m.setitem(sys.modules, module, sys.modules.get(module) or ModuleType(module))
        m.setattr(sys.modules[module], "ResNet18", resnet, raising=False)
        torch.save(resnet(), ckpt)
    before = _digest(ckpt)
    line = _one_error_line(CliRunner().invoke(main, ["analyze", str(ckpt), "--trust-pickle"]), 1)
    assert f"the pickled model's class ResNet18 from module {module} cannot be imported" in line
    assert "--model package.module:factory" in line and "state_dict" in line
    assert "corrupt" not in line
    assert _digest(ckpt) == before


# --- 7: odd option values ---------------------------------------------------------------------------------


def _fake_report() -> BenchReport:
    results = [
        BenchResult(c, b, t, 10.0 * b * (i + 1), 12.0 * b, 1e5, 1000)
        for i, c in enumerate(("torch-dense", "csr-runtime"))
        for b in (1, 16, 256)
        for t in (1, 2)
    ]
    return BenchReport(results, machine={"repeats": 3}, versions={}, model={"name": "lenet5"})


@pytest.fixture
def fake_bench(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def fake(*args: Any, **kwargs: Any) -> BenchReport:
        seen.update(kwargs)
        return _fake_report()

    monkeypatch.setattr(bench_mod, "bench", fake)
    return seen


def test_more_threads_than_cores_warns(fake_bench: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_mod, "_cores", lambda: 2)
    res = CliRunner().invoke(main, ["bench", "bundled:lenet5", "--threads", "1,64"])
    assert res.exit_code == 0, res.output
    assert "Warning: --threads 64 is more than the 2 CPU core(s)" in res.stderr
    assert fake_bench["config"].threads == (1, 64)
    quiet = CliRunner().invoke(main, ["bench", "bundled:lenet5", "--threads", "2"])
    assert "Warning" not in quiet.output


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, a directory where no file can be created")
@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["export", "bundled:lenet300", "-o", "/proc/x.onnx"], "-o"),
        (["analyze", "bundled:lenet300", "--plot", "/proc/h.png"], "--plot"),
        (["analyze", "bundled:lenet300", "--json-out", "/proc/r.json"], "--json-out"),
    ],
)
def test_uncreatable_output_names_its_option_and_no_temporary(args: list[str], flag: str) -> None:
    line = _one_error_line(CliRunner().invoke(main, args), 1)
    assert f"{args[-1]}: cannot create a file in /proc" in line
    assert f"choose another {flag} path" in line
    assert ".tmp" not in line and ".probe" not in line


@pytest.mark.parametrize(("suffix", "magic"), [(".jpg", b"\xff\xd8\xff"), (".svg", b"<?xml"), (".png", b"\x89PNG")])
def test_plot_format_follows_the_suffix(suffix: str, magic: bytes, tmp_path: Path) -> None:
    out = tmp_path / f"h{suffix}"
    res = CliRunner().invoke(main, ["analyze", "bundled:lenet300", "--plot", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


# --- 8: --json prints, --json-out writes, '-' is stdout ---------------------------------------------------


@pytest.mark.usefixtures("fake_bench")
def test_json_convention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for args in (["bench", "bundled:lenet5", "--json"], ["bench", "bundled:lenet5", "--json-out", "-"]):
        res = runner.invoke(main, args)
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["model"]["name"] == "lenet5"  # stdout is the JSON and nothing else
    res = runner.invoke(main, ["analyze", "bundled:lenet300", "--json"])
    assert json.loads(res.stdout)["source"] == "bundled:lenet300"
    res = runner.invoke(main, ["analyze", "bundled:lenet300", "--json-out", "-"])
    assert json.loads(res.stdout)["threshold"] == 3.0 and "threshold log α" in res.stderr
    assert list(tmp_path.iterdir()) == []  # no file named '-'
    res = runner.invoke(main, ["bench", "bundled:lenet5", "--json-out", "b.json"])
    assert res.exit_code == 0, res.output
    assert "| contender |" in res.stdout and "wrote b.json" in res.stderr
    assert json.loads((tmp_path / "b.json").read_text())["results"]
    res = runner.invoke(main, ["prune", "bundled:lenet300", "-o", "-"])
    assert "is for --json-out" in _one_error_line(res, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]


# --- 9: the progress bar only on a terminal, never with --quiet -------------------------------------------


@pytest.mark.parametrize(
    ("tty", "quiet", "progress"), [(False, False, False), (True, False, True), (True, True, False)]
)
def test_progress_bar_only_on_a_terminal(
    tty: bool, quiet: bool, progress: bool, fake_bench: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_mod, "_stderr_is_tty", lambda: tty)
    res = CliRunner().invoke(main, ["bench", "bundled:lenet5", *(["--quiet"] if quiet else [])])
    assert res.exit_code == 0, res.output
    assert fake_bench["progress"] is progress


# --- 11 and 12: help texts and python -m svdcompress ------------------------------------------------------


@pytest.mark.parametrize("command", ["analyze", "prune", "export", "bench"])
def test_help_says_what_ckpt_may_be(command: str) -> None:
    res = CliRunner().invoke(main, [command, "--help"])
    text = " ".join(res.output.split())
    assert "bundled:lenet5" in text and "bundled:lenet300" in text and ".safetensors" in text
    options = main.commands[command].params  # type: ignore[attr-defined]
    undocumented = [p.opts for p in options if isinstance(p, cli_mod.click.Option) and not p.help]
    assert undocumented == []


def test_python_dash_m_runs_the_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "svdcompress", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: svdcompress ") and "analyze" in proc.stdout


# --- 14: one size line, kB ----------------------------------------------------------------------------


def test_export_prints_one_line_with_one_ratio(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["export", "bundled:lenet300", "--format", "onnx", "-o", str(tmp_path / "m.onnx")])
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1, res.output
    trained = torch.load(bundled_checkpoint("lenet300"), weights_only=True)["provenance"]["compression"]
    assert lines[0].count("smaller") == 1 and f"parameter compression {trained:.1f}×" in lines[0], lines[0]
    assert " kB " in lines[0] and "KB" not in lines[0]


# --- 15: plots ------------------------------------------------------------------------------------------


@pytest.fixture
def captured_figure(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    got: dict[str, Any] = {}

    def keep(fig: Any, path: Any, **kwargs: Any) -> Path:
        got["fig"] = fig
        return Path(path)

    monkeypatch.setattr(plot_mod, "save_figure", keep)
    return got


def test_histogram_title_and_kept_side(captured_figure: dict[str, Any], tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["analyze", "bundled:lenet300", "--plot", str(tmp_path / "h.png")])
    assert res.exit_code == 0, res.output
    fig = captured_figure["fig"]
    assert fig._suptitle.get_text() == "log α per layer: bundled:lenet300"
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["kept: log α < 3", "removed: log α ≥ 3", "threshold 3"]


def test_bench_plot_axes_legend_and_styles(captured_figure: dict[str, Any], tmp_path: Path) -> None:
    _fake_report().plot(tmp_path / "b.png")
    fig = captured_figure["fig"]
    a, b = fig.axes
    assert a.get_shared_y_axes().joined(a, b)
    assert [t.get_text() for t in a.get_xticklabels()] == ["1", "16", "256"]
    assert a.get_legend() is None and len(fig.legends) == 1  # below the panels, not over the lines
    styles = {(line.get_marker(), line.get_linestyle()) for line in a.get_lines()}
    assert len(styles) == len(a.get_lines()) == 2
