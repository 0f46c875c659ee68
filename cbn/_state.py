"""The layers' state: what it may hold, state_dict and load_state_dict.

One validator per kind of state, shared by the attribute setters and
``load_state_dict``: a (C,) vector of finite values (running_var also >= 0)
and a count in int64's range. The setters bind an array of the layer's
param_dtype that the kernels can use as it is; ``load_state_dict`` takes
anything ``np.asarray`` takes, and torch tensors of any real dtype, and
converts it into the layer's own arrays as PyTorch's ``copy_`` does,
rounding to nearest; beyond the checks above it refuses only values that
overflow param_dtype, which that copy would silently make inf.
"""
import numbers
import sys
import threading
from typing import NamedTuple

import numpy as np

from ._commit import Changes
from ._dtypes import is_bfloat16
from ._validation import describe

PARAMETER_KEYS = ("weight", "bias")
BUFFER_KEYS = ("running_mean", "running_var", "num_batches_tracked")
COUNT_KEY = "num_batches_tracked"
INT64_MAX = int(np.iinfo(np.int64).max)


class SharedState:
    """What a layer shares with its shallow copies, as PyTorch's modules
    share their parameter and buffer dicts: weight, bias, running_mean,
    running_var (arrays, or None), num_batches_tracked (an int, or None)
    and the lock that serialises the calls that read and then replace
    them. Plain attributes: Changes.set writes them at commit."""

    def __init__(self, weight, bias, running_mean, running_var, num_batches_tracked):
        self.weight, self.bias = weight, bias
        self.running_mean, self.running_var = running_mean, running_var
        self.num_batches_tracked = num_batches_tracked
        self.lock = threading.Lock()

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["lock"]   # a lock is of this process; a copy or pickle gets its own
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.lock = threading.Lock()


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

    Integers, and floats with an integer value, of any width (NumPy values or
    torch tensors); anything that would not fit PyTorch's int64 buffer is
    refused, as is a fraction: a count is not rounded."""
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


def _from_torch(value):
    """value as a NumPy array if it is a torch tensor, else value itself.

    torch is never imported here: were it not imported yet, value could not
    be a tensor. A tensor is detached and brought to the CPU; floating types
    NumPy lacks (bfloat16, the float8 types) are all narrower than float32,
    so widening them to float32 in torch is exact (a wider one, should torch
    add it, goes through float64)."""
    torch = sys.modules.get("torch")
    tensor_type = getattr(torch, "Tensor", None)
    if tensor_type is None or not isinstance(value, tensor_type):
        return value
    tensor = value.detach().cpu()
    if tensor.is_floating_point() and tensor.dtype not in (torch.float16, torch.float32,
                                                           torch.float64):
        tensor = tensor.to(torch.float32 if tensor.element_size() < 4 else torch.float64)
    # Tensor.numpy() refuses a lazily negated view (e.g. complex.conj().imag)
    return tensor.resolve_neg().numpy()


def _is_narrow_ml_dtype(dt):
    """Whether dt is one of ml_dtypes' types narrower than float32 (bfloat16,
    the float8, float6 and float4 types, int4, ...): each widens to float32
    exactly. By the scalar type's module (see is_bfloat16 for why not dt.name)."""
    return dt.kind == "V" and dt.itemsize < 4 and dt.type.__module__ == "ml_dtypes"


def _as_array(name, value):
    """value as a real numeric NumPy array (a view where it already is one)."""
    try:
        arr = np.asarray(_from_torch(value))
    except Exception as exc:  # e.g. ragged sequences, a packed float4 tensor
        raise TypeError(f"{name}: expected an array, got {describe(value)} ({exc})") from None
    if is_bfloat16(arr.dtype) or _is_narrow_ml_dtype(arr.dtype):
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
    param_dtype: floating and integer values rounded to nearest, as
    PyTorch's ``copy_`` converts them (a narrower float is widened exactly);
    non-finite values, a negative running_var and values that overflow
    param_dtype (PyTorch would make them inf) are refused."""
    name = f"state_dict[{key!r}]"
    arr = _as_array(name, value)
    C, dtype = layer.num_features, layer.param_dtype
    if arr.shape != (C,):
        raise ValueError(f"{name}: expected shape ({C},), got {arr.shape}")
    _check_values(name, key, arr)
    with np.errstate(over="ignore"):   # overflow is told below, naming the values
        converted = arr.astype(dtype)
    if not np.all(np.isfinite(converted)):
        raise ValueError(f"{name}: expected values within {dtype}'s range (largest finite "
                         f"{np.finfo(dtype).max:g}), got {arr.dtype} values that overflow it "
                         f"({arr[~np.isfinite(converted)][:3]}...; PyTorch would make them inf)")
    return converted


def checked_bound_vector(layer, key, value):
    """An array to bind as the layer's (C,) vector: the layer's param_dtype,
    contiguous, aligned and writable (the kernels use it as it is and update
    it in place)."""
    C, dtype = layer.num_features, layer.param_dtype
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{key}: expected a numpy.ndarray of shape ({C},), got {describe(value)}")
    if value.dtype != dtype:
        raise TypeError(f"{key}: expected dtype {dtype} (the layer's param_dtype: the array "
                        f"is bound as it is), got {value.dtype} (convert it explicitly, or use "
                        f"load_state_dict, which converts, rounding to nearest)")
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


def load_layer_state(layer, shared, state_dict, strict=True):
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
            changes.set(shared, "num_batches_tracked",
                        checked_count(state_dict[key], f"state_dict[{key!r}]"))
        else:
            changes.copy(getattr(layer, key), checked_loaded_vector(layer, key, state_dict[key]))
    return changes, IncompatibleKeys(missing, unexpected)
