"""Debiased running averages: the zero-started EMA divided by 1 - (1 - m)^t."""
import numpy as np
import pytest

import cbn
import cbn.functional as F
from helpers import random_input


@pytest.mark.parametrize("cls", [cbn.BatchNorm1d, cbn.BatchRenorm1d])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_first_step_gives_the_batch_statistics_exactly(cls, dtype, rng):
    x = random_input(rng, (7, 4, 5), dtype, offset=3.0)
    bn = cls(4, momentum=0.1, bias_correction=True, dtype=dtype)
    bn(x)
    _, mean, invstd = F.batch_norm_forward(x)  # the same kernel's batch statistics
    var = 1 / invstd ** 2 - 1e-5
    if cls is cbn.BatchNorm1d:   # unbiased; renormalisation averages sigma_B = sqrt(var + eps)
        var = var * 35 / 34
    np.testing.assert_array_equal(bn.running_mean, mean.astype(dtype))
    np.testing.assert_allclose(bn.running_var, var, rtol=1e-6 if dtype == np.float32 else 1e-9)


@pytest.mark.parametrize("momentum", [0.1, 0.5, 0.02])
def test_matches_the_debiased_zero_started_average(momentum, rng):
    bn = cbn.BatchNorm2d(3, momentum=momentum, bias_correction=True, dtype=np.float64)
    raw_mean, raw_var = np.zeros(3), np.zeros(3)
    for t in range(1, 8):
        x = random_input(rng, (4, 3, 2, 5), np.float64, scale=t, offset=t)
        bn(x)
        mean = x.mean(axis=(0, 2, 3))
        var = x.var(axis=(0, 2, 3), ddof=1)
        raw_mean = (1 - momentum) * raw_mean + momentum * mean
        raw_var = (1 - momentum) * raw_var + momentum * var
        factor = 1 - (1 - momentum) ** t
        np.testing.assert_allclose(bn.running_mean, raw_mean / factor, rtol=1e-12)
        np.testing.assert_allclose(bn.running_var, raw_var / factor, rtol=1e-12)


def test_state_dict_round_trip_continues_identically(rng):
    a = cbn.BatchNorm1d(3, momentum=0.2, bias_correction=True, dtype=np.float64)
    for _ in range(3):
        a(random_input(rng, (6, 3), np.float64))
    b = cbn.BatchNorm1d(3, momentum=0.2, bias_correction=True, dtype=np.float64)
    b.load_state_dict(a.state_dict())
    for _ in range(2):
        x = random_input(rng, (6, 3), np.float64)
        np.testing.assert_array_equal(a(x), b(x))
    for key, value in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[key], value)


def test_cumulative_average_is_already_unbiased(rng):
    a = cbn.BatchNorm1d(3, momentum=None, bias_correction=True, dtype=np.float64)
    b = cbn.BatchNorm1d(3, momentum=None, dtype=np.float64)
    for _ in range(4):
        x = random_input(rng, (5, 3), np.float64)
        a(x)
        b(x)
    np.testing.assert_array_equal(a.running_mean, b.running_mean)
    assert "bias_correction=True" in repr(a)


def test_bias_correction_must_be_a_bool():
    with pytest.raises(TypeError, match="bias_correction: expected True or False"):
        cbn.BatchNorm2d(3, bias_correction="yes")
