"""The data types cbn normalises, and the parameter type that goes with each.

float32 and float64 data are computed in their own type and their
parameters (weight, bias, running statistics, parameter gradients) have it.
float16 and bfloat16 data are widened to float32 in the kernels' registers,
computed in float32 and each output rounded once to the data type; their
parameters are float32 (``param_dtype``, as Flax calls it). bfloat16 is
``ml_dtypes.bfloat16`` (the extra ``cbn[bfloat16]``), imported only when
asked for.
"""
import sys
import warnings

import numpy as np

FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)
FLOAT16 = np.dtype(np.float16)

DATA_DTYPES = "float32, float64, float16 or bfloat16"


def bfloat16():
    """``ml_dtypes.bfloat16`` as a numpy dtype; ImportError naming the extra without it."""
    try:
        import ml_dtypes
    except ImportError:
        raise ImportError("dtype bfloat16: expected the ml_dtypes package, which provides it "
                          "(pip install 'cbn[bfloat16]'), got none installed") from None
    return np.dtype(ml_dtypes.bfloat16)


def is_bfloat16(dt):
    """Whether dt is a bfloat16 dtype (ml_dtypes' or another registered under that name).

    By its scalar type's name: ``dt.name`` makes a new string at every call,
    which NumPy 2.4 does not always free (10 000 layer calls grew traced
    memory by 100 KB under PYTHONMALLOC=malloc)."""
    return dt.itemsize == 2 and dt.type.__name__ == "bfloat16"


def is_supported(dt):
    """Whether arrays of dt can be normalised: one of DATA_DTYPES, native byte order."""
    return dt.isnative and (dt in (FLOAT32, FLOAT64, FLOAT16) or is_bfloat16(dt))


def is_two_byte(dt):
    return dt == FLOAT16 or is_bfloat16(dt)


def param_dtype_for(dt):
    """The type data of dtype dt are computed in, which their parameters have."""
    return FLOAT32 if is_two_byte(dt) else dt


def describe_dtype(dtype):
    try:
        return str(np.dtype(dtype))
    except TypeError:
        return f"{type(dtype).__name__} {dtype!r}"[:120]


def check_dtype(dtype, name="dtype"):
    """A data dtype (DATA_DTYPES) as a np.dtype; the name "bfloat16" needs ml_dtypes."""
    if isinstance(dtype, str) and dtype == "bfloat16":
        return bfloat16()
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name}: expected {DATA_DTYPES}, got {describe_dtype(dtype)}") from None
    if not is_supported(dt):
        raise TypeError(f"{name}: expected {DATA_DTYPES}, got {dt}")
    return dt


def check_param_dtype(param_dtype, dtype):
    """The parameters' dtype for data of dtype: None means param_dtype_for(dtype),
    the only one the kernels compute with (float32 for 2-byte data, else dtype)."""
    expected = param_dtype_for(dtype)
    if param_dtype is None:
        return expected
    try:
        dt = np.dtype(param_dtype)
    except TypeError:
        dt = None
    if dt != expected:
        raise TypeError(f"param_dtype: expected {expected} for {dtype} data (the type it is "
                        f"computed in) or None, got {describe_dtype(param_dtype)}")
    return dt


def warn_beyond_range(dtype, what):
    """The RuntimeWarning for outputs of 2-byte data past the type's range
    (they became +-inf), attributed to the first caller outside cbn."""
    largest = 65504.0 if dtype == FLOAT16 else 3.3895e38
    warnings.warn(f"{what}: some values were beyond {dtype}'s range (largest finite "
                  f"{largest:g}) and became +-inf", RuntimeWarning, stacklevel=user_stacklevel())


def user_stacklevel():
    """The ``stacklevel`` that attributes a warning issued by the caller of
    this function to the first caller outside cbn: the same frame whether
    the layer call took the compiled path (no Python frames of cbn's) or
    the Python path."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_globals.get("__name__", "").startswith("cbn."):
        frame, level = frame.f_back, level + 1
    return level
