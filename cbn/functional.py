"""Functional batch normalization, mirroring ``torch.nn.functional.batch_norm``.

All functions take the channel axis from ``layout``: "NCHW" means axis 1,
"NHWC" the last axis, for inputs of any ndim >= 2. The dtype of ``x``
(float32 or float64) is the dtype of every other array argument and of the
results; statistics (``mean``, ``invstd``) are float64.
"""
import warnings

import numpy as np

from . import _ops
from ._layout import canonicalize, channel_axis, check_layout
from ._validation import (
    check_array,
    check_batch_for_statistics,
    check_channel_vector,
    check_eps,
    check_momentum,
    check_out_overlap,
    describe,
)

__all__ = ["batch_norm", "batch_norm_forward", "batch_norm_backward"]


def _check_x(x, layout, name="x"):
    check_layout(layout)
    check_array(x, name)
    if x.ndim < 2:
        raise ValueError(f"{name}: expected an array with at least 2 dimensions (N, C, ...), "
                         f"got {x.ndim}-D shape {x.shape}")
    return channel_axis(layout, x.ndim)


def _check_params(x, axis, weight, bias):
    C = x.shape[axis]
    if weight is not None:
        check_channel_vector(weight, "weight", x.dtype, C)
    if bias is not None:
        check_channel_vector(bias, "bias", x.dtype, C)
    return C


def _check_stats(name, value, C):
    """A (C,) float array of statistics (converted to float64: widening, exact)."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray of shape ({C},), got {describe(value)}")
    if value.dtype.kind != "f":
        raise TypeError(f"{name}: expected a float array, got {value.dtype}")
    if value.shape != (C,):
        raise ValueError(f"{name}: expected shape ({C},), got {value.shape}")
    return value


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5, layout="NCHW", out=None):
    """Batch normalization of x, as ``torch.nn.functional.batch_norm``.

    training=True: normalise with the batch statistics and, when running_mean
    and running_var are given, update them in place (momentum is the new
    batch's weight; the variance stored is unbiased). training=False: normalise
    with running_mean and running_var. out: an array to write y into.
    """
    axis = _check_x(x, layout)
    C = _check_params(x, axis, weight, bias)
    eps = check_eps(eps)
    momentum = check_momentum(momentum, allow_none=False)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean, running_var: expected both arrays or both None, got "
                         f"{describe(running_mean)} and {describe(running_var)}")
    if running_mean is not None:
        check_channel_vector(running_mean, "running_mean", x.dtype, C, writable=training)
        check_channel_vector(running_var, "running_var", x.dtype, C, writable=training)
    elif not training:
        raise ValueError("running_mean: expected an array when training=False, got None")
    if training:
        check_batch_for_statistics(x, axis)
    check_out_overlap(out, x, "x")
    canon = canonicalize(x, layout)
    if training:
        y, stats, skipped, _ = _ops.train_forward(canon, weight, bias, eps, running_mean,
                                                  running_var, momentum, out)
        if skipped:
            bad = np.flatnonzero(~(np.isfinite(stats[0]) & np.isfinite(stats[2])))
            warnings.warn(f"batch_norm: the batch statistics of channel(s) {bad.tolist()} are "
                          f"not finite (NaN or Inf in the input); their running statistics were "
                          f"left unchanged", RuntimeWarning, stacklevel=2)
        return y
    return _ops.normalize(canon, running_mean, running_var, eps, weight, bias, out)[0]


def batch_norm_forward(x, weight=None, bias=None, eps=1e-5, layout="NCHW", out=None):
    """Training-mode normalization: (y, mean, invstd), statistics as float64 (C,) arrays.

    invstd = 1 / sqrt(biased batch variance + eps). out: an array to write y into.
    """
    axis = _check_x(x, layout)
    _check_params(x, axis, weight, bias)
    eps = check_eps(eps)
    check_batch_for_statistics(x, axis)
    check_out_overlap(out, x, "x")
    y, stats, _, _ = _ops.train_forward(canonicalize(x, layout), weight, bias, eps, out=out)
    return y, stats[0], stats[1]


def batch_norm_backward(dy, x, mean, invstd, weight=None, layout="NCHW", out=None):
    """Gradients of training-mode batch norm: (dx, dweight, dbias).

    mean and invstd are the batch statistics batch_norm_forward returned (any
    float dtype; used as float64). dweight = sum(dy * (x - mean) * invstd) and
    dbias = sum(dy) per channel, also when weight is None (then weight = 1).
    out: an array to write dx into (dy itself for in place).
    """
    axis = _check_x(x, layout)
    C = _check_params(x, axis, weight, None)
    check_array(dy, "dy", x.dtype)
    if dy.shape != x.shape:
        raise ValueError(f"dy: expected the shape of x {x.shape}, got {dy.shape}")
    stats = np.empty((2, C))
    stats[0] = _check_stats("mean", mean, C)
    stats[1] = _check_stats("invstd", invstd, C)
    check_out_overlap(out, x, "x", allow_same=False)
    check_out_overlap(out, dy, "dy")
    dx, grads = _ops.backward(canonicalize(x, layout), dy, stats, weight, True, out=out)
    return dx, grads[0], grads[1]
