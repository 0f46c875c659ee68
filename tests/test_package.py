"""The installed package: version, public names, typing stubs."""
from importlib import metadata
from pathlib import Path

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
    for module in ("_forward", "_backward", "_runtime"):
        assert (root / f"{module}.pyi").exists(), module
