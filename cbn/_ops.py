"""Forward/backward on canonical views: the one place that calls the kernels.

Statistics travel as float64 (C,) arrays whatever the data type: mean, biased
variance, and invstd = 1 / sqrt(var + eps).
"""
import numpy as np

from . import _backward, _forward
from ._layout import CHANNELS_FIRST
from ._threads import threads_for

_TRAIN = {True: _forward.train_forward_channels_first, False: _forward.train_forward_channels_last}
_NORMALIZE = {True: _forward.normalize_channels_first, False: _forward.normalize_channels_last}
_MOMENTS = {True: _forward.moments_channels_first, False: _forward.moments_channels_last}
_BACKWARD = {True: _backward.backward_channels_first, False: _backward.backward_channels_last}
_GRAD_SUMS = {True: _backward.grad_sums_channels_first, False: _backward.grad_sums_channels_last}


def train_forward(canon, weight, bias, eps):
    """Normalise with batch statistics: (y, mean, var, invstd)."""
    view = canon.view
    C = view.shape[1]
    y, yv = canon.empty(view.dtype)
    stats = np.empty((3, C))
    _TRAIN[canon.kind == CHANNELS_FIRST](view, weight, bias, eps, yv, stats[0], stats[1], stats[2],
                                         threads_for(view.size))
    return y, stats[0], stats[1], stats[2]


def normalize(canon, mean, var, eps, weight, bias):
    """y = weight * (x - mean) / sqrt(var + eps) + bias with given float64 statistics."""
    view = canon.view
    y, yv = canon.empty(view.dtype)
    _NORMALIZE[canon.kind == CHANNELS_FIRST](view, mean, var, eps, weight, bias, yv,
                                             threads_for(view.size))
    return y


def moments(canon):
    """(count, mean, m2) per channel, m2 = sum of squared deviations, all float64."""
    view = canon.view
    C = view.shape[1]
    out = np.empty((2, C))
    count = _MOMENTS[canon.kind == CHANNELS_FIRST](view, out[0], out[1], threads_for(view.size))
    return count, out[0], out[1]


def backward(canon, dy, mean, invstd, weight, batch_stats, param_grads=True):
    """(dx, grad_weight, grad_bias) for dy of the user's shape.

    batch_stats: mean/invstd are the batch's own (training), else fixed (eval).
    The parameter gradients are None when param_grads is False.
    """
    view = canon.view
    dyv = canon.like(dy)
    C = view.shape[1]
    dx, dxv = canon.empty(view.dtype)
    gw = np.empty(C, view.dtype) if param_grads else None
    gb = np.empty(C, view.dtype) if param_grads else None
    _BACKWARD[canon.kind == CHANNELS_FIRST](dyv, view, mean, invstd, weight, batch_stats, dxv, gw, gb,
                                            threads_for(view.size))
    return dx, gw, gb


def grad_sums(canon, dy, mean):
    """sum(dy) and sum(dy * (x - mean)) per channel, float64."""
    view = canon.view
    dyv = canon.like(dy)
    out = np.empty((2, view.shape[1]))
    _GRAD_SUMS[canon.kind == CHANNELS_FIRST](dyv, view, mean, out[0], out[1], threads_for(view.size))
    return out[0], out[1]


def update_running_stats(running_mean, running_var, mean, var, count, momentum):
    """PyTorch's update in place, with the unbiased batch variance."""
    _forward.update_running_stats(running_mean, running_var, mean, var, float(count), momentum)


def inverse_std(var, eps):
    return 1.0 / np.sqrt(np.asarray(var, dtype=np.float64) + eps)
