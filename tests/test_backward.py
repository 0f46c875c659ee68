"""Backward passes against the closed form and against finite differences."""
import numpy as np
import pytest

import cbn
import reference as ref
from helpers import (DTYPES, channel_axis, channels_of, layer_cases, layer_with_random_state,
                     random_input)


def grad_tol(dtype, ref_value):
    scale = max(1.0, float(np.abs(ref_value).max()))
    return dict(rtol=0, atol=(3e-5 if np.dtype(dtype) == np.float32 else 1e-10) * scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("cls,shape,layout", list(layer_cases()))
def test_train_backward_matches_closed_form(cls, shape, layout, affine, dtype, rng):
    axis, C = channels_of(shape, layout)
    if np.prod(shape) // C < 2:
        pytest.skip("one value per channel")
    bn = cls(C, affine=affine, dtype=dtype, layout=layout)
    if affine:
        bn.weight[...] = rng.standard_normal(C)
    x = random_input(rng, shape, dtype)
    dy = random_input(rng, shape, dtype, offset=0.3)
    bn(x)
    dx = bn.backward(dy)
    assert dx.dtype == dtype and dx.shape == x.shape
    dx_ref, dw_ref, db_ref = ref.train_backward(dy, x, axis, bn.weight)
    np.testing.assert_allclose(dx, dx_ref, **grad_tol(dtype, dx_ref))
    if affine:
        assert bn.grad_weight.dtype == dtype and bn.grad_bias.dtype == dtype
        np.testing.assert_allclose(bn.grad_weight, dw_ref, **grad_tol(dtype, dw_ref))
        np.testing.assert_allclose(bn.grad_bias, db_ref, **grad_tol(dtype, db_ref))
    else:
        assert bn.grad_weight is None and bn.grad_bias is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,shape,layout", list(layer_cases()))
def test_eval_backward_is_diagonal(cls, shape, layout, dtype, rng):
    bn, axis = layer_with_random_state(cls, shape, layout, dtype, rng)
    x = random_input(rng, shape, dtype)
    dy = random_input(rng, shape, dtype)
    bn.eval()(x)
    dx = bn.backward(dy)
    dx_ref, dw_ref, db_ref = ref.eval_backward(dy, x, axis, bn.running_mean, bn.running_var, bn.weight)
    np.testing.assert_allclose(dx, dx_ref, **grad_tol(dtype, dx_ref))
    np.testing.assert_allclose(bn.grad_weight, dw_ref, **grad_tol(dtype, dw_ref))
    np.testing.assert_allclose(bn.grad_bias, db_ref, **grad_tol(dtype, db_ref))


def numerical_gradient(f, x, h=1e-6):
    """Central differences of the scalar f at every element of x."""
    grad = np.empty_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + h
        up = f()
        flat[i] = saved - h
        down = f()
        flat[i] = saved
        gflat[i] = (up - down) / (2 * h)
    return grad


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layout,shape", [("NCHW", (3, 2, 5)), ("NHWC", (3, 5, 2)),
                                          ("NCHW", (4, 3)), ("NCHW", (2, 3, 1, 7)),
                                          ("NHWC", (2, 1, 3, 3))])
def test_gradients_match_finite_differences(layout, shape, training, rng):
    cls = {2: cbn.BatchNorm1d, 3: cbn.BatchNorm1d, 4: cbn.BatchNorm2d}[len(shape)]
    axis = channel_axis(layout, len(shape))
    C = shape[axis]
    bn = cls(C, dtype=np.float64, layout=layout, momentum=0.0)  # momentum 0: running stats stay put
    bn.weight[...] = rng.uniform(0.5, 2, C)
    bn.bias[...] = rng.standard_normal(C)
    bn.running_mean[...] = rng.standard_normal(C)
    bn.running_var[...] = rng.uniform(0.5, 2, C)
    bn.train(training)
    x = random_input(rng, shape, np.float64)
    g = random_input(rng, shape, np.float64)

    def loss():
        return float(np.sum(bn(x) * g))

    bn(x)
    dx = bn.backward(g)
    gw, gb = bn.grad_weight.copy(), bn.grad_bias.copy()
    np.testing.assert_allclose(dx, numerical_gradient(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gw, numerical_gradient(loss, bn.weight), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gb, numerical_gradient(loss, bn.bias), rtol=1e-6, atol=1e-7)


def test_backward_can_repeat_and_follows_the_last_forward(rng):
    bn = cbn.BatchNorm1d(3, dtype=np.float64)
    x1, x2 = random_input(rng, (5, 3), np.float64), random_input(rng, (6, 3), np.float64)
    dy1 = random_input(rng, (5, 3), np.float64)
    bn(x1)
    first = bn.backward(dy1)
    np.testing.assert_array_equal(bn.backward(dy1), first)
    bn(x2)
    with pytest.raises(ValueError, match=r"dy: expected shape \(6, 3\)"):
        bn.backward(dy1)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_large_tensor_backward_multithreaded(layout, rng, threads):
    threads(2)
    for C in (3, 40):
        shape = (16, C, 33, 35) if layout == "NCHW" else (16, 33, 35, C)
        axis = channel_axis(layout, 4)
        x = random_input(rng, shape, np.float32, scale=3.0, offset=-1.0)
        dy = random_input(rng, shape, np.float32)
        bn = cbn.BatchNorm2d(C, layout=layout)
        bn(x)
        dx = bn.backward(dy)
        dx_ref, dw_ref, db_ref = ref.train_backward(dy, x, axis)
        np.testing.assert_allclose(dx, dx_ref, **grad_tol(np.float32, dx_ref))
        np.testing.assert_allclose(bn.grad_weight, dw_ref, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(bn.grad_bias, db_ref, rtol=1e-5, atol=1e-3)
