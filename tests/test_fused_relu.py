"""activation="relu": relu(bn(x)) in one pass, dy masked in the backward."""
import numpy as np
import pytest

import cbn
import reference as ref
from helpers import DTYPES, channel_axis, random_input, tol


CASES = [("NCHW", (6, 4, 5, 7)), ("NHWC", (6, 5, 7, 4)), ("NCHW", (9, 5)), ("NCHW", (16, 40, 12, 12)),
         ("NHWC", (8, 12, 12, 40))]


def make(layout, shape, dtype, rng, **kwargs):
    cls = {2: cbn.BatchNorm1d, 3: cbn.BatchNorm1d, 4: cbn.BatchNorm2d}[len(shape)]
    C = shape[channel_axis(layout, len(shape))]
    bn = cls(C, dtype=dtype, layout=layout, **kwargs)
    bn.weight[...] = rng.uniform(-1.5, 2, C)
    bn.bias[...] = rng.standard_normal(C)
    return bn


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout,shape", CASES)
def test_training_forward_and_backward(layout, shape, dtype, rng, threads):
    threads(2)
    axis = channel_axis(layout, len(shape))
    x = random_input(rng, shape, dtype)
    dy = random_input(rng, shape, dtype)
    fused = make(layout, shape, dtype, rng, activation="relu")
    plain = make(layout, shape, dtype, rng)
    plain.load_state_dict(fused.state_dict())
    y = fused(x)
    z = plain(x)
    np.testing.assert_array_equal(y, np.maximum(z, 0))
    dx = fused.backward(dy)
    g = dy * (y > 0)
    # the same result up to summation order (channels-last gating sums row by row)
    close = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, plain.backward(g.astype(dtype)), **close)
    np.testing.assert_allclose(fused.grad_weight, plain.grad_weight, **close)
    dx_ref, dw_ref, _ = ref.train_backward(g, x, axis, fused.weight)
    np.testing.assert_allclose(dx, dx_ref, rtol=0,
                               atol=(3e-5 if dtype == np.float32 else 1e-10) * max(1, np.abs(dx_ref).max()))


@pytest.mark.parametrize("layout,shape", CASES[:3])
def test_eval_forward_and_backward(layout, shape, rng):
    fused = make(layout, shape, np.float64, rng, activation="relu").eval()
    plain = make(layout, shape, np.float64, rng).eval()
    fused.running_mean[...] = plain.running_mean[...] = rng.standard_normal(fused.num_features)
    plain.load_state_dict(fused.state_dict())
    x = random_input(rng, shape, np.float64)
    dy = random_input(rng, shape, np.float64)
    y = fused(x)
    np.testing.assert_array_equal(y, np.maximum(plain(x), 0))
    np.testing.assert_array_equal(fused.backward(dy), plain.backward(dy * (y > 0)))


def test_nan_passes_forward_and_stops_gradient(rng):
    """A NaN output of the ReLU passes no gradient (as torch.relu's backward):
    batch norm's backward gets g = dy * (y > 0), 0 where y is NaN; checked
    against the float64 reference given that g."""
    x = random_input(rng, (5, 2, 4), np.float32)
    x[1, 0, 2] = np.nan
    dy = random_input(rng, x.shape, np.float32)
    rtol, atol = tol(np.float32)
    bn = cbn.BatchNorm1d(2, activation="relu")
    bn.weight[...] = [1.5, 0.75]
    # training: the NaN makes channel 0's batch statistics, so all its outputs, NaN
    with pytest.warns(RuntimeWarning):
        y = bn(x)
    assert np.all(np.isnan(y[:, 0])) and not np.any(np.isnan(y[:, 1]))
    dx = bn.backward(dy)
    g = np.where(y > 0, dy, 0)
    dx_ref, dw_ref, db_ref = ref.train_backward(g, x, 1, bn.weight)
    # sum(g) of channel 0: 0, where a gradient let through would be sum(dy[:, 0])
    assert bn.grad_bias[0] == 0
    np.testing.assert_allclose(bn.grad_bias, db_ref, rtol=rtol, atol=atol)
    # channel 0's dx is NaN, as the reference's (and PyTorch's): its statistics
    # are, whatever g is. (Its grad_weight, sum(g * xhat), is 0 * NaN summed:
    # NaN in both, but no part of the ReLU's contract; channel 1's is checked.)
    np.testing.assert_allclose(dx, dx_ref, rtol=rtol, atol=atol)
    np.testing.assert_allclose(bn.grad_weight[1], dw_ref[1], rtol=rtol, atol=atol)
    # eval: finite running statistics, so only the NaN's own output is NaN, and
    # its dx is g * weight * invstd = 0
    bn.eval()
    y = bn(x)
    assert np.isnan(y[1, 0, 2]) and np.count_nonzero(np.isnan(y)) == 1
    dx = bn.backward(dy)
    g = np.where(y > 0, dy, 0)
    dx_ref, dw_ref, db_ref = ref.eval_backward(g, x, 1, bn.running_mean, bn.running_var,
                                               bn.weight)
    assert dx[1, 0, 2] == 0
    np.testing.assert_allclose(dx, dx_ref, rtol=rtol, atol=atol)
    np.testing.assert_allclose(bn.grad_bias, db_ref, rtol=rtol, atol=atol)
    np.testing.assert_allclose(bn.grad_weight[1], dw_ref[1], rtol=rtol, atol=atol)


def test_renorm_and_virtual_batches_combine_with_relu(rng):
    x = random_input(rng, (8, 3, 5), np.float64)
    bn = cbn.BatchRenorm1d(3, activation="relu", virtual_batch_size=4, dtype=np.float64)
    y = bn(x)
    assert np.all(y >= 0) and np.any(y == 0)
    bn.backward(random_input(rng, (8, 3, 5), np.float64))


def test_bad_activation():
    with pytest.raises(ValueError, match=r"activation: expected one of \(None, 'relu'\), got 'gelu'"):
        cbn.BatchNorm2d(3, activation="gelu")
