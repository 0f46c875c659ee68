# Stubs for the compiled forward kernels (src/_forward.pyx). Arrays of the
# input type T are float32 or float64; x/y are channels-first (N, C, S) or
# channels-last (M, C) views with a contiguous last axis. Statistics are
# float64 (C,) vectors or (k, C) tables.
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

T = TypeVar("T", np.float32, np.float64)
F64 = NDArray[np.float64]

def moments(x: NDArray[T], out: F64, nthreads: int) -> int: ...
def normalize(x: NDArray[T], y: NDArray[T], weight: NDArray[T] | None, bias: NDArray[T] | None,
              eps: float, mean: NDArray[np.float32] | F64, var: NDArray[np.float32] | F64,
              count: float, relu_coef: NDArray[T] | None, nthreads: int) -> None: ...
def train_forward(x: NDArray[T], y: NDArray[T], weight: NDArray[T] | None,
                  bias: NDArray[T] | None, eps: float, stats: F64,
                  relu_coef: NDArray[T] | None, nthreads: int) -> None: ...
def moved_running_stats(running_mean: NDArray[T], running_var: NDArray[T], mean: F64, var: F64,
                        var_scale: float, momentum: float
                        ) -> tuple[NDArray[T], NDArray[T], NDArray[np.bool_] | None]: ...
