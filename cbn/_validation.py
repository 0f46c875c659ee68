"""Argument checks shared by the layers and the functional API.

Every error names the argument, what was expected and what came. Checks run
before any state changes, so a rejected call leaves everything as it was.
"""
import math
import numbers

import numpy as np

from ._dtypes import DATA_DTYPES, is_supported


def describe(value):
    """A short description of a value for error messages."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return f"{type(value).__name__} {value!r}"[:120]


def check_num_features(n):
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"num_features: expected a positive int, got {describe(n)}")
    if n < 1:
        raise ValueError(f"num_features: expected a positive int, got {n}")
    return int(n)


def check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {describe(value)}")
    return bool(value)


def check_eps(eps, dtype):
    """A finite float, at least dtype's smallest normal number (float32:
    1.2e-38); dtype: the type computed in (the parameters'). eps = 0 divides
    by zero on a constant channel (PyTorch refuses it in training too), and
    below that bound 1 / sqrt(var + eps) can exceed the dtype's range, so no
    scale of that dtype would normalise data whose spread is as small."""
    smallest = float(np.finfo(dtype).tiny)
    expected = f"a finite float >= {smallest:.3g} ({np.dtype(dtype).name}'s smallest normal number)"
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps: expected {expected}, got {describe(eps)}")
    eps = float(eps)
    if not (math.isfinite(eps) and eps >= smallest):
        raise ValueError(f"eps: expected {expected}, got {eps}")
    return eps


def check_momentum(momentum, allow_none=True):
    expected = "a float in [0, 1]" + (" or None" if allow_none else "")
    if momentum is None and allow_none:
        return None
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise TypeError(f"momentum: expected {expected}, got {describe(momentum)}")
    momentum = float(momentum) + 0.0   # -0.0 is 0.0 (one text on every rank: cbn._collectives)
    if not (0.0 <= momentum <= 1.0):  # also rejects nan
        raise ValueError(f"momentum: expected {expected}, got {momentum}")
    return momentum


def check_array(x, name, dtype=None):
    """x must be an ndarray of a supported float dtype (``dtype`` if given)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {describe(x)}")
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got a masked array (its mask "
                        f"would be ignored; pass x.filled(...) or the unmasked values)")
    if dtype is not None:
        if x.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype}, got {x.dtype} (shape {x.shape}); "
                            f"convert explicitly, cbn does not cast")
    elif not is_supported(x.dtype):
        raise TypeError(f"{name}: expected a {DATA_DTYPES} array, got {x.dtype} "
                        f"(shape {x.shape})")
    return x


def check_input(x, name, dtype, ndims, num_features, axis_of, shape_names):
    """Validate a layer input: type, dtype, ndim and channel count.

    ndims: accepted ndim values; axis_of(ndim) gives the channel axis;
    shape_names maps ndim to a readable shape such as "(N, C, H, W)".
    """
    check_array(x, name, dtype)
    if x.ndim not in ndims:
        expected = " or ".join(f"{d}-D {shape_names[d]}" for d in ndims)
        raise ValueError(f"{name}: expected a {expected} array, got {x.ndim}-D shape {x.shape}")
    axis = axis_of(x.ndim)
    if num_features is not None and x.shape[axis] != num_features:
        raise ValueError(f"{name}: expected {num_features} channels on axis {axis}, "
                         f"got {x.shape[axis]} (shape {x.shape})")
    return axis


def check_batch_for_statistics(x, axis):
    """Batch statistics need at least two values per channel (as PyTorch)."""
    per_channel = x.size // x.shape[axis] if x.shape[axis] else 0
    if per_channel < 2:
        raise ValueError(f"x: expected more than 1 value per channel when using batch "
                         f"statistics, got input of shape {x.shape} "
                         f"({per_channel} value{'s' if per_channel != 1 else ''} per channel)")


def check_out_overlap(out, source, source_name, allow_same=True):
    """Whether ``out`` is ``source`` itself (in place); ValueError for any other overlap.

    Elementwise kernels read each value before writing the same position, so
    writing over the very same array is safe; a shifted overlap is not.
    """
    if out is None or not isinstance(out, np.ndarray) or not np.may_share_memory(out, source):
        return False
    same = (out.__array_interface__["data"][0] == source.__array_interface__["data"][0]
            and out.strides == source.strides and out.shape == source.shape)
    if same and allow_same:
        return True
    raise ValueError(f"out: expected an array not overlapping {source_name}"
                     + (f" (or {source_name} itself)" if allow_same else "")
                     + ", got one sharing memory with it")
