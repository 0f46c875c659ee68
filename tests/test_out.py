"""out= on forward/backward (layer and functional): results, in-place rules, errors."""
import numpy as np
import pytest

import cbn
import cbn.functional as F
from helpers import random_input


@pytest.mark.parametrize("layout,shape", [("NCHW", (4, 3, 5, 6)), ("NHWC", (4, 5, 6, 3))])
def test_out_receives_the_result(layout, shape, rng):
    x = random_input(rng, shape, np.float32)
    dy = random_input(rng, shape, np.float32)
    a, b = cbn.BatchNorm2d(3, layout=layout), cbn.BatchNorm2d(3, layout=layout)
    y = np.empty_like(x)
    dx = np.empty_like(x)
    assert a(x, out=y) is y
    assert a.backward(dy, out=dx) is dx
    np.testing.assert_array_equal(y, b(x))
    np.testing.assert_array_equal(dx, b.backward(dy))


def test_out_with_the_memory_order_of_a_channels_last_stored_input(rng):
    x = np.ascontiguousarray(random_input(rng, (2, 4, 5, 3), np.float32)).transpose(0, 3, 1, 2)
    out = np.empty((2, 4, 5, 3), np.float32).transpose(0, 3, 1, 2)
    bn = cbn.BatchNorm2d(3)
    assert bn(x, out=out) is out
    # channels-last and channels-first kernels sum in different orders
    np.testing.assert_allclose(out, cbn.BatchNorm2d(3)(np.ascontiguousarray(x)), rtol=1e-6,
                               atol=1e-6)


def test_forward_in_place_then_backward_refuses(rng):
    x = random_input(rng, (4, 3, 5), np.float32)
    expected = cbn.BatchNorm1d(3)(x.copy())
    bn = cbn.BatchNorm1d(3)
    assert bn(x, out=x) is x
    np.testing.assert_array_equal(x, expected)
    with pytest.raises(ValueError, match="wrote its output over it"):
        bn.backward(np.ones_like(x))


def test_eval_in_place(rng):
    x = random_input(rng, (4, 3, 5), np.float64)
    bn = cbn.BatchNorm1d(3, dtype=np.float64).eval()
    bn.running_mean[...] = [1, 2, 3]
    expected = bn(x.copy())
    bn(x, out=x)
    np.testing.assert_array_equal(x, expected)


def test_backward_in_place_into_dy(rng):
    x = random_input(rng, (4, 3, 5), np.float32)
    dy = random_input(rng, (4, 3, 5), np.float32)
    bn = cbn.BatchNorm1d(3)
    bn(x)
    expected = bn.backward(dy.copy())
    assert bn.backward(dy, out=dy) is dy
    np.testing.assert_array_equal(dy, expected)


@pytest.mark.parametrize("make_out,exc,message", [
    (lambda x: np.empty((4, 3, 6), np.float32), ValueError, r"out: expected a float32 array of shape \(4, 3, 5\)"),
    (lambda x: np.empty((4, 3, 5)), ValueError, "out: expected a float32 array"),
    (lambda x: [0.0], TypeError, "out: expected a numpy.ndarray, got list"),
    (lambda x: np.empty((4, 3, 5), np.float32, order="F"), ValueError, "out: expected the memory order of the input"),
    (lambda x: x[:, :, ::-1], ValueError, "out: expected an array not overlapping x"),
    (lambda x: np.lib.stride_tricks.as_strided(np.empty(60, np.float32), (4, 3, 5), (60, 20, 4), writeable=False),
     ValueError, "out: expected a writable array"),
])
def test_bad_out(make_out, exc, message, rng):
    x = random_input(rng, (4, 3, 5), np.float32)
    bn = cbn.BatchNorm1d(3)
    before = bn.state_dict()
    with pytest.raises(exc, match=message):
        bn(x, out=make_out(x))
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_backward_out_must_not_overlap_x(rng):
    x = random_input(rng, (4, 3, 5), np.float32)
    bn = cbn.BatchNorm1d(3)
    bn(x)
    with pytest.raises(ValueError, match="out: expected an array not overlapping x"):
        bn.backward(np.ones_like(x), out=x)


def test_functional_out(rng):
    x = random_input(rng, (4, 3, 5), np.float64)
    dy = random_input(rng, (4, 3, 5), np.float64)
    y = np.empty_like(x)
    assert F.batch_norm(x, None, None, training=True, out=y) is y
    y2, mean, invstd = F.batch_norm_forward(x, out=np.empty_like(x))
    np.testing.assert_array_equal(y, y2)
    dx = np.empty_like(x)
    assert F.batch_norm_backward(dy, x, mean, invstd, out=dx)[0] is dx
    np.testing.assert_array_equal(dx, F.batch_norm_backward(dy, x, mean, invstd)[0])
    with pytest.raises(ValueError, match="out: expected an array not overlapping x"):
        F.batch_norm_backward(dy, x, mean, invstd, out=x)
