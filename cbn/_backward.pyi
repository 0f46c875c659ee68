# Stubs for the compiled backward kernels (src/_backward.pyx); see _forward.pyi.
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

T = TypeVar("T", np.float32, np.float64)
F64 = NDArray[np.float64]

def grad_sums(dy: NDArray[T], x: NDArray[T], mean: F64, out: F64, relu_coef: NDArray[T] | None,
              nthreads: int) -> None: ...
def backward(dy: NDArray[T], x: NDArray[T], dx: NDArray[T], stats: F64,
             weight: NDArray[T] | None, batch_stats: bool, grads: NDArray[T] | None,
             relu_coef: NDArray[T] | None, nthreads: int) -> None: ...
def grad_input(dy: NDArray[T], x: NDArray[T], dx: NDArray[T], stats: F64,
               weight: NDArray[T] | None, sums: F64, count: float,
               relu_coef: NDArray[T] | None, nthreads: int) -> None: ...
