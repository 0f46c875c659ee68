"""cbn: batch normalization for NumPy arrays on the CPU.

Cython/OpenMP kernels for float32, float64, float16 and bfloat16, NCHW and NHWC layouts, with
statistics that stay exact in float32 when |mean| >> std.
"""
try:
    from . import _runtime  # noqa: F401  (the compiled kernels: first, to say if absent)
except ImportError as exc:
    import os as _os

    _here = _os.path.dirname(_os.path.abspath(__file__))
    if not any(name.startswith("_runtime.") and not name.endswith(".pyi")
               for name in _os.listdir(_here)):
        raise ImportError(
            f"cbn: the compiled kernels are not built in {_here} (a source tree?): build them "
            f"there with `python -m pip install -e .`, or install cbn and run Python from "
            f"another directory") from exc
    raise
from . import functional
from ._threads import get_num_threads, openmp_enabled, set_num_threads
from ._version import __version__
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .folding import fold_conv, fold_linear
from .precise import precise_statistics
from .renorm import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d
from .sync import SyncBatchNorm, allreduce_gradients

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "SyncBatchNorm",
    "allreduce_gradients",
    "fold_conv",
    "fold_linear",
    "precise_statistics",
    "functional",
    "get_num_threads",
    "openmp_enabled",
    "set_num_threads",
    "__version__",
]
