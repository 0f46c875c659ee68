"""Forward/backward on canonical views: the one place that calls the kernels.

Statistics travel as float64 (C,) arrays whatever the data type.
"""
import numpy as np

from . import _backward, _forward
from ._threads import threads_for


def train_forward(canon, weight, bias, eps, running_mean=None, running_var=None, momentum=0.0,
                  out=None):
    """Normalise with batch statistics; update the running statistics when given.

    Returns (y, stats) with stats a float64 (3, C) array [mean, invstd, biased var],
    so stats[:2] is what backward takes.
    """
    view = canon.view
    y, yv = canon.output(out)
    stats = np.empty((3, view.shape[1]))
    _forward.train_forward(view, weight, bias, eps, yv, stats, running_mean, running_var,
                           momentum, threads_for(view.size))
    return y, stats


def normalize(canon, mean, var, eps, weight, bias, out=None):
    """y = weight * (x - mean) / sqrt(var + eps) + bias; mean/var float32 or float64 (C,)."""
    view = canon.view
    y, yv = canon.output(out)
    _forward.normalize(view, mean, var, eps, weight, bias, yv, threads_for(view.size))
    return y


def moments(canon):
    """(count, mean, m2) per channel, m2 = sum of squared deviations, float64."""
    view = canon.view
    out = np.empty((2, view.shape[1]))
    count = _forward.moments(view, out, threads_for(view.size))
    return count, out[0], out[1]


def backward(canon, dy, stats, weight, batch_stats, param_grads=True, out=None):
    """(dx, grads) for dy of the user's shape; grads = [dweight, dbias] (2, C) or None.

    stats: float64 (2, C) [mean, invstd]; batch_stats: they are the batch's own
    (training), else fixed (eval).
    """
    view = canon.view
    dyv = canon.like(dy)
    dx, dxv = canon.output(out)
    grads = np.empty((2, view.shape[1]), view.dtype) if param_grads else None
    _backward.backward(dyv, view, stats, weight, batch_stats, dxv, grads, threads_for(view.size))
    return dx, grads


def grad_sums(canon, dy, mean):
    """sum(dy) and sum(dy * (x - mean)) per channel, float64 (2, C)."""
    view = canon.view
    out = np.empty((2, view.shape[1]))
    _backward.grad_sums(canon.like(dy), view, mean, out, threads_for(view.size))
    return out


def fixed_stats(mean, var, eps):
    """[mean, invstd] float64 (2, C) from running statistics (eval-mode backward)."""
    stats = np.empty((2, mean.shape[0]))
    stats[0] = mean
    stats[1] = var
    stats[1] += eps
    np.sqrt(stats[1], out=stats[1])
    np.divide(1.0, stats[1], out=stats[1])
    return stats
