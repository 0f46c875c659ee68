"""The installed package: version, public names, typing stubs."""
import ast
import importlib
import inspect
from importlib import metadata
from pathlib import Path

import pytest

import cbn


def test_version_matches_metadata():
    assert cbn.__version__ == metadata.version("cbn")


def test_public_api_names():
    for name in ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "functional", "set_num_threads",
                 "get_num_threads", "openmp_enabled", "__version__"]:
        assert hasattr(cbn, name), name
    for name in ["batch_norm", "batch_norm_forward", "batch_norm_backward"]:
        assert callable(getattr(cbn.functional, name)), name


def test_typing_stubs_ship_with_the_compiled_modules():
    root = Path(cbn.__file__).parent
    assert (root / "py.typed").exists()
    for module in ("_forward", "_backward", "_runtime", "_sums", "_call"):
        assert (root / f"{module}.pyi").exists(), module


@pytest.mark.parametrize("module", ["_forward", "_backward", "_runtime", "_sums", "_call"])
def test_typing_stubs_match_the_compiled_functions(module):
    """Every public function of a compiled module has a stub with its parameter names."""
    compiled = importlib.import_module(f"cbn.{module}")
    stub = ast.parse((Path(cbn.__file__).parent / f"{module}.pyi").read_text())
    stubbed = {node.name: [a.arg for a in node.args.args + node.args.kwonlyargs]
               for node in stub.body if isinstance(node, ast.FunctionDef)}
    public = {name: fn for name, fn in vars(compiled).items()
              if callable(fn) and not name.startswith("_") and not isinstance(fn, type)}
    assert sorted(stubbed) == sorted(public)
    for name, fn in public.items():
        assert list(inspect.signature(fn).parameters) == stubbed[name], name


def test_a_source_tree_without_compiled_kernels_says_so(tmp_path):
    """Importing cbn from a checkout or unpacked sdist that was never built
    names the problem and the fix, not a misleading circular import."""
    import shutil
    import subprocess
    import sys

    tree = tmp_path / "cbn"
    shutil.copytree(Path(cbn.__file__).parent, tree,
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    # -S: no site-packages, so that an installed (or editable) cbn cannot answer first
    result = subprocess.run([sys.executable, "-S", "-c", "import cbn"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "compiled kernels are not built" in result.stderr
    assert "pip install -e ." in result.stderr
