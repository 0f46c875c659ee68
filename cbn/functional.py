"""Functional batch normalization, mirroring ``torch.nn.functional.batch_norm``.

All functions take the channel axis from ``layout``: "NCHW" means axis 1,
"NHWC" the last axis, for inputs of any ndim >= 2. ``x`` is float32,
float64, float16 or bfloat16 (``ml_dtypes``); dy, y and dx have its dtype,
weight, bias, running statistics and parameter gradients the type it is
computed in (float32 for float16 and bfloat16 x, else x's dtype). Batch
statistics (``mean``, ``invstd``) are float64.
"""

import numpy as np

from . import _call, _ops
from ._commit import Changes
from ._dtypes import param_dtype_for
from ._layout import canonicalize, channel_axis, check_layout
from ._validation import (
    check_array,
    check_batch_for_statistics,
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


def _channel_vector(v, name, dtype, C, writable=False):
    """A (C,) array of ``dtype``, any strides or alignment (as PyTorch takes
    them), as a contiguous aligned array the kernels can read (v itself when
    it already is)."""
    if not isinstance(v, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray of shape ({C},), got {describe(v)}")
    if v.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {v.dtype}")
    if v.shape != (C,):
        raise ValueError(f"{name}: expected shape ({C},), got {v.shape}")
    if writable and not v.flags.writeable:
        raise ValueError(f"{name}: expected a writable array (it is updated in place), got a "
                         f"read-only one")
    if v.flags.c_contiguous and v.flags.aligned:
        return v
    return np.array(v, order="C")   # a new array: contiguous and aligned


def _check_params(x, axis, weight, bias):
    """(C, weight, bias), the vectors contiguous for the kernels."""
    C, dtype = x.shape[axis], param_dtype_for(x.dtype)
    if weight is not None:
        weight = _channel_vector(weight, "weight", dtype, C)
    if bias is not None:
        bias = _channel_vector(bias, "bias", dtype, C)
    return C, weight, bias


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

    Parameters
    ----------
    x : numpy.ndarray
        The input: float32, float64, float16 or bfloat16, ndim >= 2,
        channels on ``layout``'s axis.
    running_mean, running_var : numpy.ndarray or None
        (C,) arrays of the parameters' dtype (x's, float32 for float16 and
        bfloat16 x), any strides. training=False normalises with them
        (required); training=True updates them in place when given (the
        variance stored is unbiased).
    weight, bias : numpy.ndarray, optional
        (C,) arrays of the parameters' dtype, any strides.
    training : bool
        Normalise with the batch statistics.
    momentum : float
        Weight of the new batch in the running averages, in [0, 1]; checked
        in training only (eval mode ignores it, as PyTorch).
    eps : float
        Added to the variance: a finite float, at least the parameters'
        dtype's smallest normal number (1.2e-38 for float32).
    layout : {"NCHW", "NHWC"}
        Where the channels are.
    out : numpy.ndarray, optional
        Where to write y, as ``out`` of the layers' forward.

    Returns
    -------
    numpy.ndarray
        y (``out`` when given).

    Examples
    --------
    >>> import numpy as np
    >>> from cbn import functional as F
    >>> x = np.arange(12.0).reshape(4, 3)
    >>> mean, var = np.zeros(3), np.ones(3)
    >>> y = F.batch_norm(x, mean, var, training=True, momentum=0.5)
    >>> y.mean(axis=0).round(6) + 0.0
    array([0., 0., 0.])
    >>> mean      # updated in place, as PyTorch's
    array([2.25, 2.75, 3.25])
    """
    y = _call.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps,
                         layout, out)
    if y is not None:   # the compiled path took it (the common case)
        return y
    axis = _check_x(x, layout)
    C, weight, bias = _check_params(x, axis, weight, bias)
    eps = check_eps(eps, param_dtype_for(x.dtype))
    training = bool(training)
    if training:   # PyTorch ignores momentum in eval mode; so does cbn
        momentum = check_momentum(momentum, allow_none=False)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean, running_var: expected both arrays or both None, got "
                         f"{describe(running_mean)} and {describe(running_var)}")
    if running_mean is not None:
        dtype = param_dtype_for(x.dtype)
        mean_in = _channel_vector(running_mean, "running_mean", dtype, C, writable=training)
        var_in = _channel_vector(running_var, "running_var", dtype, C, writable=training)
    elif not training:
        raise ValueError("running_mean: expected an array when training=False, got None")
    if training:
        check_batch_for_statistics(x, axis)
    check_out_overlap(out, x, "x")
    canon = canonicalize(x, layout)
    output = canon.output(out, orders=(x,))
    if not training:
        return _ops.normalize(canon, mean_in, var_in, eps, weight, bias, output)[0]
    y, stats, _ = _ops.train_forward(canon, weight, bias, eps, output)
    if running_mean is not None:
        count = canon.count
        new_mean, new_var, kept = _ops.moved_running_stats(mean_in, var_in, stats[0], stats[2],
                                                           momentum, count / (count - 1.0))
        if kept is not None:
            _ops.warn_running_unchanged(kept, mean_in.dtype)
        changes = Changes()
        changes.copy(running_mean, new_mean)
        changes.copy(running_var, new_var)
        changes.apply()
    return y


def batch_norm_forward(x, weight=None, bias=None, eps=1e-5, layout="NCHW", out=None):
    """Training-mode normalization returning the batch statistics backward needs.

    Parameters
    ----------
    x, weight, bias, eps, layout, out
        As for :func:`batch_norm`: the input, its optional (C,) affine
        parameters, what is added to the variance, where the channels are,
        and where to write y.

    Returns
    -------
    y : numpy.ndarray
        The output (``out`` when given).
    mean, invstd : numpy.ndarray
        float64 (C,) batch mean and ``1 / sqrt(biased batch variance + eps)``.
    """
    axis = _check_x(x, layout)
    _, weight, bias = _check_params(x, axis, weight, bias)
    eps = check_eps(eps, param_dtype_for(x.dtype))
    check_batch_for_statistics(x, axis)
    check_out_overlap(out, x, "x")
    canon = canonicalize(x, layout)
    y, stats, _ = _ops.train_forward(canon, weight, bias, eps, canon.output(out, orders=(x,)))
    return y, stats[0], stats[1]


def batch_norm_backward(dy, x, mean, invstd, weight=None, layout="NCHW", out=None):
    """Gradients of training-mode batch norm.

    Parameters
    ----------
    dy : numpy.ndarray
        Gradient of the output: x's shape and dtype.
    x : numpy.ndarray
        The forward's input.
    mean, invstd : numpy.ndarray
        The batch statistics :func:`batch_norm_forward` returned (any float
        dtype; used as float64).
    weight : numpy.ndarray, optional
        The forward's (C,) weight; None for 1.
    layout : {"NCHW", "NHWC"}
        Where the channels are.
    out : numpy.ndarray, optional
        Where to write dx (dy itself for in place).

    Returns
    -------
    dx : numpy.ndarray
        Gradient of the input (``out`` when given).
    dweight, dbias : numpy.ndarray
        ``sum(dy * (x - mean) * invstd)`` and ``sum(dy)`` per channel, in
        the parameters' dtype, also when weight is None.

    Examples
    --------
    >>> import numpy as np
    >>> from cbn import functional as F
    >>> x = np.random.default_rng(0).standard_normal((8, 3))
    >>> y, mean, invstd = F.batch_norm_forward(x)
    >>> dx, dweight, dbias = F.batch_norm_backward(np.ones_like(x), x, mean, invstd)
    >>> bool(np.allclose(dx, 0.0))   # a constant gradient does not move normalised data
    True
    """
    axis = _check_x(x, layout)
    C, weight, _ = _check_params(x, axis, weight, None)
    check_array(dy, "dy", x.dtype)
    if dy.shape != x.shape:
        raise ValueError(f"dy: expected the shape of x {x.shape}, got {dy.shape}")
    stats = np.empty((2, C))
    stats[0] = _check_stats("mean", mean, C)
    stats[1] = _check_stats("invstd", invstd, C)
    check_out_overlap(out, x, "x", allow_same=False)
    check_out_overlap(out, dy, "dy")
    canon = canonicalize(x, layout)
    dx, grads = _ops.backward(canon, dy, stats, weight, True, canon.output(out, orders=(dy,)))
    return dx, grads[0], grads[1]
