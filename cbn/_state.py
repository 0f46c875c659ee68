"""state_dict / load_state_dict for the layers, under PyTorch's keys."""
import numpy as np

from ._validation import describe

PARAMETER_KEYS = ("weight", "bias")
BUFFER_KEYS = ("running_mean", "running_var", "num_batches_tracked")


def expected_keys(layer):
    return (PARAMETER_KEYS if layer.affine else ()) + (BUFFER_KEYS if layer.track_running_stats else ())


def layer_state(layer):
    """Copies (not views) of the layer's parameters and buffers."""
    return {key: np.array(getattr(layer, key), copy=True) for key in expected_keys(layer)}


def checked_count(value, name):
    """A non-negative integer count (e.g. num_batches_tracked) as an int."""
    arr = _as_array(name, value)
    if arr.size != 1 or arr.ndim > 1:
        raise ValueError(f"{name}: expected a scalar, got shape {arr.shape}")
    count = arr.reshape(())[()]
    if not (np.isfinite(count) and count >= 0 and count == np.floor(count)):
        raise ValueError(f"{name}: expected a non-negative integer, got {count}")
    return int(count)


def _as_array(name, value):
    try:
        arr = np.asarray(value)
    except Exception as exc:  # e.g. ragged sequences
        raise TypeError(f"{name}: expected an array, got {describe(value)} ({exc})") from None
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    return arr


def _checked_vector(layer, key, value):
    arr = _as_array(f"state_dict[{key!r}]", value)
    C = layer.num_features
    if arr.shape != (C,):
        raise ValueError(f"state_dict[{key!r}]: expected shape ({C},), got {arr.shape}")
    arr = arr.astype(layer.dtype)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"state_dict[{key!r}]: expected finite values, got {arr[~np.isfinite(arr)][:3]}...")
    if key == "running_var" and np.any(arr < 0):
        raise ValueError(f"state_dict['running_var']: expected values >= 0, got min {arr.min()}")
    return arr


def load_layer_state(layer, state_dict, strict=True):
    """Validate everything, then copy into the layer's arrays (their identity is kept)."""
    if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
        raise TypeError(f"state_dict: expected a mapping, got {describe(state_dict)}")
    expected = expected_keys(layer)
    given = set(state_dict.keys())
    missing = [k for k in expected if k not in given]
    unexpected = sorted(str(k) for k in given - set(expected))
    if strict and (missing or unexpected):
        raise ValueError(f"state_dict: expected exactly the keys {list(expected)} of "
                         f"{type(layer).__name__}, got missing {missing}, unexpected {unexpected}")
    new = {}
    for key in expected:
        if key not in given:
            continue
        if key == "num_batches_tracked":
            new[key] = checked_count(state_dict[key], "state_dict['num_batches_tracked']")
        else:
            new[key] = _checked_vector(layer, key, state_dict[key])
    for key, value in new.items():
        if key == "num_batches_tracked":
            layer.num_batches_tracked = value
        else:
            getattr(layer, key)[...] = value
