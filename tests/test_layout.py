"""The package's shape: the public API comes from one table, stages import only the stages before them, and the
modules that promise not to load torch keep the promise."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import svdcompress
from svdcompress import InvalidInputError, prepare, prune
from svdcompress.nn.zoo import lenet300

PKG = Path(svdcompress.__file__).parent

# The pipeline, bottom to top: a module may import from its own stage and the stages listed before it, never after.
LAYERS = (
    ("_version", "errors", "_io", "_inputs", "_verify", "_plot", "ops"),
    ("runtime",),
    ("checkpoint",),
    ("nn",),
    ("pruning",),
    ("tuning",),
    ("pipeline",),
    ("export",),
    ("benchmark",),
    ("cli", "__main__", "__init__"),
)
_RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _stage(module: str) -> str:
    """``svdcompress.pruning.masking`` -> ``pruning``; ``svdcompress`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[str]:
    """The svdcompress modules ``path`` imports, anywhere in the file (lazy imports count too)."""
    here = list(path.relative_to(PKG.parent).parts[:-1])  # the package the file is in
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("svdcompress"):
                continue
            if node.module is None:  # from . import name: name may be a module
                out += [f"{target}.{a.name}" for a in node.names]
            else:
                out.append(target)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("svdcompress")]
    return out


def test_every_stage_imports_only_stages_before_it() -> None:
    upward = []
    for path in sorted(PKG.rglob("*.py")):
        mod = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
        mine = "__init__" if path == PKG / "__init__.py" else _stage(mod)
        assert mine in _RANK, f"{path}: a module outside every stage of LAYERS; add its stage there"
        for target in _imports(path):
            theirs = _stage(target)
            if theirs in _RANK and _RANK[theirs] > _RANK[mine]:
                upward.append(f"{mod} -> {target}")
    assert upward == [], "imports that run against the pipeline:\n" + "\n".join(upward)


def test_public_api_comes_from_one_table() -> None:
    tree = ast.parse((PKG / "__init__.py").read_text())
    typed: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom)
                for a in imp.names:
                    assert a.asname == a.name, f"{a.name}: re-export it as itself"
                    typed[a.name] = imp.module or ""
    assert typed == svdcompress._EXPORTS
    assert sorted(svdcompress.__all__) == sorted([*svdcompress._EXPORTS, "__version__"])
    for name in svdcompress.__all__:
        assert getattr(svdcompress, name) is not None


def test_torch_free_modules_stay_torch_free() -> None:
    code = (
        "import sys; import svdcompress, svdcompress.cli, svdcompress.benchmark.config, svdcompress.runtime; "
        "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_prepare_resolves_once_and_refuses_before_any_work(tmp_path: Path) -> None:
    net = lenet300(svdo=True)
    p = prepare(net, input_shape=(1, 28, 28), threshold=2)
    assert (p.threshold, p.input_shape, p.tuned, p.selection()) == (2.0, (1, 28, 28), None, None)
    assert prepare(net, example_inputs=torch.zeros(3, 1, 28, 28)).input_shape == (1, 28, 28)
    cases = [
        ({"threshold": "auto"}, "data", "held-out data"),
        ({"threshold": 3.0, "data": "fashion-mnist:val"}, "data", "threshold='auto'"),
        ({"threshold": "auto", "data": "fashion-mnist:test"}, None, "test split"),
        ({"threshold": float("nan")}, None, "finite"),
        ({}, "input_shape", "input shape"),
    ]
    for kwargs, param, fragment in cases:
        with pytest.raises(InvalidInputError, match=fragment) as info:
            prepare(net, **kwargs)  # type: ignore[arg-type]
        if param is not None:
            assert info.value.param == param


def test_the_flat_layout_zoo_path_still_builds_models() -> None:
    """``--model svdcompress.zoo:lenet5`` (the 0.1 layout) keeps working: users have it in scripts."""
    from svdcompress.nn.architecture import _import_factory

    assert _import_factory("svdcompress.zoo:lenet5") is _import_factory("svdcompress.nn.zoo:lenet5")


def test_errors_name_the_parameter_they_concern() -> None:
    from svdcompress.errors import InputShapeError, OutputExistsError
    from svdcompress.tuning.dataspec import parse_data_spec

    with pytest.raises(InvalidInputError) as info:
        parse_data_spec("nope:val")
    assert info.value.param == "data"
    with pytest.raises(InvalidInputError) as info:
        prune(lenet300(svdo=True), input_shape=(1, 28, 28), threshold=float("inf"))
    assert info.value.param == "threshold"
    assert InputShapeError("x").param == "input_shape" and OutputExistsError("x").param == "path"
    assert InvalidInputError("x", param="round_to").param == "round_to"
