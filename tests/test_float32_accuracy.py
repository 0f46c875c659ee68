"""Statistics stay exact in float32 when |mean| >> std; channels stay independent."""
import numpy as np
import pytest

import cbn
import reference as ref
from helpers import DTYPES, channel_axis


@pytest.mark.parametrize("offset", [1e4, 1e5, 1e6])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_float32_large_mean_gives_exact_running_var(offset, layout, rng):
    shape = (16, 8, 20, 20) if layout == "NCHW" else (16, 20, 20, 8)
    x = (offset + rng.standard_normal(shape)).astype(np.float32)
    axis = channel_axis(layout, 4)
    bn = cbn.BatchNorm2d(8, momentum=1.0, layout=layout)  # running stats = this batch's
    y = bn(x)
    # the truth: the float32 values' statistics computed in float64
    y_ref, mean, var, count = ref.train_forward(x, axis)
    np.testing.assert_allclose(bn.running_var, var * count / (count - 1), rtol=1e-5)
    np.testing.assert_allclose(bn.running_mean, mean, rtol=1e-7)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_float32_large_mean_gradients_stay_accurate(layout, rng):
    shape = (8, 4, 16, 16) if layout == "NCHW" else (8, 16, 16, 4)
    x = (1e4 + rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    bn = cbn.BatchNorm2d(4, layout=layout)
    bn(x)
    dx = bn.backward(dy)
    dx_ref, dw_ref, db_ref = ref.train_backward(dy, x, channel_axis(layout, 4))
    np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=1e-4 * np.abs(dx_ref).max())
    np.testing.assert_allclose(bn.grad_weight, dw_ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("value", [0.1, 12345.678, -3e6])
def test_constant_channel_gives_exactly_beta(value, layout, dtype, rng):
    shape = (4, 3, 5, 6) if layout == "NCHW" else (4, 5, 6, 3)
    axis = channel_axis(layout, 4)
    x = rng.standard_normal(shape).astype(dtype)
    idx = [slice(None)] * 4
    idx[axis] = 1
    x[tuple(idx)] = value
    bn = cbn.BatchNorm2d(3, dtype=dtype, layout=layout)
    bn.bias[...] = [0.25, -1.5, 2.0]
    bn.weight[...] = [1.0, 3.0, 0.5]
    y = bn(x)
    assert np.all(y[tuple(idx)] == dtype(-1.5))
    assert bn.running_var[1] == dtype(0.9)  # M2 exactly 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_value_only_affects_its_channel(bad, layout, dtype, rng):
    shape = (6, 4, 5, 5) if layout == "NCHW" else (6, 5, 5, 4)
    axis = channel_axis(layout, 4)
    x = rng.standard_normal(shape).astype(dtype)
    idx = [2, 1, 3] if layout == "NCHW" else [2, 3, 1]
    idx.insert(axis, 2)
    x[tuple(idx)] = bad
    bn = cbn.BatchNorm2d(4, dtype=dtype, layout=layout)
    with pytest.warns(RuntimeWarning, match=r"channel\(s\) \[2\]"):
        y = bn(x)
    others = [c for c in range(4) if c != 2]
    good = np.take(y, others, axis=axis)
    expected = np.take(ref.train_forward(np.take(x, others, axis=axis), axis)[0], range(3), axis=axis)
    np.testing.assert_allclose(good, expected, rtol=2e-5, atol=2e-5)
    assert not np.all(np.isfinite(np.take(y, [2], axis=axis)))
    dx = bn.backward(np.ones_like(x))
    assert np.all(np.isfinite(np.take(dx, others, axis=axis)))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("pattern", ["sorted", "step", "ramp-offset"])
def test_statistics_stay_exact_when_later_blocks_drift(pattern, layout, rng):
    """Blocks are centred on the running mean of earlier blocks; data whose
    order makes that shift far from a block's values must still be exact."""
    N, C, S = 64, 3, 400
    base = rng.standard_normal((N, C, S))
    if pattern == "sorted":          # each channel's values in increasing order
        v = np.sort(base.transpose(1, 0, 2).reshape(C, -1), axis=1)
        base = v.reshape(C, N, S).transpose(1, 0, 2)
    elif pattern == "step":          # zeros, then values near 1e4
        base[N // 2:] += 1e4
        base[: N // 2] = 0.0
    else:                            # slowly rising offset with small spread
        base = base * 1e-2 + 1e4 + np.linspace(0, 50, N)[:, None, None]
    x = base.astype(np.float32)
    if layout == "NHWC":
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    axis = channel_axis(layout, 3)
    bn = cbn.BatchNorm1d(C, momentum=1.0, layout=layout)
    y = bn(x)
    y_ref, mean, var, count = ref.train_forward(x, axis)
    np.testing.assert_allclose(bn.running_var, var * count / (count - 1), rtol=1e-6)
    np.testing.assert_allclose(bn.running_mean, mean, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-4)
