"""Forward/backward on canonical views: the one place that calls the kernels.

Statistics travel as float64 (C,) arrays whatever the data type.
"""
import numpy as np

from . import _backward, _forward
from ._moments import Moments
from ._threads import threads_for


def train_forward(canon, weight, bias, eps, running_mean=None, running_var=None, momentum=0.0,
                  out=None, relu=False):
    """Normalise with batch statistics; update the running statistics when given.

    Returns (y, stats, skipped, coef): stats is a float64 (3, C) array
    [mean, invstd, biased var] (stats[:2] is what backward takes); skipped the
    number of channels whose running statistics were left alone (not finite);
    coef the (3, C) forward coefficients when relu (for backward), else None.
    """
    view = canon.view
    C = view.shape[1]
    y, yv = canon.output(out)
    stats = np.empty((3, C))
    coef = np.empty((3, C), view.dtype) if relu else None
    skipped = _forward.train_forward(view, weight, bias, eps, yv, stats, running_mean, running_var,
                                     momentum, threads_for(view.size), relu, coef)
    return y, stats, skipped, coef


def normalize(canon, mean, var, eps, weight, bias, out=None, relu=False):
    """y = weight * (x - mean) / sqrt(var + eps) + bias (mean/var float32 or float64 (C,)).

    Returns (y, coef) as train_forward.
    """
    view = canon.view
    y, yv = canon.output(out)
    coef = np.empty((3, view.shape[1]), view.dtype) if relu else None
    _forward.normalize(view, mean, var, eps, weight, bias, yv, threads_for(view.size), relu, coef)
    return y, coef


def moments(canon):
    """Per-channel Moments (count, mean, M2) of the view, in float64."""
    view = canon.view
    out = np.empty((2, view.shape[1]))
    count = _forward.moments(view, out, threads_for(view.size))
    return Moments(count, out[0], out[1])


def backward(canon, dy, stats, weight, batch_stats, param_grads=True, out=None, relu=None):
    """(dx, grads) for dy of the user's shape; grads = [sum(g * xhat), sum(g)] (2, C) or None.

    stats: float64 (2, C) [mean, invstd]; batch_stats: they are the batch's own
    (training), else fixed (eval). relu: the forward's coefficients of a
    fused ReLU (g = dy where its input was positive), else None.
    """
    view = canon.view
    dyv = canon.like(dy)
    dx, dxv = canon.output(out)
    grads = np.empty((2, view.shape[1]), view.dtype) if param_grads else None
    _backward.backward(dyv, view, stats, weight, batch_stats, dxv, grads, threads_for(view.size),
                       relu)
    return dx, grads


def grad_sums(canon, dy, mean, relu=None):
    """sum(g) and sum(g * (x - mean)) per channel, float64 (2, C)."""
    view = canon.view
    out = np.empty((2, view.shape[1]))
    _backward.grad_sums(canon.like(dy), view, mean, out, threads_for(view.size), relu)
    return out


def update_running_stats(running_mean, running_var, mean, unbiased_var, momentum):
    """In place, channels with finite statistics only; returns how many were skipped."""
    return _forward.update_running_stats(running_mean, running_var,
                                         np.ascontiguousarray(mean, dtype=np.float64),
                                         np.ascontiguousarray(unbiased_var, dtype=np.float64),
                                         momentum)


def fixed_stats(mean, var, eps):
    """[mean, invstd] float64 (2, C) from running statistics (eval-mode backward)."""
    stats = np.empty((2, mean.shape[0]))
    stats[0] = mean
    stats[1] = var
    stats[1] += eps
    np.sqrt(stats[1], out=stats[1])
    np.divide(1.0, stats[1], out=stats[1])
    return stats


def grad_input(canon, dy, stats, weight, sums, count, out=None, relu=None):
    """dx of training-mode batch norm from given sums [sum(g), sum(g * (x - mean))]
    (float64 (2, C)) and count (values per channel), e.g. over several processes."""
    view = canon.view
    dx, dxv = canon.output(out)
    _backward.grad_input(canon.like(dy), view, stats, weight, sums, float(count), True, dxv,
                         threads_for(view.size), relu)
    return dx
