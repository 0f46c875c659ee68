# Per-channel statistics as (count, mean, M2), exact in float32 when |mean| >> std.
#
# Each block (about BLOCK_BYTES of one channel, so it stays in cache) is
# reduced in two passes: its mean m in vector lanes of the input type, then
# sum(x - m) and sum((x - m)^2). Centering on the block's own mean leaves
# nothing to cancel. Blocks, runs and threads are merged in float64 with
# Chan's formula.
from cython cimport floating

from _loops cimport rows_centered, rows_sum, runs_centered, runs_sum

cdef enum:
    BLOCK_BYTES = 16384       # channels-first: re-read from L1 by the second pass
    ROW_BLOCK_BYTES = 65536   # channels-last: re-read from L2
    MAX_ROW_BLOCK = 256       # rows summed in the input type before a float64 merge

cdef struct Moments:
    double count
    double mean
    double m2


cdef inline Moments moments_zero() noexcept nogil:
    # returned by value: assigning it inside prange makes the accumulator private
    cdef Moments m
    m.count = 0.0
    m.mean = 0.0
    m.m2 = 0.0
    return m


cdef inline void moments_merge(Moments* acc, double nb, double mean_b, double m2_b) noexcept nogil:
    """Chan et al.: fold a block with nb values into acc."""
    cdef double total, delta
    if nb == 0.0:
        return
    total = acc.count + nb
    delta = mean_b - acc.mean
    acc.mean = acc.mean + delta * (nb / total)
    acc.m2 = acc.m2 + m2_b + delta * delta * (acc.count * nb / total)
    acc.count = total


cdef inline void block_moments(const floating* p, Py_ssize_t nruns, Py_ssize_t run_stride,
                               Py_ssize_t n, Moments* acc) noexcept nogil:
    """Fold nruns runs of n contiguous values, run_stride apart, into acc."""
    cdef double s1 = 0.0, s2 = 0.0, nb = <double>(nruns * n), m2_b
    cdef floating m = <floating>(runs_sum(p, run_stride, nruns, n) / nb)
    runs_centered(p, run_stride, nruns, n, m, &s1, &s2)
    m2_b = s2 - s1 * s1 / nb
    if m2_b < 0.0:
        m2_b = 0.0
    moments_merge(acc, nb, m + s1 / nb, m2_b)


cdef inline void strided_runs_moments(const floating* p, Py_ssize_t nruns, Py_ssize_t run_stride,
                                      Py_ssize_t n, Moments* acc) noexcept nogil:
    """Fold nruns runs of n values into acc, in blocks of about BLOCK_BYTES."""
    cdef Py_ssize_t block = BLOCK_BYTES // sizeof(floating)
    cdef Py_ssize_t r, start, per_block
    if n >= block:
        for r in range(nruns):
            start = 0
            while start < n:
                block_moments(p + r * run_stride + start, 1, 0, min(block, n - start), acc)
                start += block
    else:
        per_block = block // n
        r = 0
        while r < nruns:
            block_moments(p + r * run_stride, min(per_block, nruns - r), run_stride, n, acc)
            r += per_block


cdef inline Py_ssize_t row_block(Py_ssize_t C, Py_ssize_t itemsize) noexcept nogil:
    return max(1, min(<Py_ssize_t>MAX_ROW_BLOCK, ROW_BLOCK_BYTES // (C * itemsize)))


cdef inline void rows_moments(const floating* x, Py_ssize_t row_stride, Py_ssize_t r0,
                              Py_ssize_t r1, Py_ssize_t C, floating* scratch,
                              double* count, double* mean, double* m2) noexcept nogil:
    """Fold rows r0..r1 of a channels-last (M, C) array into per-channel mean/m2.

    scratch holds 3*C values of the input type.
    """
    cdef floating* bmean = scratch
    cdef floating* s1 = scratch + C
    cdef floating* s2 = scratch + 2 * C
    cdef Py_ssize_t block = row_block(C, sizeof(floating))
    cdef Py_ssize_t b0, nb, c
    cdef double total, w, v, mb, m2b, delta, fnb
    b0 = r0
    while b0 < r1:
        nb = min(block, r1 - b0)
        fnb = <double>nb
        for c in range(C):
            bmean[c] = 0
            s1[c] = 0
            s2[c] = 0
        rows_sum(bmean, x + b0 * row_stride, row_stride, nb, C)
        for c in range(C):
            bmean[c] = <floating>(bmean[c] / fnb)
        rows_centered(s1, s2, x + b0 * row_stride, row_stride, nb, C, bmean)
        total = count[0] + fnb
        w = fnb / total
        v = count[0] * fnb / total
        for c in range(C):
            mb = bmean[c] + s1[c] / fnb
            m2b = s2[c] - (<double>s1[c]) * s1[c] / fnb
            if m2b < 0.0:
                m2b = 0.0
            delta = mb - mean[c]
            mean[c] = mean[c] + delta * w
            m2[c] = m2[c] + m2b + delta * delta * v
        count[0] = total
        b0 += nb


cdef inline void merge_partials(const double* counts, const double* means, const double* m2s,
                                Py_ssize_t nparts, Py_ssize_t stride, Moments* acc) noexcept nogil:
    """Fold nparts partial (count, mean, m2) - entry k at offset k*stride - into acc."""
    cdef Py_ssize_t k
    for k in range(nparts):
        moments_merge(acc, counts[k * stride], means[k * stride], m2s[k * stride])
