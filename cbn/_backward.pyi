# Stubs for the compiled backward kernels (src/_backward.pyx); see _forward.pyi.
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

T = TypeVar("T", np.float32, np.float64)
F64 = NDArray[np.float64]

def grad_sums_channels_first(dy: NDArray[T], x: NDArray[T], mean: F64, sum_dy: F64,
                             sum_dy_xmu: F64, nthreads: int) -> None: ...
def grad_sums_channels_last(dy: NDArray[T], x: NDArray[T], mean: F64, sum_dy: F64,
                            sum_dy_xmu: F64, nthreads: int) -> None: ...
def backward_channels_first(dy: NDArray[T], x: NDArray[T], mean: F64, invstd: F64,
                            weight: NDArray[T] | None, batch_stats: bool, dx: NDArray[T],
                            grad_weight: NDArray[T] | None, grad_bias: NDArray[T] | None,
                            nthreads: int) -> None: ...
def backward_channels_last(dy: NDArray[T], x: NDArray[T], mean: F64, invstd: F64,
                           weight: NDArray[T] | None, batch_stats: bool, dx: NDArray[T],
                           grad_weight: NDArray[T] | None, grad_bias: NDArray[T] | None,
                           nthreads: int) -> None: ...
