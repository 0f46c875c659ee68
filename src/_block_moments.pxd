# Per-channel statistics as (count, mean, M2), exact in float32 when |mean| >> std.
#
# Values are summed as d = x - K for a shift K near the mean, so that
# sum(d^2) - sum(d)^2 / n cancels nothing. Blocks (about BLOCK_BYTES of one
# channel, so they stay in cache) are reduced in one of two ways:
# - in one pass, K being the running mean of the blocks before (for the
#   first block of a unit, its first value);
# - if K turns out far from the block's values (sum(d^2) > AMPLIFICATION *
#   M2: rounding amplified by that factor, i.e. K more than ~4 standard
#   deviations off), the block, still in cache, is redone in two passes: its
#   own mean K in vector lanes, then sum(d) and sum(d^2).
# - if that still overflows the type computed in (|x - K| above ~1.8e19 in
#   float32: the square is past its range, while the variance may not be),
#   the block is redone in float64 scalars (exact_block_moments); NaN/Inf
#   input takes this path too and stays non-finite.
# Blocks, runs and threads are merged in float64 with Chan's formula.
# The data are read through (pointer, kind): float32, float64, or 2-byte
# types computed in float32 (see _loops.pxd).
from cython cimport floating
from libc.math cimport isfinite

from _loops cimport (CBN_F32, CBN_F64, advance, cbn_block, in_compute_type, input_block,
                     kind_itemsize, rows_block_flags, rows_block_merge, rows_centered,
                     runs_centered, runs_sum, value_at)

cdef enum:
    AMPLIFICATION = 16        # largest sum(d^2) / M2 accepted from a one-pass block
    BLOCK_BYTES = 16384       # channels-first: re-read from L1 by a second pass
    ROW_BLOCK_BYTES = 262144  # channels-last: within L2 if a block must be re-read
    MAX_ROW_BLOCK = 64        # rows summed in the type computed in before a float64 merge
                              # (16 additions per lane, 4 rows at a time: see cbn_loops_impl.h)

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


cdef inline bint well_centred(double s1, double s2, double nb) noexcept nogil:
    """sum(d^2) <= AMPLIFICATION * M2 (NaN compares False: redone, stays NaN)."""
    return s2 <= AMPLIFICATION * (s2 - s1 * s1 / nb)


cdef inline void exact_block_moments(const void* p, int kind, Py_ssize_t nruns,
                                     Py_ssize_t run_stride, Py_ssize_t n, Py_ssize_t step,
                                     double* mean, double* m2) noexcept nogil:
    """Two float64 passes over nruns runs of n values, step apart within a run."""
    cdef Py_ssize_t r, i
    cdef double s = 0.0, q = 0.0, d
    for r in range(nruns):
        for i in range(n):
            s += value_at(p, r * run_stride + i * step, kind)
    mean[0] = s / <double>(nruns * n)
    for r in range(nruns):
        for i in range(n):
            d = value_at(p, r * run_stride + i * step, kind) - mean[0]
            q += d * d
    m2[0] = q


cdef inline void block_moments(const void* p, int kind, Py_ssize_t nruns, Py_ssize_t run_stride,
                               Py_ssize_t n, Moments* acc) noexcept nogil:
    """Fold nruns runs of n contiguous values, run_stride apart, into acc."""
    cdef double s1 = 0.0, s2 = 0.0, nb = <double>(nruns * n), m2_b, mean_b
    cdef double k = in_compute_type(acc.mean if acc.count > 0.0 else value_at(p, 0, kind), kind)
    cdef cbn_block block = input_block(p, run_stride, nruns, n, kind)
    runs_centered(&block, k, &s1, &s2)
    if not (s2 == 0.0 or well_centred(s1, s2, nb)):
        s1 = 0.0
        s2 = 0.0
        k = in_compute_type(runs_sum(&block) / nb, kind)
        runs_centered(&block, k, &s1, &s2)
    if not (isfinite(s1) and isfinite(s2)):
        exact_block_moments(p, kind, nruns, run_stride, n, 1, &mean_b, &m2_b)
        moments_merge(acc, nb, mean_b, m2_b)
        return
    m2_b = s2 - s1 * s1 / nb
    if m2_b < 0.0:
        m2_b = 0.0
    moments_merge(acc, nb, k + s1 / nb, m2_b)


cdef inline void strided_runs_moments(const void* p, int kind, Py_ssize_t nruns,
                                      Py_ssize_t run_stride, Py_ssize_t n,
                                      Moments* acc) noexcept nogil:
    """Fold nruns runs of n values (of type kind) into acc, in blocks of about BLOCK_BYTES."""
    cdef Py_ssize_t block = BLOCK_BYTES // kind_itemsize(kind)
    cdef Py_ssize_t r, start, per_block
    if n >= block:
        for r in range(nruns):
            start = 0
            while start < n:
                block_moments(advance(p, r * run_stride + start, kind), kind, 1, 0,
                              min(block, n - start), acc)
                start += block
    else:
        per_block = block // n
        r = 0
        while r < nruns:
            block_moments(advance(p, r * run_stride, kind), kind, min(per_block, nruns - r),
                          run_stride, n, acc)
            r += per_block


cdef inline Py_ssize_t row_block(Py_ssize_t C, Py_ssize_t itemsize) noexcept nogil:
    return max(1, min(<Py_ssize_t>MAX_ROW_BLOCK, ROW_BLOCK_BYTES // (C * itemsize)))


cdef inline void centred_sums(const cbn_block* rows, const floating* shift, floating* s1,
                              floating* s2) noexcept nogil:
    """s1[c], s2[c] = sum(x - shift[c]), sum((x - shift[c])^2) over the block's rows."""
    cdef Py_ssize_t c
    for c in range(rows.length):
        s1[c] = 0
        s2[c] = 0
    rows_centered(rows, shift, s1, s2)


cdef inline void first_row(const void* row, int kind, Py_ssize_t C,
                           floating* shift) noexcept nogil:
    """shift[c] = the row's value c in the type computed in (exact: float32 and
    the 2-byte types widen into float, float64 is float64)."""
    cdef Py_ssize_t c
    if kind == CBN_F32 or kind == CBN_F64:
        for c in range(C):
            shift[c] = <floating>((<const floating*>row)[c])
    else:
        for c in range(C):
            shift[c] = <floating>value_at(row, c, kind)


cdef inline void rows_moments(const void* x, int kind, Py_ssize_t row_stride, Py_ssize_t r0,
                              Py_ssize_t r1, Py_ssize_t C, floating* scratch,
                              double* partial) noexcept nogil:
    """Fold rows r0..r1 of a channels-last (M, C) array (of type kind) into
    partial: the count, then C means, then C values of M2.

    scratch holds 3*C values of the type computed in (float or double, as
    kind says); blocks are centred as described at the top of this file.
    """
    cdef double* count = partial
    cdef double* mean = partial + 1
    cdef double* m2 = partial + 1 + C
    cdef floating* shift = scratch
    cdef floating* s1 = scratch + C
    cdef floating* s2 = scratch + 2 * C
    cdef Py_ssize_t block = row_block(C, sizeof(floating))
    cdef Py_ssize_t b0, nb, c
    cdef double total, w, v, mb, m2b, delta, fnb
    cdef int flags
    cdef bint f32 = floating is float
    cdef cbn_block rows
    b0 = r0
    while b0 < r1:
        nb = min(block, r1 - b0)
        fnb = <double>nb
        rows = input_block(advance(x, b0 * row_stride, kind), row_stride, nb, C, kind)
        if count[0] > 0.0:
            for c in range(C):   # (loops of their own, per case: vectorised)
                shift[c] = <floating>mean[c]
        else:
            first_row(advance(x, b0 * row_stride, kind), kind, C, shift)
        centred_sums(&rows, shift, s1, s2)
        flags = rows_block_flags(f32, C, s1, s2, fnb, AMPLIFICATION)
        if flags & 1:   # redone centred on 0: s1 is the block's sum, shift by its mean
            for c in range(C):
                shift[c] = 0
            centred_sums(&rows, shift, s1, s2)
            for c in range(C):
                shift[c] = <floating>(s1[c] / fnb)
            centred_sums(&rows, shift, s1, s2)
            flags = rows_block_flags(f32, C, s1, s2, fnb, AMPLIFICATION)
        total = count[0] + fnb
        w = fnb / total
        v = count[0] * fnb / total
        if not flags & 2:
            rows_block_merge(f32, C, shift, s1, s2, fnb, w, v, mean, m2)
        else:   # rows_block_merge per channel, with the exact path for the non-finite ones
            for c in range(C):
                if isfinite(s1[c]) and isfinite(s2[c]):
                    mb = shift[c] + s1[c] / fnb
                    m2b = max(s2[c] - (<double>s1[c]) * s1[c] / fnb, 0.0)
                else:   # overflowed (or NaN/Inf input): this channel's block in float64
                    exact_block_moments(advance(x, b0 * row_stride + c, kind), kind, 1, 0, nb,
                                        row_stride, &mb, &m2b)
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
