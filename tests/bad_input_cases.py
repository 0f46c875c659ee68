"""Bad input, tried systematically over every public entry point: the shared
cases and checks of the test_errors_* modules.

Each case raises TypeError/ValueError (AttributeError for attributes a layer
was built without) whose message starts with the argument's name and says
what was expected and what came, and leaves every piece of state exactly as
it was. Read-only and strided inputs must work.
"""
import re

import numpy as np
import pytest

import cbn
from fake_mpi import FakeWorld


F32 = np.float32
GOOD = np.arange(2 * 3 * 4 * 4, dtype=F32).reshape(2, 3, 4, 4) % 7 + 0.5


def layer_2d(**kwargs):
    bn = cbn.BatchNorm2d(3, **kwargs)
    bn(GOOD)  # trained once: running statistics and saved state are not the initial ones
    return bn


LAYERS = {
    "BatchNorm2d": layer_2d,
    "BatchRenorm2d": lambda: (lambda bn: (bn(GOOD), bn)[1])(cbn.BatchRenorm2d(3)),
    "SyncBatchNorm": lambda: (lambda bn: (bn(GOOD), bn)[1])(
        cbn.SyncBatchNorm(3, FakeWorld(1).comm(0))),
    "BatchNorm2d-relu": lambda: layer_2d(activation="relu"),
}

# (id, bad x for a 3-channel NCHW 2-D float32 layer in training mode, exception)
BAD_X = [
    ("ndim-3", np.ones((2, 3, 4), F32), ValueError),
    ("ndim-5", np.ones((2, 3, 4, 4, 1), F32), ValueError),
    ("channels-4", np.ones((2, 4, 4, 4), F32), ValueError),
    ("channels-1", np.ones((2, 1, 4, 4), F32), ValueError),
    ("int32", np.ones((2, 3, 4, 4), np.int32), TypeError),
    ("int64", np.ones((2, 3, 4, 4), np.int64), TypeError),
    ("uint8", np.ones((2, 3, 4, 4), np.uint8), TypeError),
    ("bool", np.ones((2, 3, 4, 4), bool), TypeError),
    ("complex64", np.ones((2, 3, 4, 4), np.complex64), TypeError),
    ("object", np.ones((2, 3, 4, 4), object), TypeError),
    ("float16", np.ones((2, 3, 4, 4), np.float16), TypeError),
    ("float64", np.ones((2, 3, 4, 4), np.float64), TypeError),
    ("big-endian", np.ones((2, 3, 4, 4), ">f4"), TypeError),
    ("list", GOOD.tolist(), TypeError),
    ("float", 1.0, TypeError),
    ("none", None, TypeError),
    ("string", "x", TypeError),
    ("masked", np.ma.masked_array(GOOD, mask=GOOD > 3), TypeError),
    ("empty-batch", np.ones((0, 3, 4, 4), F32), ValueError),
    ("one-value-per-channel", np.ones((1, 3, 1, 1), F32), ValueError),
    ("zero-height", np.ones((2, 3, 0, 4), F32), ValueError),
    ("zero-width", np.ones((2, 3, 4, 0), F32), ValueError),
]


def snapshot(obj):
    """Copies of the arrays, the other attributes themselves (compared by identity or ==)."""
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(obj).items()}


def assert_unchanged(obj, before):
    after = vars(obj)
    assert after.keys() == before.keys()
    for key, value in before.items():
        now = after[key]
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(now, value, err_msg=key)
            assert now.dtype == value.dtype, key
        else:
            assert now is value or now == value, key


def check_message(exc_info, arg):
    message = str(exc_info.value)
    assert re.match(rf"{re.escape(arg)}(?!\w)", message), f"{message!r} should start with {arg!r}"
    assert "expected" in message and "got" in message, message


def raises(exc, arg, fn):
    with pytest.raises(exc) as info:
        fn()
    check_message(info, arg)


def running():
    return np.zeros(3, F32), np.ones(3, F32)
