# Stubs for the compiled backward kernels (src/_backward.pyx); see _forward.pyi
# for D and P. backward and grad_input return whether a value of dx (2-byte
# data) is +-inf (past the type's range, or from an infinite input).
from typing import Any

import numpy as np
from numpy.typing import NDArray

D = NDArray[Any]
P = NDArray[np.float32] | NDArray[np.float64]
F64 = NDArray[np.float64]

def grad_sums(dy: D, x: D, mean: F64, out: F64, relu_coef: P | None, nthreads: int) -> None: ...
def backward(dy: D, x: D, dx: D, stats: F64, weight: P | None, batch_stats: bool,
             grads: P | None, relu_coef: P | None, nthreads: int) -> bool: ...
def grad_input(dy: D, x: D, dx: D, stats: F64, weight: P | None, sums: F64, count: float,
               relu_coef: P | None, nthreads: int) -> bool: ...
