"""PyTorch's interop edges that its own batch-norm tests exercise, and cbn's
documented choices where it departs from PyTorch or Keras."""
import numpy as np
import pytest

import cbn
import cbn.functional as F
import reference as ref
from helpers import random_input


def test_momentum_is_ignored_in_eval_mode_and_checked_in_training(rng):
    x = random_input(rng, (4, 3, 2, 2), np.float32)
    mean, var = np.zeros(3, np.float32), np.ones(3, np.float32)
    y = F.batch_norm(x, mean, var, training=False, momentum=-1.2)
    np.testing.assert_array_equal(y, F.batch_norm(x, mean, var, training=False))
    with pytest.raises(ValueError, match=r"momentum: expected a float in \[0, 1\]"):
        F.batch_norm(x, mean, var, training=True, momentum=-1.2)


def test_functional_takes_strided_vectors_and_updates_strided_statistics_in_place(rng):
    x = random_input(rng, (5, 4, 3), np.float64)
    storage = np.stack([np.zeros(4), np.ones(4), rng.uniform(0.5, 2, 4), rng.standard_normal(4)],
                       axis=1)   # four (4,) columns, each a strided view
    mean, var, weight, bias = (storage[:, i] for i in range(4))
    assert not mean.flags.c_contiguous
    contiguous = [np.ascontiguousarray(v) for v in (mean, var, weight, bias)]
    y = F.batch_norm(x, mean, var, weight, bias, training=True, momentum=0.25)
    y_ref = F.batch_norm(x, *contiguous, training=True, momentum=0.25)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(storage[:, 0], contiguous[0])   # updated through the view
    np.testing.assert_array_equal(storage[:, 1], contiguous[1])
    np.testing.assert_array_equal(F.batch_norm(x, mean, var, weight, bias),
                                  F.batch_norm(x, *contiguous))
    _, m, invstd = F.batch_norm_forward(x, weight, bias)
    np.testing.assert_array_equal(F.batch_norm_backward(x, x, m, invstd, weight)[0],
                                  F.batch_norm_backward(x, x, m, invstd, contiguous[2])[0])


@pytest.mark.parametrize("strict", [True, False])
def test_a_state_dict_without_num_batches_tracked_loads_and_keeps_the_count(strict, rng):
    """As PyTorch's _NormBase._load_from_state_dict: the missing count is
    filled with the layer's own (0 for a fresh layer)."""
    bn = cbn.BatchNorm1d(3)
    for _ in range(4):
        bn(random_input(rng, (6, 3), np.float32))
    state = {k: v for k, v in cbn.BatchNorm1d(3).state_dict().items() if k != "num_batches_tracked"}
    keys = bn.load_state_dict(state, strict=strict)
    assert int(bn.num_batches_tracked) == 4
    assert keys.missing_keys == ["num_batches_tracked"] and keys.unexpected_keys == []
    fresh = cbn.BatchNorm1d(3)
    fresh.load_state_dict(state)
    assert int(fresh.num_batches_tracked) == 0


def test_load_state_dict_returns_the_missing_and_unexpected_keys():
    bn = cbn.BatchNorm2d(3)
    keys = bn.load_state_dict({"weight": np.ones(3), "extra": np.ones(3)}, strict=False)
    assert keys.missing_keys == ["bias", "running_mean", "running_var", "num_batches_tracked"]
    assert keys.unexpected_keys == ["extra"]
    assert keys == bn.load_state_dict(  # a named tuple, as PyTorch's _IncompatibleKeys
        {"weight": np.ones(3), "extra": np.ones(3)}, strict=False)
    assert bn.load_state_dict(bn.state_dict()) == ([], [])


def test_shape_mismatches_raise_value_error(rng):
    """README (differences): a shape mismatch is a ValueError, PyTorch's RuntimeError."""
    x = random_input(rng, (4, 3), np.float32)
    with pytest.raises(ValueError, match="running_mean: expected shape"):
        F.batch_norm(x, np.zeros(4, np.float32), np.ones(4, np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_renormalisation_with_virtual_batches_takes_r_and_d_per_virtual_batch(dtype, rng):
    """Documented choice: (r, d) per virtual batch from its own statistics
    (tf-keras takes one pair from the averaged statistics)."""
    k, C = 4, 3
    x = random_input(rng, (12, C), dtype, scale=3.0, offset=1.0)
    ghost = cbn.BatchRenorm1d(C, dtype=dtype, virtual_batch_size=k, rmax=1.5, dmax=0.5)
    ghost.running_mean[...] = rng.standard_normal(C)
    ghost.running_var[...] = rng.uniform(0.5, 2.0, C)
    rm, rv = ghost.running_mean.copy(), ghost.running_var.copy()
    y = ghost(x)
    for start in range(0, 12, k):
        chunk = x[start:start + k]
        want, _, _ = ref.renorm_forward(chunk, 1, rm, rv, ghost.weight, ghost.bias, 1e-5, 1.5, 0.5)
        np.testing.assert_allclose(y[start:start + k], want, rtol=1e-5 if dtype == np.float32 else 1e-11,
                                   atol=1e-5 if dtype == np.float32 else 1e-11)
    # the moving statistics move towards the means over virtual batches of mean_B and sigma_B
    chunks = x.astype(np.float64).reshape(3, k, C)
    sigma_b = np.sqrt(chunks.var(axis=1) + 1e-5).mean(axis=0)
    sigma = 0.9 * np.sqrt(rv.astype(np.float64) + 1e-5) + 0.1 * sigma_b
    np.testing.assert_allclose(ghost.running_mean, 0.9 * rm + 0.1 * chunks.mean(axis=1).mean(axis=0),
                               rtol=1e-5)
    np.testing.assert_allclose(ghost.running_var, sigma ** 2 - 1e-5, rtol=1e-5)


def test_ghost_batches_are_consecutive_rows_with_unbiased_variances(rng):
    """README: virtual batches are runs of k consecutive rows (the ghost
    batch norm paper's chunks; tf-keras takes rows j, j + N/k, ...), and the
    running variance averages their unbiased variances (PyTorch's convention;
    tf-keras averages biased ones)."""
    x = random_input(rng, (8, 2), np.float64)
    bn = cbn.BatchNorm1d(2, dtype=np.float64, virtual_batch_size=4, momentum=1.0)
    y = bn(x)
    for start in (0, 4):
        chunk = x[start:start + 4]
        np.testing.assert_allclose(y[start:start + 4], (chunk - chunk.mean(0)) / np.sqrt(chunk.var(0) + 1e-5),
                                   rtol=1e-12)
    chunks = x.reshape(2, 4, 2)
    np.testing.assert_allclose(bn.running_var, chunks.var(axis=1, ddof=1).mean(axis=0), rtol=1e-12)
