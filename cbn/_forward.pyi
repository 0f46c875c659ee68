# Stubs for the compiled forward kernels (src/_forward.pyx). Arrays of the
# input type T are float32 or float64; x/y are channels-first (N, C, S) or
# channels-last (M, C) views with a contiguous last axis.
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

T = TypeVar("T", np.float32, np.float64)
F64 = NDArray[np.float64]

def moments_channels_first(x: NDArray[T], mean: F64, m2: F64, nthreads: int) -> int: ...
def moments_channels_last(x: NDArray[T], mean: F64, m2: F64, nthreads: int) -> int: ...
def normalize_channels_first(x: NDArray[T], mean: F64, var: F64, eps: float,
                             weight: NDArray[T] | None, bias: NDArray[T] | None,
                             y: NDArray[T], nthreads: int) -> None: ...
def normalize_channels_last(x: NDArray[T], mean: F64, var: F64, eps: float,
                            weight: NDArray[T] | None, bias: NDArray[T] | None,
                            y: NDArray[T], nthreads: int) -> None: ...
def train_forward_channels_first(x: NDArray[T], weight: NDArray[T] | None,
                                 bias: NDArray[T] | None, eps: float, y: NDArray[T],
                                 mean: F64, var: F64, invstd: F64, nthreads: int) -> None: ...
def train_forward_channels_last(x: NDArray[T], weight: NDArray[T] | None,
                                bias: NDArray[T] | None, eps: float, y: NDArray[T],
                                mean: F64, var: F64, invstd: F64, nthreads: int) -> None: ...
def update_running_stats(running_mean: NDArray[T], running_var: NDArray[T], mean: F64,
                         var: F64, count: float, momentum: float) -> None: ...
