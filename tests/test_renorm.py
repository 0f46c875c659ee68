"""Batch Renormalization against its defining formula."""
import numpy as np
import pytest

import cbn
import reference as ref
from helpers import DTYPES, channel_axis, random_input, tol


def layer(layout, shape, dtype, rng, **kwargs):
    cls = {2: cbn.BatchRenorm1d, 3: cbn.BatchRenorm1d, 4: cbn.BatchRenorm2d,
           5: cbn.BatchRenorm3d}[len(shape)]
    C = shape[channel_axis(layout, len(shape))]
    bn = cls(C, dtype=dtype, layout=layout, **kwargs)
    bn.weight[...] = rng.uniform(0.5, 2, C)
    bn.bias[...] = rng.standard_normal(C)
    bn.running_mean[...] = rng.standard_normal(C)
    bn.running_var[...] = rng.uniform(0.3, 3, C)
    return bn


CASES = [("NCHW", (6, 4, 5)), ("NHWC", (6, 5, 4)), ("NCHW", (5, 3, 4, 4)), ("NHWC", (3, 2, 3, 4, 5)),
         ("NCHW", (9, 7))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout,shape", CASES)
def test_rmax_one_dmax_zero_is_batch_norm_exactly(layout, shape, dtype, rng):
    x = random_input(rng, shape, dtype)
    dy = random_input(rng, shape, dtype)
    renorm = layer(layout, shape, dtype, rng, rmax=1.0, dmax=0.0)
    bn = {2: cbn.BatchNorm1d, 3: cbn.BatchNorm1d, 4: cbn.BatchNorm2d, 5: cbn.BatchNorm3d}[len(shape)](
        renorm.num_features, dtype=dtype, layout=layout)
    bn.load_state_dict(renorm.state_dict())
    for _ in range(2):
        np.testing.assert_array_equal(renorm(x), bn(x))
        np.testing.assert_array_equal(renorm.backward(dy), bn.backward(dy))
        np.testing.assert_array_equal(renorm.grad_weight, bn.grad_weight)
        np.testing.assert_array_equal(renorm.grad_bias, bn.grad_bias)
        np.testing.assert_array_equal(renorm.running_mean, bn.running_mean)
    # the moving sigma is the paper's average of sigma_B, not batch norm's
    # average of unbiased variances; with the same statistics, eval is batch norm
    bn.load_state_dict(renorm.state_dict())
    renorm.eval()
    bn.eval()
    np.testing.assert_array_equal(renorm(x), bn(x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout,shape", CASES)
def test_forward_backward_and_running_stats_match_the_formula(layout, shape, dtype, rng):
    axis = channel_axis(layout, len(shape))
    # a batch far from the running statistics, so that the clipping is active
    x = random_input(rng, shape, dtype, scale=4.0, offset=3.0)
    dy = random_input(rng, shape, dtype)
    bn = layer(layout, shape, dtype, rng, rmax=1.5, dmax=0.5, momentum=0.3)
    rm, rv = bn.running_mean.copy(), bn.running_var.copy()
    y = bn(x)
    y_ref, r, d = ref.renorm_forward(x, axis, rm, rv, bn.weight, bn.bias, 1e-5, 1.5, 0.5)
    assert np.any(r == 1.5) or np.any(np.abs(d) == 0.5), "the test should exercise clipping"
    np.testing.assert_allclose(y, y_ref, *tol(dtype))
    dx = bn.backward(dy)
    dx_ref, dw_ref, db_ref = ref.renorm_backward(dy, x, axis, bn.weight, r, d)
    scale = max(1, np.abs(dx_ref).max())
    np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=3 * tol(dtype)[1] * scale)
    np.testing.assert_allclose(bn.grad_weight, dw_ref, rtol=1e-5 if dtype == np.float32 else 1e-10,
                               atol=1e-4 if dtype == np.float32 else 1e-10)
    np.testing.assert_allclose(bn.grad_bias, db_ref, rtol=1e-5, atol=1e-4 if dtype == np.float32 else 1e-10)
    mean, var, count = ref.batch_stats(x, axis)
    np.testing.assert_allclose(bn.running_mean, 0.7 * rm + 0.3 * mean, *tol(dtype))
    sigma = 0.7 * np.sqrt(rv.astype(np.float64) + 1e-5) + 0.3 * np.sqrt(var + 1e-5)
    np.testing.assert_allclose(bn.running_var, sigma ** 2 - 1e-5, *tol(dtype))


def test_gradients_match_finite_differences_with_r_and_d_fixed(rng):
    shape, axis = (5, 3, 4), 1
    bn = layer("NCHW", shape, np.float64, rng, rmax=1.2, dmax=0.3, momentum=0.0)
    x = random_input(rng, shape, np.float64, scale=3.0, offset=2.0)
    g = random_input(rng, shape, np.float64)
    _, r, d = ref.renorm_forward(x, axis, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                 1e-5, 1.2, 0.3)

    def loss():  # r and d frozen at their values for x, as the backward treats them
        y, _, _ = ref.renorm_forward(x, axis, None, None, bn.weight, bn.bias, 1e-5, 1.2, 0.3, r, d)
        return float(np.sum(y * g))

    bn(x)
    dx = bn.backward(g)
    num = np.empty_like(x)
    for i in range(x.size):
        saved = x.flat[i]
        x.flat[i] = saved + 1e-6
        up = loss()
        x.flat[i] = saved - 1e-6
        down = loss()
        x.flat[i] = saved
        num.flat[i] = (up - down) / 2e-6
    np.testing.assert_allclose(dx, num, rtol=1e-6, atol=1e-7)


def test_eval_is_batch_norm_and_limits_are_attributes(rng):
    x = random_input(rng, (4, 3, 5), np.float32)
    bn = layer("NCHW", (4, 3, 5), np.float32, rng)
    bn.rmax, bn.dmax = 2.0, 1.0
    assert (bn.rmax, bn.dmax) == (2.0, 1.0)
    bn.eval()
    expected = ref.normalize(x, 1, bn.running_mean, bn.running_var, bn.weight, bn.bias, 1e-5)
    np.testing.assert_allclose(bn(x), expected, *tol(np.float32))
    for bad, exc in ((0.5, ValueError), (float("inf"), ValueError), ("3", TypeError)):
        with pytest.raises(exc, match="rmax: expected a finite float >= 1"):
            bn.rmax = bad
    with pytest.raises(ValueError, match="dmax: expected a finite float >= 0"):
        cbn.BatchRenorm1d(3, dmax=-1)
    assert bn.rmax == 2.0


def test_nan_channel_stays_in_its_channel(rng):
    x = random_input(rng, (6, 3, 5), np.float64)
    x[2, 1, 3] = np.nan
    bn = layer("NCHW", (6, 3, 5), np.float64, rng)
    before = bn.running_mean.copy()
    with pytest.warns(RuntimeWarning, match=r"channel\(s\) \[1\]"):
        y = bn(x)
    assert np.all(np.isnan(y[:, 1])) and np.all(np.isfinite(y[:, [0, 2]]))
    assert bn.running_mean[1] == before[1]


@pytest.mark.parametrize("layout,shape", CASES)
def test_several_steps_equal_the_papers_algorithm_1(layout, shape, rng):
    """Outputs, gradients and moving statistics over steps whose batches
    drift, against Algorithm 1 of Ioffe (2017) in float64; rmax and dmax
    relaxed between steps as the paper does."""
    axis = channel_axis(layout, len(shape))
    bn = layer(layout, shape, np.float64, rng, rmax=1.0, dmax=0.0, momentum=0.2)
    paper = ref.PaperRenorm(bn.running_mean, np.sqrt(bn.running_var + 1e-5), bn.weight, bn.bias,
                            1e-5, 0.2)
    clipped = False
    for step, (rmax, dmax) in enumerate([(1.0, 0.0), (1.2, 0.2), (1.5, 0.5), (2.0, 1.0),
                                         (3.0, 5.0)]):
        bn.rmax, bn.dmax = rmax, dmax
        x = random_input(rng, shape, np.float64, scale=1.0 + step, offset=step - 2.0)
        dy = random_input(rng, shape, np.float64)
        y_ref, dx_ref, dgamma, dbeta, r, d = paper.step(x, dy, axis, rmax, dmax)
        clipped |= bool(np.any(r == rmax) or np.any(np.abs(d) == dmax))
        np.testing.assert_allclose(bn(x), y_ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(bn.backward(dy), dx_ref, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(bn.grad_weight, dgamma, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(bn.grad_bias, dbeta, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(bn.running_mean, paper.mu, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.sqrt(bn.running_var + 1e-5), paper.sigma, rtol=1e-12)
    assert clipped, "the test should exercise clipping"


@pytest.mark.parametrize("m", [2, 4, 8])
def test_r_is_unbiased_on_iid_batches(m):
    """The moving sigma averages sigma_B (the paper), so r = sigma_B / sigma
    has mean ~1 on i.i.d. batches even of 2 values per channel (averaging
    unbiased variances instead made it 0.64 at m = 2)."""
    rng = np.random.default_rng(m)
    C = 512
    bn = cbn.BatchRenorm1d(C, dtype=np.float64, rmax=1e6, dmax=1e6, momentum=0.01)
    rs = []
    for step in range(1500):
        x = rng.standard_normal((m, C)) * 3.0 + 1.0
        r, _ = bn.corrections(x.mean(axis=0), x.var(axis=0))
        if step >= 500:
            rs.append(r.mean())
        bn(x)
    assert abs(np.mean(rs) - 1.0) < 0.03, np.mean(rs)
