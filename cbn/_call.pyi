# Stubs for src/_call.pyx: the layers' compiled call path. forward and
# backward return None when a call is not the common case (the layer's
# Python path then runs it).
from typing import Callable

import numpy as np

class CompiledForward:
    x: np.ndarray
    layout: str
    batch_stats: bool
    overwritten: bool
    affine: bool
    stats: np.ndarray | None
    weight: np.ndarray | None
    parameters: np.ndarray | None
    eps: float
    relu_coef: np.ndarray | None
    converted: object

def set_enabled(value: bool) -> None: ...
def set_step_hook(at: int, hook: Callable[[int], object] | None) -> None: ...
def steps_reached() -> int: ...
def layer_call(self: object, x: object, out: object = None) -> np.ndarray: ...
def forward(layer: object, x: object, out: object) -> np.ndarray | None: ...
def backward(layer: object, dy: object, out: object) -> np.ndarray | None: ...
def batch_norm(x: object, running_mean: object, running_var: object, weight: object, bias: object,
               training: object, momentum: object, eps: object, layout: object,
               out: object) -> np.ndarray | None: ...
