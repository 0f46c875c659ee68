"""Forward/backward on canonical views: the one place that calls the kernels.

Statistics travel as float64 (C,) arrays whatever the data type; weight,
coefficient tables and parameter gradients have the type the data are
computed in (``_dtypes.param_dtype_for``). Results go to an ``Output``
(``Canonical.output``), which the caller prepares so that a bad ``out`` is
refused before any work; outputs of 2-byte data past the type's range
become +-inf with a RuntimeWarning. Nothing here changes layer state:
running statistics are computed as new arrays for the caller to commit.
"""
import warnings

import numpy as np

from . import _backward, _forward
from ._dtypes import param_dtype_for, user_stacklevel, warn_beyond_range
from ._moments import Moments
from ._threads import threads_for


def warn_running_unchanged(kept, dtype):
    """cbn.functional.batch_norm's RuntimeWarning naming the channels (a bool
    mask) whose running statistics were left unchanged, for its caller."""
    warnings.warn(f"batch_norm: channel(s) {np.flatnonzero(kept).tolist()} have batch "
                  f"statistics that are not finite (NaN or Inf in the input) or running "
                  f"statistics that would overflow {dtype}; their running statistics "
                  f"were left unchanged", RuntimeWarning, stacklevel=user_stacklevel())


def checked_range(overflowed, result, what, sums=None):
    """Warn when the kernels flagged a 2-byte output that is +-inf though the
    values it was computed from elementwise were finite (they tell that
    before an in-place output writes over its inputs): past the type's range.

    sums: with batch statistics, backward's per-channel sums (2, C). An
    infinite dy makes its channel's sums, so every dx of the channel, +-inf
    or NaN, whatever that dx's own dy and x: only a +-inf in a channel whose
    sums are finite (all its inputs finite) was past the range. Only flagged
    calls pay for that check."""
    if not overflowed:
        return
    if sums is not None:
        finite = np.isfinite(sums).all(axis=0)
        others = (0,) + tuple(range(2, result.ndim))   # views: (N, C, S) or (M, C)
        if not (np.isinf(result).any(axis=others) & finite).any():
            return
    warn_beyond_range(result.dtype, what)


def train_forward(canon, weight, bias, eps, output, relu=False):
    """Normalise with batch statistics.

    Returns (y, stats, coef): stats is a float64 (3, C) array [mean, invstd,
    biased var] (stats[:2] is what backward takes); coef the (3, C) forward
    coefficients when relu (for backward), else None. Statistics are not
    finite only for channels holding NaN or Inf.
    """
    view = canon.view
    C = view.shape[1]
    stats = np.empty((3, C))
    coef = np.empty((3, C), param_dtype_for(view.dtype)) if relu else None
    overflowed = _forward.train_forward(view, output.view, weight, bias, eps, stats, coef,
                                        threads_for(view.size))
    checked_range(overflowed, output.view, "y")
    return output.result(), stats, coef


def normalize(canon, mean, var, eps, weight, bias, output, relu=False, count=0.0):
    """y = weight * (x - mean) / sqrt(var + eps) + bias (mean/var float32 or float64 (C,)).

    count: values per channel when mean and var are the batch's own (biased)
    statistics, else 0 (running statistics). Returns (y, coef) as train_forward.
    """
    view = canon.view
    coef = np.empty((3, view.shape[1]), param_dtype_for(view.dtype)) if relu else None
    overflowed = _forward.normalize(view, output.view, weight, bias, eps, mean, var, count, coef,
                                    threads_for(view.size))
    checked_range(overflowed, output.view, "y")
    return output.result(), coef


def moments(canon):
    """Per-channel Moments (count, mean, M2) of the view, in float64."""
    view = canon.view
    out = np.empty((2, view.shape[1]))
    count = _forward.moments(view, out, threads_for(view.size))
    return Moments(count, out[0], out[1])


def backward(canon, dy, stats, weight, batch_stats, output, param_grads=True, relu=None):
    """(dx, grads) for dy of the user's shape; grads = [sum(g * xhat), sum(g)] (2, C) or None.

    stats: float64 (2, C) [mean, invstd]; batch_stats: they are the batch's own
    (training), else fixed (eval). relu: the forward's coefficients of a
    fused ReLU (g = dy where its input was positive), else None.
    """
    view = canon.view
    dyv = canon.like(dy)
    # (with batch statistics the range check of 2-byte dx needs the sums, in grads)
    grads = (np.empty((2, view.shape[1]), param_dtype_for(view.dtype))
             if param_grads or (batch_stats and view.dtype.itemsize == 2) else None)
    overflowed = _backward.backward(dyv, view, output.view, stats, weight, batch_stats, grads,
                                    relu, threads_for(view.size))
    checked_range(overflowed, output.view, "dx", grads if batch_stats else None)
    return output.result(), grads if param_grads else None


def grad_sums(canon, dy, mean, relu=None):
    """sum(g) and sum(g * (x - mean)) per channel, float64 (2, C)."""
    view = canon.view
    out = np.empty((2, view.shape[1]))
    _backward.grad_sums(canon.like(dy), view, mean, out, relu, threads_for(view.size))
    return out


def moved_running_stats(running_mean, running_var, mean, var, momentum, var_scale=1.0):
    """PyTorch's update as new arrays: r <- (1 - momentum) * r + momentum * batch
    for mean and var * var_scale (float64 (C,); var_scale e.g. count / (count
    - 1) for the unbiased variance), in float64, rounded once to the running
    statistics' dtype. Channels whose new values are not finite (a NaN/Inf
    batch, or a value past the dtype's range) keep their current values
    instead of being poisoned for the rest of training. Returns (mean, var,
    kept): kept is a bool (C,) mask of those channels, or None if there are
    none."""
    return _forward.moved_running_stats(running_mean, running_var, mean, var, var_scale,
                                        momentum)


def moving_average(running, target, momentum):
    """(1 - momentum) * running + momentum * target, in float64 (C,)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return ((1.0 - momentum) * np.asarray(running, np.float64)
                + momentum * np.asarray(target, np.float64))


def rounded_running_stats(running_mean, running_var, mean, var):
    """New running statistics: float64 mean and var rounded once to the
    running statistics' dtype, as new arrays. Channels where either is not
    finite keep their current values. Returns (mean, var, kept) as
    moved_running_stats."""
    dtype = running_mean.dtype
    with np.errstate(over="ignore", invalid="ignore"):
        new_mean = np.asarray(mean, np.float64).astype(dtype)
        new_var = np.asarray(var, np.float64).astype(dtype)
    kept = ~(np.isfinite(new_mean) & np.isfinite(new_var))
    if not kept.any():
        return new_mean, new_var, None
    new_mean[kept] = running_mean[kept]
    new_var[kept] = running_var[kept]
    return new_mean, new_var, kept


def fixed_stats(mean, var, eps):
    """[mean, invstd] float64 (2, C) from running statistics (eval-mode backward)."""
    stats = np.empty((2, mean.shape[0]))
    stats[0] = mean
    stats[1] = var
    stats[1] += eps
    np.sqrt(stats[1], out=stats[1])
    np.divide(1.0, stats[1], out=stats[1])
    return stats


def grad_input(canon, dy, stats, weight, sums, count, output, relu=None):
    """dx of training-mode batch norm from given sums [sum(g), sum(g * (x - mean))]
    (float64 (2, C)) and count (values per channel), e.g. over several processes."""
    view = canon.view
    dyv = canon.like(dy)
    overflowed = _backward.grad_input(dyv, view, output.view, stats, weight, sums, float(count),
                                      relu, threads_for(view.size))
    checked_range(overflowed, output.view, "dx", sums)
    return output.result()
