"""Forward passes and running statistics against the float64 reference."""
import numpy as np
import pytest

import cbn
import reference as ref
from helpers import (DTYPES, channel_axis, channels_of, layer_cases, layer_with_random_state,
                     random_input, tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("cls,shape,layout", list(layer_cases()))
def test_train_forward_matches_reference(cls, shape, layout, affine, dtype, rng):
    axis, C = channels_of(shape, layout)
    bn = cls(C, affine=affine, dtype=dtype, layout=layout)
    if affine:
        bn.weight[...] = rng.standard_normal(C)
        bn.bias[...] = rng.standard_normal(C)
    x = random_input(rng, shape, dtype)
    if x.size // C < 2:
        pytest.skip("one value per channel: covered by the error tests")
    y = bn(x)
    assert y.dtype == dtype and y.shape == x.shape
    expected, mean, var, count = ref.train_forward(x, axis, bn.weight, bn.bias)
    np.testing.assert_allclose(y, expected, *tol(dtype))
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(bn.running_mean, 0.1 * mean, rtol=rtol, atol=atol)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * var * count / (count - 1), rtol=rtol, atol=atol)
    assert int(bn.num_batches_tracked) == 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,shape,layout", list(layer_cases()))
def test_eval_forward_uses_running_statistics(cls, shape, layout, dtype, rng):
    bn, axis = layer_with_random_state(cls, shape, layout, dtype, rng)
    x = random_input(rng, shape, dtype)
    before = bn.state_dict()
    y = bn.eval()(x)
    expected = ref.normalize(x, axis, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
    np.testing.assert_allclose(y, expected, *tol(dtype))
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


@pytest.mark.parametrize("momentum", [0.1, 0.5, None, 0.0, 1.0])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_running_statistics_over_several_steps(momentum, layout, rng):
    bn = cbn.BatchNorm2d(5, momentum=momentum, dtype=np.float64, layout=layout)
    shape = (4, 5, 3, 7) if layout == "NCHW" else (4, 3, 7, 5)
    axis = channel_axis(layout, 4)
    expected = ref.RunningStats(5, momentum)
    for step in range(6):
        x = random_input(rng, shape, np.float64, scale=1 + step, offset=step - 2)
        bn(x)
        expected.update(x, axis)
    np.testing.assert_allclose(bn.running_mean, expected.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bn.running_var, expected.var, rtol=1e-12, atol=1e-12)
    assert int(bn.num_batches_tracked) == 6


def test_cumulative_average_is_the_mean_of_batch_statistics(rng):
    bn = cbn.BatchNorm1d(3, momentum=None, dtype=np.float64)
    means = []
    for _ in range(5):
        x = random_input(rng, (10, 3), np.float64)
        means.append(x.mean(axis=0))
        bn(x)
    np.testing.assert_allclose(bn.running_mean, np.mean(means, axis=0), rtol=1e-12)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_without_running_stats_eval_uses_batch_statistics(layout, dtype, rng):
    bn = cbn.BatchNorm2d(3, track_running_stats=False, dtype=dtype, layout=layout)
    assert bn.running_mean is None and bn.running_var is None and bn.num_batches_tracked is None
    shape = (2, 3, 4, 5) if layout == "NCHW" else (2, 4, 5, 3)
    x = random_input(rng, shape, dtype)
    axis = channel_axis(layout, 4)
    expected = ref.train_forward(x, axis)[0]
    np.testing.assert_allclose(bn(x), expected, *tol(dtype))
    np.testing.assert_allclose(bn.eval()(x), expected, *tol(dtype))
    assert bn.state_dict().keys() == {"weight", "bias"}


def test_train_and_eval_return_self_and_switch_mode():
    bn = cbn.BatchNorm1d(2)
    assert bn.training is True
    assert bn.eval() is bn and bn.training is False
    assert bn.train() is bn and bn.training is True
    assert bn.train(False) is bn and bn.training is False


@pytest.mark.parametrize("dtype", DTYPES)
def test_defaults_match_pytorch(dtype):
    bn = cbn.BatchNorm2d(4, dtype=dtype)
    assert (bn.eps, bn.momentum, bn.affine, bn.track_running_stats, bn.layout) == (1e-5, 0.1, True, True, "NCHW")
    np.testing.assert_array_equal(bn.weight, np.ones(4))
    np.testing.assert_array_equal(bn.bias, np.zeros(4))
    np.testing.assert_array_equal(bn.running_mean, np.zeros(4))
    np.testing.assert_array_equal(bn.running_var, np.ones(4))
    assert bn.num_batches_tracked.dtype == np.int64 and bn.num_batches_tracked.shape == ()
    for arr in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        assert arr.dtype == dtype
    assert repr(bn).startswith("BatchNorm2d(4, eps=1e-05, momentum=0.1, affine=True")


def test_layer_default_dtype_is_float32():
    assert cbn.BatchNorm1d(3).dtype == np.float32


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_large_tensor_multithreaded_paths(layout, rng, threads):
    # large enough for several threads, row parts and channel splits; C < 32
    # exercises the split-channel path, C >= 32 the per-channel one
    threads(2)
    for C in (3, 40):
        shape = (16, C, 33, 35) if layout == "NCHW" else (16, 33, 35, C)
        x = random_input(rng, shape, np.float32, scale=3.0, offset=-1.0)
        bn = cbn.BatchNorm2d(C, layout=layout)
        axis = channel_axis(layout, 4)
        np.testing.assert_allclose(bn(x), ref.train_forward(x, axis)[0], rtol=2e-5, atol=2e-5)


def test_long_runs_cross_block_boundaries(rng):
    # float32 blocks hold 4096 values: runs of 10007 span three blocks
    x = random_input(rng, (2, 3, 10007), np.float32, scale=5.0, offset=3.0)
    bn = cbn.BatchNorm1d(3)
    np.testing.assert_allclose(bn(x), ref.train_forward(x, 1)[0], rtol=2e-5, atol=2e-5)
