"""virtual_batch_size: statistics per run of k rows (ghost batch norm)."""
import numpy as np
import pytest

import cbn
from helpers import DTYPES, random_input


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout,shape,k", [("NCHW", (12, 3, 4, 5), 4), ("NHWC", (12, 4, 5, 3), 3),
                                            ("NCHW", (10, 6), 5), ("NCHW", (9, 2, 7), 9)])
def test_each_virtual_batch_is_normalised_on_its_own(layout, shape, k, dtype, rng):
    cls = {2: cbn.BatchNorm1d, 3: cbn.BatchNorm1d, 4: cbn.BatchNorm2d}[len(shape)]
    C = shape[1] if layout == "NCHW" else shape[-1]
    ghost = cls(C, dtype=dtype, layout=layout, virtual_batch_size=k, momentum=0.25)
    ghost.weight[...] = rng.uniform(0.5, 2, C)
    x = random_input(rng, shape, dtype)
    dy = random_input(rng, shape, dtype)
    y = ghost(x)
    dx = ghost.backward(dy)
    means, unbiased, grad_w, grad_b = [], [], 0, 0
    for start in range(0, shape[0], k):
        rows = slice(start, start + k)
        single = cls(C, dtype=dtype, layout=layout, momentum=1.0)
        single.weight[...] = ghost.weight
        np.testing.assert_array_equal(y[rows], single(x[rows]))
        np.testing.assert_array_equal(dx[rows], single.backward(dy[rows]))
        means.append(single.running_mean.astype(np.float64))
        unbiased.append(single.running_var.astype(np.float64))
        grad_w = grad_w + single.grad_weight.astype(np.float64)
        grad_b = grad_b + single.grad_bias.astype(np.float64)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(ghost.running_mean, 0.25 * np.mean(means, axis=0), rtol=rtol, atol=1e-7)
    np.testing.assert_allclose(ghost.running_var, 0.75 + 0.25 * np.mean(unbiased, axis=0), rtol=rtol)
    np.testing.assert_allclose(ghost.grad_weight, grad_w, rtol=rtol, atol=1e-5)
    np.testing.assert_allclose(ghost.grad_bias, grad_b, rtol=rtol, atol=1e-5)
    assert int(ghost.num_batches_tracked) == 1


def test_eval_ignores_virtual_batches(rng):
    x = random_input(rng, (6, 3), np.float32)
    a = cbn.BatchNorm1d(3, virtual_batch_size=2).eval()
    b = cbn.BatchNorm1d(3).eval()
    np.testing.assert_array_equal(a(x), b(x))


def test_errors(rng):
    bn = cbn.BatchNorm1d(3, virtual_batch_size=4)
    with pytest.raises(ValueError, match="multiple of virtual_batch_size=4, got 6"):
        bn(random_input(rng, (6, 3), np.float32))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        cbn.BatchNorm1d(3, virtual_batch_size=1)(random_input(rng, (4, 3), np.float32))
    for bad in (0, -2, 1.5, True, "4"):
        with pytest.raises(ValueError, match="virtual_batch_size: expected a positive int or None"):
            cbn.BatchNorm1d(3, virtual_batch_size=bad)
