# Stubs for the compiled forward kernels (src/_forward.pyx). Data arrays D
# (x, y) are float32, float64, float16 or bfloat16 (ml_dtypes: no numpy scalar
# type to name); tables P (weight, bias, relu_coef) have the type the data are
# computed in, float32 or float64 (float32 for the 2-byte types). x/y are
# channels-first (N, C, S) or channels-last (M, C) views with a contiguous
# last axis. Statistics are float64 (C,) vectors or (k, C) tables. normalize
# and train_forward return whether an output of 2-byte data is +-inf (past the
# type's range, or from an infinite input).
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

D = NDArray[Any]
P = NDArray[np.float32] | NDArray[np.float64]
T = TypeVar("T", np.float32, np.float64)
F64 = NDArray[np.float64]

def moments(x: D, out: F64, nthreads: int) -> int: ...
def normalize(x: D, y: D, weight: P | None, bias: P | None, eps: float,
              mean: NDArray[np.float32] | F64, var: NDArray[np.float32] | F64, count: float,
              relu_coef: P | None, nthreads: int) -> bool: ...
def train_forward(x: D, y: D, weight: P | None, bias: P | None, eps: float, stats: F64,
                  relu_coef: P | None, nthreads: int) -> bool: ...
def moved_running_stats(running_mean: NDArray[T], running_var: NDArray[T], mean: F64, var: F64,
                        var_scale: float, momentum: float
                        ) -> tuple[NDArray[T], NDArray[T], NDArray[np.bool_] | None]: ...
