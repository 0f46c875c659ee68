"""cbn.functional against the reference and against the layers."""
import numpy as np
import pytest

import cbn
import cbn.functional as F
import reference as ref
from helpers import DTYPES, channel_axis, random_input, tol


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout,shape", [("NCHW", (3, 4, 5)), ("NHWC", (3, 5, 4)),
                                          ("NCHW", (6, 4)), ("NHWC", (2, 3, 3, 3, 4))])
def test_batch_norm_training_updates_running_stats_in_place(layout, shape, dtype, rng):
    axis = channel_axis(layout, len(shape))
    C = shape[axis]
    x = random_input(rng, shape, dtype)
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
    w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.3, layout=layout)
    y_ref, mean, var, count = ref.train_forward(x, axis, w, b)
    np.testing.assert_allclose(y, y_ref, *tol(dtype))
    np.testing.assert_allclose(rm, 0.3 * mean, *tol(dtype))
    np.testing.assert_allclose(rv, 0.7 + 0.3 * var * count / (count - 1), *tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_eval_and_training_without_running_stats(dtype, rng):
    x = random_input(rng, (5, 3, 4), dtype)
    rm = rng.standard_normal(3).astype(dtype)
    rv = rng.uniform(0.5, 2, 3).astype(dtype)
    y = F.batch_norm(x, rm, rv)
    np.testing.assert_allclose(y, ref.normalize(x, 1, rm, rv, None, None, 1e-5), *tol(dtype))
    y2 = F.batch_norm(x, None, None, training=True)
    np.testing.assert_allclose(y2, ref.train_forward(x, 1)[0], *tol(dtype))
    with pytest.raises(ValueError, match="running_mean: expected an array when training=False"):
        F.batch_norm(x, None, None)


def test_batch_norm_matches_the_layer(rng):
    x = random_input(rng, (4, 3, 6, 6), np.float32)
    bn = cbn.BatchNorm2d(3)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    np.testing.assert_array_equal(F.batch_norm(x, rm, rv, bn.weight, bn.bias, training=True), bn(x))
    np.testing.assert_array_equal(rm, bn.running_mean)
    np.testing.assert_array_equal(rv, bn.running_var)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout,shape", [("NCHW", (3, 4, 5)), ("NHWC", (3, 5, 4)), ("NCHW", (7, 2))])
def test_forward_and_backward_pair(layout, shape, dtype, rng):
    axis = channel_axis(layout, len(shape))
    C = shape[axis]
    x = random_input(rng, shape, dtype)
    dy = random_input(rng, shape, dtype)
    w = rng.standard_normal(C).astype(dtype)
    y, mean, invstd = F.batch_norm_forward(x, w, None, eps=1e-3, layout=layout)
    assert mean.dtype == np.float64 and invstd.dtype == np.float64
    y_ref, mean_ref, var_ref, _ = ref.train_forward(x, axis, w, None, eps=1e-3)
    np.testing.assert_allclose(y, y_ref, *tol(dtype))
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-12 if dtype == np.float64 else 1e-6)
    np.testing.assert_allclose(invstd, 1 / np.sqrt(var_ref + 1e-3), rtol=1e-10 if dtype == np.float64 else 1e-5)
    dx, dw, db = F.batch_norm_backward(dy, x, mean, invstd, w, layout=layout)
    dx_ref, dw_ref, db_ref = ref.train_backward(dy, x, axis, w, eps=1e-3)
    atol = 5e-5 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=atol * max(1, np.abs(dx_ref).max()))
    np.testing.assert_allclose(dw, dw_ref, rtol=0, atol=atol * max(1, np.abs(dw_ref).max()))
    np.testing.assert_allclose(db, db_ref, rtol=0, atol=atol * max(1, np.abs(db_ref).max()))
    # float32 statistics (as PyTorch saves them) are accepted
    dx32 = F.batch_norm_backward(dy, x, mean.astype(np.float32), invstd.astype(np.float32), w, layout=layout)[0]
    np.testing.assert_allclose(dx32, dx_ref, rtol=0, atol=1e-3 * max(1, np.abs(dx_ref).max()))


@pytest.mark.parametrize("call,exc,message", [
    (lambda x: F.batch_norm(x, np.zeros(3), np.ones(3, np.float32)), TypeError, "running_mean: expected dtype float32, got float64"),
    (lambda x: F.batch_norm(x, np.zeros(4, np.float32), np.ones(4, np.float32)), ValueError, r"running_mean: expected shape \(3,\)"),
    (lambda x: F.batch_norm(x, np.zeros(3, np.float32), None), ValueError, "both arrays or both None"),
    (lambda x: F.batch_norm(x, None, None, training=True, momentum=None), TypeError, "momentum: expected a float in"),
    (lambda x: F.batch_norm(x, None, None, training=True, weight=np.ones(3)), TypeError, "weight: expected dtype float32"),
    (lambda x: F.batch_norm(x, None, None, training=True, layout="nchw"), ValueError, "layout: expected one of"),
    (lambda x: F.batch_norm(x[0, 0], None, None, training=True), ValueError, "x: expected an array with at least 2 dimensions"),
    (lambda x: F.batch_norm(x.astype(np.int64), None, None, training=True), TypeError, "x: expected a float32, float64, float16 or bfloat16 array, got int64"),
    (lambda x: F.batch_norm_forward(x[:1, :, :1]), ValueError, "more than 1 value per channel"),
    (lambda x: F.batch_norm_backward(x[:2], x, np.zeros(3), np.ones(3)), ValueError, "dy: expected the shape of x"),
    (lambda x: F.batch_norm_backward(x, x, np.zeros(4), np.ones(3)), ValueError, r"mean: expected shape \(3,\)"),
    (lambda x: F.batch_norm_backward(x, x, np.zeros(3, int), np.ones(3)), TypeError, "mean: expected a float array"),
    (lambda x: F.batch_norm_backward(x, x, np.zeros(3), [1, 1, 1]), TypeError, "invstd: expected a numpy.ndarray"),
])
def test_functional_errors(call, exc, message, rng):
    x = random_input(rng, (4, 3, 5), np.float32)
    with pytest.raises(exc, match=message):
        call(x)


def test_readonly_running_stats_rejected_only_when_updated(rng):
    x = random_input(rng, (4, 3, 5), np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    rm.flags.writeable = False
    F.batch_norm(x, rm, rv)  # eval: only read
    with pytest.raises(ValueError, match="running_mean: expected a writable array"):
        F.batch_norm(x, rm, rv, training=True)
