"""The layers' state: what it may hold, state_dict and load_state_dict.

One validator per kind of state, shared by the attribute setters and
``load_state_dict``: a (C,) vector of finite values (running_var also >= 0)
and a count in int64's range. The setters bind an array of the layer's
param_dtype that the kernels can use as it is; ``load_state_dict`` takes
anything ``np.asarray`` takes and converts it (as PyTorch's ``copy_``, but
only where the values survive) into the layer's own arrays.
"""
import numbers
from typing import NamedTuple

import numpy as np

from ._commit import Changes
from ._dtypes import is_bfloat16
from ._validation import describe

PARAMETER_KEYS = ("weight", "bias")
BUFFER_KEYS = ("running_mean", "running_var", "num_batches_tracked")
COUNT_KEY = "num_batches_tracked"
INT64_MAX = int(np.iinfo(np.int64).max)


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict`` returns, as PyTorch's: keys the layer has that
    the state dict lacked, and keys of the state dict the layer does not have."""

    missing_keys: list
    unexpected_keys: list


def expected_keys(layer):
    return (PARAMETER_KEYS if layer.affine else ()) + (BUFFER_KEYS if layer.track_running_stats else ())


def layer_state(layer):
    """Copies (not views) of the layer's parameters and buffers."""
    return {key: np.array(getattr(layer, key), copy=True) for key in expected_keys(layer)}


def checked_count(value, name):
    """A count (e.g. num_batches_tracked) in [0, 2**63 - 1] as an int.

    Integers, and floats with an integer value, of any width; anything that
    would not fit PyTorch's int64 buffer is refused."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a non-negative integer, got {describe(value)}")
    if isinstance(value, numbers.Integral):
        count = int(value)
    else:
        arr = _as_array(name, value)
        if arr.size != 1 or arr.ndim > 1:
            raise ValueError(f"{name}: expected a scalar, got shape {arr.shape}")
        scalar = arr.reshape(())[()]
        if arr.dtype.kind == "f":
            if not (np.isfinite(scalar) and scalar == np.floor(scalar)):
                raise ValueError(f"{name}: expected a non-negative integer, got {scalar}")
        count = int(scalar)
    if not 0 <= count <= INT64_MAX:
        raise ValueError(f"{name}: expected a non-negative integer below 2**63 (PyTorch's "
                         f"int64 buffer), got {count}")
    return count


def _as_array(name, value):
    try:
        arr = np.asarray(value)
    except Exception as exc:  # e.g. ragged sequences
        raise TypeError(f"{name}: expected an array, got {describe(value)} ({exc})") from None
    if is_bfloat16(arr.dtype):
        return arr.astype(np.float32)   # exact; numpy's own functions then apply
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    return arr


def _check_values(name, key, arr):
    """Finite values, and for running_var none below zero."""
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: expected finite values, got {arr[~np.isfinite(arr)][:3]}...")
    if key == "running_var" and np.any(arr < 0):
        raise ValueError(f"{name}: expected values >= 0, got min {arr.min()}")


def checked_loaded_vector(layer, key, value):
    """A state_dict value for a (C,) vector, as a new array of the layer's
    param_dtype: converted exactly (a narrower float widened), or refused."""
    name = f"state_dict[{key!r}]"
    arr = _as_array(name, value)
    C, dtype = layer.num_features, layer.param_dtype
    if arr.shape != (C,):
        raise ValueError(f"{name}: expected shape ({C},), got {arr.shape}")
    _check_values(name, key, arr)
    with np.errstate(over="ignore"):
        converted = arr.astype(dtype)
    if not np.all(np.isfinite(converted)):
        raise ValueError(f"{name}: expected values that fit {dtype}, got "
                         f"{arr[~np.isfinite(converted)][:3]}... (they overflow it)")
    changed = converted.astype(arr.dtype) != arr
    if np.any(changed):
        raise ValueError(f"{name}: expected values {dtype} holds exactly, got {arr.dtype} values "
                         f"it would round ({arr[changed][:3]}...); round them explicitly "
                         f"(values.astype({dtype.name})) if that is meant")
    return converted


def checked_bound_vector(layer, key, value):
    """An array to bind as the layer's (C,) vector: the layer's param_dtype,
    contiguous, aligned and writable (the kernels use it as it is and update
    it in place)."""
    C, dtype = layer.num_features, layer.param_dtype
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{key}: expected a numpy.ndarray of shape ({C},), got {describe(value)}")
    if value.dtype != dtype:
        raise TypeError(f"{key}: expected dtype {dtype} (the layer's param_dtype), got "
                        f"{value.dtype} (convert explicitly, or use load_state_dict, which "
                        f"converts)")
    if value.shape != (C,):
        raise ValueError(f"{key}: expected shape ({C},), got {value.shape}")
    if not value.flags.c_contiguous:
        raise ValueError(f"{key}: expected a contiguous array, got strides {value.strides}")
    if not value.flags.aligned:
        raise ValueError(f"{key}: expected data aligned to {dtype.alignment} bytes, got an array "
                         f"at an unaligned address (pass a copy)")
    if not value.flags.writeable:
        raise ValueError(f"{key}: expected a writable array (it is updated in place), got a "
                         f"read-only one")
    _check_values(key, key, value)
    return value


def load_layer_state(layer, state_dict, strict=True):
    """Validate everything, then copy into the layer's arrays (their identity is kept)
    in one step; returns IncompatibleKeys.

    A missing num_batches_tracked (checkpoints from before PyTorch 0.4.1) is
    no error, also with strict: the count keeps its value, as in PyTorch.
    """
    if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
        raise TypeError(f"state_dict: expected a mapping, got {describe(state_dict)}")
    expected = expected_keys(layer)
    given = set(state_dict.keys())
    missing = [k for k in expected if k not in given]
    unexpected = sorted(str(k) for k in given - set(expected))
    if strict and ([k for k in missing if k != COUNT_KEY] or unexpected):
        raise ValueError(f"state_dict: expected exactly the keys {list(expected)} of "
                         f"{type(layer).__name__}, got missing {missing}, unexpected {unexpected}")
    changes = Changes()
    for key in expected:
        if key not in given:
            continue
        if key == COUNT_KEY:
            changes.set(layer, "_num_batches_tracked",
                        checked_count(state_dict[key], f"state_dict[{key!r}]"))
        else:
            changes.copy(getattr(layer, key), checked_loaded_vector(layer, key, state_dict[key]))
    return changes, IncompatibleKeys(missing, unexpected)
