"""Small tensors passed over as long rows (src/_long_rows.pxd).

Channels-first: the kernels take that path by shape and strides: runs
shorter than 256 bytes, each sample's runs adjacent in x, dy and the output,
4 to 32 samples, at most 8 KB of per-position table per row and fewer than
65536 values. Channels-last statistics and backward: rows shorter than 256
bytes, adjacent, taken k at a time (a power of two dividing the row count,
at least 4, long rows of at most 1 KB, at most 64 of them), fewer than 65536
values. These tests sit on both sides of each bound, and compare the paths
with the float64 reference and with the run or row loops on the same data
(a view whose runs or rows are not adjacent takes those loops).
"""
import numpy as np
import pytest

import cbn
import reference as ref
from cbn import _backward, _forward
from helpers import tol

# (N, C, S) on either side of a bound, for float32 (itemsize 4) and float64 (8)
SHAPES = {
    np.float32: [(4, 3, 7), (3, 3, 7),            # fewest samples: 4 (3 takes the run loops)
                 (32, 5, 13), (33, 5, 13),        # most samples: 32
                 (6, 4, 63), (6, 4, 64),          # runs shorter than 256 bytes
                 (5, 64, 32), (5, 65, 32),        # a table row of at most 8 KB
                 (31, 64, 32), (32, 64, 32),      # fewer than 65536 values
                 (16, 32, 4), (9, 2, 5)],
    np.float64: [(4, 3, 7), (32, 5, 13), (6, 4, 31), (6, 4, 32), (5, 32, 32), (5, 33, 32)],
}
CASES = [pytest.param(dtype, shape, id=f"{np.dtype(dtype).name}-{'x'.join(map(str, shape))}")
         for dtype, shapes in SHAPES.items() for shape in shapes]


def takes_rows(dtype, shape):
    """The documented bounds (see the module docstring), for adjacent runs."""
    N, C, S = shape
    itemsize = np.dtype(dtype).itemsize
    return (S * itemsize < 256 and 4 <= N <= 32 and C * S * itemsize <= 8192
            and N * C * S < 65536)


def gapped(a):
    """a's values in a view whose runs are not adjacent (a gap after each run)."""
    N, C, S = a.shape
    padded = np.full((N, C, S + 3), np.nan, dtype=a.dtype)
    padded[:, :, :S] = a
    return padded[:, :, :S]


def kernels(x, dy, weight, bias, relu, nthreads=1):
    """(y, stats, dx, grads, moments) of the raw kernels on x and dy."""
    C = x.shape[1]
    y = np.empty(x.shape, x.dtype)
    dx = np.empty(x.shape, x.dtype)
    stats = np.empty((3, C))
    relu_coef = np.empty((3, C), weight.dtype) if relu else None
    _forward.train_forward(x, y, weight, bias, 1e-5, stats, relu_coef, nthreads)
    grads = np.empty((2, C), weight.dtype)
    _backward.backward(dy, x, dx, np.ascontiguousarray(stats[:2]), weight, True, grads,
                       relu_coef, nthreads)
    moments = np.empty((2, C))
    _forward.moments(x, moments, nthreads)
    return y, stats, dx, grads, moments


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype,shape", CASES)
def test_layer_matches_the_float64_reference(dtype, shape, relu, rng):
    C = shape[1]
    bn = cbn.BatchNorm1d(C, dtype=dtype, activation="relu" if relu else None)
    bn.weight[...] = rng.uniform(0.5, 2.0, C) * rng.choice([-1, 1], C)
    bn.bias[...] = rng.standard_normal(C)
    x = (rng.standard_normal(shape) * 3 + 20).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y = bn(x)
    expected, mean, var, count = ref.train_forward(x, 1, bn.weight, bn.bias)
    gate = expected > 0 if relu else np.ones(shape, bool)
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(y, np.where(gate, expected, 0.0), rtol=rtol, atol=atol)
    np.testing.assert_allclose(bn.running_mean, 0.1 * mean, rtol=rtol, atol=atol)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * var * count / (count - 1),
                               rtol=rtol, atol=atol)
    dx = bn.backward(dy)
    dx_exact, dw, db = ref.train_backward(np.where(gate, dy, 0.0), x, 1, bn.weight)
    np.testing.assert_allclose(dx, dx_exact, rtol=rtol, atol=atol)
    for grad, exact in ((bn.grad_weight, dw), (bn.grad_bias, db)):   # sums of count terms
        np.testing.assert_allclose(grad, exact, rtol=0,
                                   atol=1.5 * atol * max(1.0, np.abs(exact).max()))
    bn.eval()
    fixed = ref.normalize(x, 1, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
    np.testing.assert_allclose(bn(x), np.maximum(fixed, 0.0) if relu else fixed,
                               rtol=rtol, atol=atol)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype,shape", CASES)
def test_rows_agree_with_the_run_loops(dtype, shape, relu, rng):
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 - 7).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    weight = np.linspace(-1.5, 2.0, C).astype(dtype)
    bias = np.linspace(1.0, -1.0, C).astype(dtype)
    rows = kernels(x, dy, weight, bias, relu)
    runs = kernels(gapped(x), gapped(dy), weight, bias, relu)
    # the same arithmetic per value; the sums in another order
    eps = np.finfo(dtype).eps
    for name, a, b in zip(("y", "stats", "dx", "grads", "moments"), rows, runs):
        scale = np.abs(b).max() + 1.0
        np.testing.assert_allclose(a, b, rtol=0, atol=64 * eps * scale, err_msg=name)


@pytest.mark.parametrize("dtype,shape", CASES)
def test_the_bounds_pick_the_path(dtype, shape, rng):
    # the rows sum in another order than the run loops: some bit of the
    # statistics differs where the rows are taken, none where they are not
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    rows, runs = np.empty((2, shape[1])), np.empty((2, shape[1]))
    _forward.moments(x, rows, 1)
    _forward.moments(gapped(x), runs, 1)
    assert np.array_equal(rows, runs) != takes_rows(dtype, shape)


@pytest.mark.parametrize("dtype,shape", CASES)
def test_results_do_not_depend_on_the_thread_count(dtype, shape, rng):
    C = shape[1]
    x = (rng.standard_normal(shape) + 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    weight = np.ones(C, dtype)
    bias = np.zeros(C, dtype)
    for a, b in zip(kernels(x, dy, weight, bias, True, 1), kernels(x, dy, weight, bias, True, 2)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_channel_far_from_its_first_value_is_reduced_again(dtype, rng):
    # channel 1's first value is 1e4 standard deviations from the rest: centred
    # on it, sum(d^2) - sum(d)^2 / n would cancel every digit of M2
    x = (rng.standard_normal((8, 3, 9)) * 1e-3 + 50).astype(dtype)
    x[0, 1, 0] = 60
    _, mean, var, _ = ref.train_forward(x, 1)
    moments = np.empty((2, 3))
    _forward.moments(x, moments, 1)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(moments[0], mean, rtol=rtol)
    np.testing.assert_allclose(moments[1] / x[:, 0].size, var, rtol=rtol)
    # reduced as the run loops reduce it, to the bit
    runs = kernels(gapped(x), x, np.ones(3, dtype), np.zeros(3, dtype), False)[4]
    np.testing.assert_array_equal(moments[:, 1], runs[:, 1])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_channel_stays_alone(bad, rng):
    x = (rng.standard_normal((8, 3, 9)) + 2).astype(np.float32)
    x[3, 2, 4] = bad
    moments = np.empty((2, 3))
    _forward.moments(x, moments, 1)
    _, mean, var, _ = ref.train_forward(x[:, :2], 1)
    np.testing.assert_allclose(moments[0, :2], mean, rtol=1e-5)
    np.testing.assert_allclose(moments[1, :2] / (8 * 9), var, rtol=1e-5)
    assert not np.isfinite(moments[:, 2]).any()


# ---------------------------------------------------------------- channels-last rows, k at a time

# (M, C) on either side of a bound (float32 unless said): rows shorter than
# 256 bytes, long rows of at most 1 KB made of at least 4 rows (k, a power
# of two dividing M), at most 64 long rows, fewer than 65536 values
ROWS = [pytest.param(np.float32, (1024, 16), 16, id="float32-1024x16"),
        pytest.param(np.float32, (12, 3), 4, id="float32-12x3"),
        pytest.param(np.float32, (1026, 16), 0, id="float32-1026x16-k2"),
        pytest.param(np.float32, (4096, 15), 0, id="float32-4096x15-512-long-rows"),
        pytest.param(np.float32, (256, 63), 4, id="float32-256x63"),
        pytest.param(np.float32, (258, 63), 0, id="float32-258x63-k2"),
        pytest.param(np.float32, (4096, 16), 0, id="float32-4096x16-65536-values"),
        pytest.param(np.float32, (512, 64), 0, id="float32-512x64-256-byte-rows"),
        pytest.param(np.float64, (512, 8), 16, id="float64-512x8"),
        pytest.param(np.float64, (96, 31), 4, id="float64-96x31"),
        pytest.param(np.float64, (98, 31), 0, id="float64-98x31-k2")]


def gapped_rows(a):
    """a's values in a view whose rows are not adjacent (a gap after each row)."""
    padded = np.full((a.shape[0], a.shape[1] + 3), np.nan, dtype=a.dtype)
    padded[:, :a.shape[1]] = a
    return padded[:, :a.shape[1]]


def row_tiles(dtype, shape):
    """The documented rule (see _long_rows.pxd), for adjacent rows."""
    M, C = shape
    itemsize = np.dtype(dtype).itemsize
    if C * itemsize >= 256 or M * C >= 65536:
        return 0
    k = 1
    while 2 * k * C * itemsize <= 1024 and M % (2 * k) == 0:
        k *= 2
    return k if k >= 4 and M // k <= 64 else 0


@pytest.mark.parametrize("dtype,shape,k", ROWS)
def test_the_rule_is_the_documented_one(dtype, shape, k):
    assert row_tiles(dtype, shape) == k


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype,shape,k", ROWS)
def test_backward_over_tiles_matches_the_reference_and_the_row_loops(dtype, shape, k, relu, rng):
    C = shape[1]
    bn = cbn.BatchNorm1d(C, dtype=dtype, layout="NHWC", activation="relu" if relu else None)
    bn.weight[...] = rng.uniform(0.5, 2.0, C) * rng.choice([-1, 1], C)
    x = (rng.standard_normal(shape) * 3 - 4).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y = bn(x)
    dx = bn.backward(dy)
    expected, mean, var, count = ref.train_forward(x, 1, bn.weight, bn.bias)
    gate = expected > 0 if relu else np.ones(shape, bool)
    dx_exact, dw, db = ref.train_backward(np.where(gate, dy, 0.0), x, 1, bn.weight)
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(y, np.where(gate, expected, 0.0), rtol=rtol, atol=atol)
    np.testing.assert_allclose(dx, dx_exact, rtol=rtol, atol=atol)
    for grad, exact in ((bn.grad_weight, dw), (bn.grad_bias, db)):
        np.testing.assert_allclose(grad, exact, rtol=0,
                                   atol=1.5 * atol * max(1.0, np.abs(exact).max()))
    # the kernels on the same data in rows that are not adjacent: the row
    # loops, the same values to the sums' order; bitwise the same sums
    # exactly when the rows are not tiled
    weight = np.asarray(bn.weight)
    rows = kernels(x, dy, weight, np.zeros(C, dtype), relu)
    loops = kernels(gapped_rows(x), gapped_rows(dy), weight, np.zeros(C, dtype), relu)
    eps = np.finfo(dtype).eps
    for name, a, b in zip(("y", "stats", "dx", "grads", "moments"), rows, loops):
        np.testing.assert_allclose(a, b, rtol=0, atol=64 * eps * (np.abs(b).max() + 1.0),
                                   err_msg=name)
    for name, i in (("stats", 1), ("grads", 3), ("moments", 4)):
        assert np.array_equal(rows[i], loops[i]) == (k == 0), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_tiled_channel_far_from_its_first_value_or_not_finite_is_reduced_in_float64(dtype, rng):
    x = (rng.standard_normal((256, 4)) * 1e-3 + 50).astype(dtype)
    x[0, 1] = 60     # channel 1 centred on its first value would lose M2's digits
    x[7, 3] = np.nan
    moments = np.empty((2, 4))
    _forward.moments(x, moments, 1)
    _, mean, var, _ = ref.train_forward(x[:, :3], 1)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(moments[0, :3], mean, rtol=rtol)
    np.testing.assert_allclose(moments[1, :3] / 256, var, rtol=rtol)
    assert not np.isfinite(moments[:, 3]).any()


@pytest.mark.parametrize("dtype,shape,k", ROWS)
def test_tiled_results_do_not_depend_on_the_thread_count(dtype, shape, k, rng):
    C = shape[1]
    x = (rng.standard_normal(shape) + 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    weight, bias = np.ones(C, dtype), np.zeros(C, dtype)
    for a, b in zip(kernels(x, dy, weight, bias, True, 1), kernels(x, dy, weight, bias, True, 2)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eval_backward_over_tiles_matches_the_reference(dtype, relu, rng):
    bn = cbn.BatchNorm1d(16, dtype=dtype, layout="NHWC", activation="relu" if relu else None)
    for name, values in (("weight", rng.standard_normal(16)), ("bias", rng.standard_normal(16)),
                         ("running_mean", rng.standard_normal(16)),
                         ("running_var", rng.uniform(0.5, 2.0, 16))):
        getattr(bn, name)[...] = values
    bn.eval()
    x = rng.standard_normal((1024, 16)).astype(dtype)   # 16 rows a long row
    dy = rng.standard_normal((1024, 16)).astype(dtype)
    y = bn(x)
    dx = bn.backward(dy)
    g = np.where(y > 0, dy, 0.0) if relu else dy.astype(np.float64)
    dx_exact, dw, db = ref.eval_backward(g, x, 1, bn.running_mean, bn.running_var, bn.weight)[:3]
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(dx, dx_exact, rtol=rtol, atol=atol)
    for grad, exact in ((bn.grad_weight, dw), (bn.grad_bias, db)):
        np.testing.assert_allclose(grad, exact, rtol=0,
                                   atol=1.5 * atol * max(1.0, np.abs(exact).max()))
