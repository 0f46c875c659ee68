"""Memory: no leaks, no hidden copies, and indexing past 2**31 values.

tracemalloc sees NumPy's arrays and the kernels' scratch (taken from
Python's raw allocator for this reason), so its peak is everything a call
allocates.
"""
import os
import sys
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest

import cbn
from cbn import functional as F
from helpers import random_input


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _asan_loaded():
    return "libasan" in os.environ.get("LD_PRELOAD", "")


def test_no_growth_over_10000_forward_backward_calls(rng):
    layers = [cbn.BatchNorm2d(48), cbn.BatchNorm2d(48, layout="NHWC", activation="relu"),
              cbn.BatchRenorm2d(48), cbn.BatchNorm1d(48, virtual_batch_size=4)]
    shapes = [(8, 48, 5, 5), (8, 5, 5, 48), (8, 48, 5, 5), (16, 48)]
    batches = [(random_input(rng, s, np.float32), random_input(rng, s, np.float32)) for s in shapes]

    def steps(n):
        for i in range(n):
            bn = layers[i % len(layers)]
            x, dy = batches[i % len(layers)]
            bn.train(i % 10 != 9)
            bn(x)
            bn.backward(dy)

    steps(1000)   # warm caches, interned objects, allocator pools
    # AddressSanitizer keeps freed memory in quarantine: RSS grows by design
    rss_before = _rss_bytes() if sys.platform == "linux" and not _asan_loaded() else None
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        steps(10_000)
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # one leaked scratch buffer per call (>= 48 * 3 * 8 bytes) would be > 10 MB
    assert growth < 64 * 1024, f"traced memory grew by {growth} bytes"
    if rss_before is not None:
        assert _rss_bytes() - rss_before < 8 << 20


def _peak_extra(call):
    """Peak bytes a call allocates beyond what it returns."""
    tracemalloc.start()
    try:
        result = call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak - result.nbytes


def _bound(C):
    # per channel: statistics, coefficients and the partial sums of at most 16
    # row ranges (cut by shape, never per thread): under 1 KiB even in float64
    return 8192 + 1024 * C


@pytest.mark.parametrize("nthreads", [1, 2, 8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,layout", [((16, 64, 28, 28), "NCHW"), ((16, 28, 28, 64), "NHWC"),
                                          ((8, 3, 96, 96), "NCHW"), ((8, 96, 96, 3), "NHWC"),
                                          ((2048, 512), "NCHW"), ((100_000, 3), "NCHW")])
def test_training_step_allocates_its_output_plus_o_of_channels(shape, layout, dtype, nthreads,
                                                               rng, threads):
    threads(nthreads)
    C = shape[1] if layout == "NCHW" else shape[-1]
    cls = cbn.BatchNorm2d if len(shape) == 4 else cbn.BatchNorm1d
    bn = cls(C, layout=layout, dtype=dtype)
    x = random_input(rng, shape, dtype)
    dy = random_input(rng, shape, dtype)
    bn(x)
    bn.backward(dy)
    bound = _bound(C)
    assert _peak_extra(lambda: bn(x)) <= bound
    assert _peak_extra(lambda: bn.backward(dy)) <= bound
    bn.eval()
    assert _peak_extra(lambda: bn(x)) <= bound


# ---------------------------------------------------------------- > 2**31 values
#
# x holds i % 7 and dy holds i % 5 - 2 at flat index i: exact in float32, and
# a wrong 32-bit index reads another value (2**32 % 35 != 0). Per-channel
# sums follow from counting residues, so the expected statistics are exact.

CHUNK = 1 << 24


def _residue_counts(start, step, count, m):
    """How often each residue mod m occurs in start + step * j, j < count (gcd(step, m) = 1)."""
    full = count // m
    counts = [full] * m
    for j in range(full * m, count):
        counts[(start + step * j) % m] += 1
    return counts


def _channel_sums(shape, layout):
    """Per channel (count, sum x, sum x^2, sum dy, sum x dy) as exact integers."""
    if layout == "NCHW":
        N, C, S = shape[0], shape[1], int(np.prod(shape[2:]))
        runs = [[((n * C + c) * S, 1, S) for n in range(N)] for c in range(C)]
    else:
        C = shape[-1]
        M = int(np.prod(shape[:-1]))
        runs = [[(c, C, M)] for c in range(C)]
    sums = []
    for channel_runs in runs:
        counts = np.zeros(35, dtype=object)
        for run in channel_runs:
            counts += np.array(_residue_counts(*run, 35), dtype=object)
        r = np.arange(35)
        xv, dv = r % 7, r % 5 - 2
        sums.append(tuple(int(v) for v in (counts.sum(), (counts * xv).sum(),
                                           (counts * xv * xv).sum(), (counts * dv).sum(),
                                           (counts * xv * dv).sum())))
    return sums


def _channel_of(i, shape, layout):
    if layout == "NCHW":
        return (i // int(np.prod(shape[2:]))) % shape[1]
    return i % shape[-1]


def _chunks(a):
    """(flat slice of a, its flat indices), a chunk at a time (bounded memory)."""
    flat = a.reshape(-1)
    for start in range(0, flat.size, CHUNK):
        i = np.arange(start, min(start + CHUNK, flat.size))
        yield flat[start:start + i.size], i


def _fill(a, pattern):
    for part, i in _chunks(a):
        part[...] = pattern(i)


def _max_error(a, expected):
    return max(float(np.max(np.abs(part - expected(i)))) for part, i in _chunks(a))


def _x_pattern(i):
    return i % 7


def _dy_pattern(i):
    return i % 5 - 2


@pytest.mark.slow
@pytest.mark.parametrize("shape,layout", [((2, 3, 19000, 19000), "NCHW"),
                                          ((2, 19000, 19000, 3), "NHWC")])
def test_more_than_2_31_values_index_correctly(shape, layout):
    assert np.prod(shape) > 2 ** 31
    eps = 1e-5
    sums = _channel_sums(shape, layout)
    M = sums[0][0]
    mean = np.array([float(Fraction(sx, M)) for _, sx, *_ in sums])
    var = np.array([float(Fraction(sxx, M) - Fraction(sx, M) ** 2) for _, sx, sxx, *_ in sums])
    invstd = 1 / np.sqrt(var + eps)

    x = np.empty(shape, dtype=np.float32)
    _fill(x, _x_pattern)
    bn = cbn.BatchNorm2d(shape[1] if layout == "NCHW" else shape[-1], layout=layout, eps=eps)
    bn(x, out=x)   # in place: one 8.7 GB array
    np.testing.assert_allclose(bn.running_mean, 0.1 * mean, rtol=1e-6)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * var * M / (M - 1), rtol=1e-6)

    def y_expected(i):
        c = _channel_of(i, shape, layout)
        return (_x_pattern(i) - mean[c]) * invstd[c]

    assert _max_error(x, y_expected) < 1e-5

    _fill(x, _x_pattern)
    dy = np.empty(shape, dtype=np.float32)
    _fill(dy, _dy_pattern)
    dx, dweight, dbias = F.batch_norm_backward(dy, x, mean, invstd, layout=layout, out=dy)
    assert dx is dy
    want_dbias = np.array([float(sd) for *_, sd, _ in sums])
    want_dweight = np.array([float(sxd - Fraction(sx, M) * sd) for _, sx, _, sd, sxd in sums]) \
        * invstd
    np.testing.assert_allclose(dbias, want_dbias, rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(dweight, want_dweight, rtol=1e-6, atol=1e-3)

    def dx_expected(i):
        c = _channel_of(i, shape, layout)
        xhat = (_x_pattern(i) - mean[c]) * invstd[c]
        return invstd[c] * (_dy_pattern(i) - want_dbias[c] / M - xhat * want_dweight[c] / M)

    assert _max_error(dx, dx_expected) < 1e-5
