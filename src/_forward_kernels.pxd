# The forward kernels (channel statistics, normalisation, and both fused),
# as inline functions: the entry points of _forward.pyx and the layers'
# compiled call path (_call.pyx) run them on a Job they have filled.
#
#
# Two canonical views: channels-first (N, C, S), each (n, c) a contiguous run
# of S values, and channels-last (M, C), each row a contiguous run of C
# channels; 3-D arrays are the first, 2-D the second. Only the innermost axis
# must be contiguous. Each entry point fills and checks a Job (_job.pxd),
# then run_and_free dispatches on the type computed in once; each kernel
# branches on the layout. Loop bodies take (compute, job, i) and run through
# for_each.
#
# (The layers' path needs them in its own module: a cdef function cannot be
# shared between extension modules of this package without a pxd in it.)
cimport numpy as cnp
from cython cimport floating
from libc.math cimport isfinite

from _arrays cimport Tensor, checked, checked_vector
from _coefficients cimport given_stats_coefficients, training_coefficients
from _job cimport (Job, allocate, begin, block_at, channel_threads, element, elementwise,
                   f64_table, for_each, output, piece_start, rows_at, run_and_free, table_data,
                   unit_runs, vector_data)
from _loops cimport (CBN_RELU, advance, cbn_block, in_compute_type, init_loops, input_block,
                     position_totals, rows_affine, rows_centered, runs_affine, value_at)
from _block_moments cimport (Moments, exact_block_moments, merge_partials,
                             moments_merge, moments_zero, rows_moments, strided_runs_moments,
                             well_centred)
from _plan cimport fuse_by_channel
from _long_rows cimport (LongRows, as_long_rows, expanded, long_rows, long_rows_job,
                         row_length, zeroed)

cdef enum ForwardKernel:
    MOMENTS
    NORMALIZE
    TRAIN


# ---------------------------------------------------------------- channels-first

cdef inline void cf_unit_moments(const floating* compute, const Job* job,
                                 Py_ssize_t u) noexcept nogil:
    """(count, mean, m2) of unit u = c * parts + k (channel c, batch range k) at
    part[u], part[U + u], part[2U + u], U = C * parts: rows of counts, means
    and M2 (with one part, the channels' means and M2 are contiguous)."""
    cdef Py_ssize_t c = u // job.pieces, k = u % job.pieces
    cdef Py_ssize_t n0 = piece_start(job, k), n1 = piece_start(job, k + 1)
    cdef Moments acc = moments_zero()
    strided_runs_moments(element(job.x, n0, c, job.itemsize), job.kind, n1 - n0, job.x.sn,
                         job.x.S, &acc)
    cdef Py_ssize_t units = job.x.C * job.pieces
    job.partials[u] = acc.count
    job.partials[units + u] = acc.mean
    job.partials[2 * units + u] = acc.m2


cdef inline void cf_unit_affine(const floating* compute, const Job* job,
                                Py_ssize_t u) noexcept nogil:
    """Unit u of the elementwise pass (see unit_runs)."""
    cdef Py_ssize_t c0
    cdef cbn_block runs = unit_runs(job, u, &c0)
    runs_affine(&runs, <const floating*>job.tables.coef + c0)


cdef inline void cf_channel_train(const floating* compute, const Job* job,
                                  Py_ssize_t c) noexcept nogil:
    """Statistics, then normalisation, of channel c while its values are in cache."""
    cdef Moments acc = moments_zero()
    cdef cbn_block runs = block_at(job, 0, job.x.N, c)
    strided_runs_moments(element(job.x, 0, c, job.itemsize), job.kind, job.x.N, job.x.sn,
                         job.x.S, &acc)
    set_channel_stats(job, c, acc)
    runs_affine(&runs, <const floating*>job.tables.coef + c)


cdef inline void long_rows_moments(const floating* compute, const Job* job,
                                   LongRows lr) noexcept nogil:
    """The partial statistics of a reduction in one piece, from the long rows
    (_long_rows.pxd): channels-first, cf_unit_moments'; channels-last, the
    first row range's (the others' counts 0). Each channel is centred on its
    first value, as a first block is; a channel not well centred, or not
    finite, is reduced again as the usual loops would: channels-first by
    strided_runs_moments (to the bit), channels-last in float64
    (exact_block_moments, as rows_moments does a channel that overflows)."""
    cdef Py_ssize_t C = job.x.C, L = row_length(lr, C), c, i
    cdef floating* shift = <floating*>job.row_scratch   # (L) each, then (C) first values
    cdef floating* s1 = shift + L
    cdef floating* s2 = s1 + L
    # the channels' S1 and S2, then their means and M2
    cdef double* mean = job.partials + (C if job.channels_first else 1)
    cdef double* m2 = mean + C
    cdef double nb = <double>(job.x.N * job.x.S), a, b, mb, m2b
    cdef Moments acc
    cdef Tensor rows = as_long_rows(job.x, lr)
    cdef cbn_block block = input_block(rows.data, rows.sn, rows.N, rows.C, job.kind)
    for c in range(C):
        s1[c] = <floating>in_compute_type(value_at(element(job.x, 0, c, job.itemsize), 0,
                                                   job.kind), job.kind)
    expanded(s1, 1, C, lr, shift)
    zeroed(s1, L)
    zeroed(s2, L)
    rows_centered(&block, shift, s1, s2)
    position_totals(job.f32, C, lr.run, lr.copies, s1, s2, mean, m2, 1)
    for c in range(C):
        a = mean[c]
        b = m2[c]
        acc = moments_zero()
        if (b == 0.0 or well_centred(a, b, nb)) and isfinite(a) and isfinite(b):
            mb = shift[c * lr.run] + a / nb
            m2b = max(b - a * a / nb, 0.0)
            if job.channels_first:   # (merged into nothing, as block_moments does)
                moments_merge(&acc, nb, mb, m2b)
            else:
                acc.count = nb
                acc.mean = mb
                acc.m2 = m2b
        elif job.channels_first:
            strided_runs_moments(element(job.x, 0, c, job.itemsize), job.kind, job.x.N,
                                 job.x.sn, job.x.S, &acc)
        else:
            acc.count = nb
            exact_block_moments(advance(job.x.data, c, job.kind), job.kind, 1, 0, job.x.N,
                                job.x.sn, &acc.mean, &acc.m2)
        if job.channels_first:
            job.partials[c] = acc.count
        mean[c] = acc.mean
        m2[c] = acc.m2
    if not job.channels_first:
        job.partials[0] = nb
        for i in range(1, job.pieces):
            job.partials[i * (2 * C + 1)] = 0.0


# ---------------------------------------------------------------- channels-last

cdef inline void cl_part_moments(const floating* compute, const Job* job,
                                 Py_ssize_t k) noexcept nogil:
    """part[k*(2C+1) :] = (count, mean[C], m2[C]) of row range k; rows: 3C per range."""
    cdef Py_ssize_t C = job.x.C, i
    cdef double* p = job.partials + k * (2 * C + 1)
    for i in range(2 * C + 1):
        p[i] = 0.0
    rows_moments(job.x.data, job.kind, job.x.sn, piece_start(job, k), piece_start(job, k + 1), C,
                 <floating*>job.row_scratch + k * 3 * C, p)


cdef inline void cl_block_affine(const floating* compute, const Job* job,
                                 Py_ssize_t i) noexcept nogil:
    """Block i of rows (see rows_at)."""
    cdef cbn_block rows = rows_at(job, i)
    rows_affine(&rows, job.tables.coef)


# ---------------------------------------------------------------- per channel

cdef inline Moments merged(const Job* job, Py_ssize_t c) noexcept nogil:
    """Channel c's statistics, its partial results merged in a fixed order."""
    cdef Moments acc = moments_zero()
    cdef Py_ssize_t C = job.x.C, pieces = job.pieces
    cdef const double* units   # channels-first: channel c's units' counts (see cf_unit_moments)
    if job.channels_first:
        units = job.partials + c * pieces
        merge_partials(units, units + C * pieces, units + 2 * C * pieces, pieces, 1, &acc)
    else:
        merge_partials(job.partials, job.partials + 1 + c, job.partials + 1 + C + c, pieces,
                       2 * C + 1, &acc)
    return acc


cdef inline void set_channel_stats(const Job* job, Py_ssize_t c, Moments acc) noexcept nogil:
    """stats[:, c] = [mean, invstd, biased var] and channel c's coefficients."""
    training_coefficients(job, c, c + 1, &acc.mean, &acc.m2, acc.count)


cdef inline void channel_moments(const floating* compute, const Job* job,
                                 Py_ssize_t c) noexcept nogil:
    cdef Moments acc = merged(job, c)
    job.tables.moments[c] = acc.mean
    job.tables.moments[job.x.C + c] = acc.m2


cdef inline void channel_training(const floating* compute, const Job* job,
                                  Py_ssize_t c) noexcept nogil:
    set_channel_stats(job, c, merged(job, c))


cdef inline void finish_training(const Job* job, const double* means, const double* m2s,
                                 double count) noexcept nogil:
    """set_channel_stats for every channel, from their means and M2 (C values
    each) over count values, in one loop over the channels (a call per
    channel through for_each cost ~10 ns a channel)."""
    training_coefficients(job, 0, job.x.C, means, m2s, count)


cdef inline void one_piece_training(const floating* compute, const Job* job) noexcept nogil:
    """channel_training for every channel when each is reduced in one piece
    (a merge of one partial result is that result)."""
    cdef Py_ssize_t C = job.x.C
    if job.channels_first:   # rows of counts, means, M2 (cf_unit_moments)
        finish_training(job, job.partials + C, job.partials + 2 * C, job.partials[0])
    else:   # the count, C means, C values of M2 (rows_moments)
        finish_training(job, job.partials + 1, job.partials + 1 + C, job.partials[0])


cdef inline void rows_training(const floating* compute, const Job* job) noexcept nogil:
    """channel_training for every channel of a channels-last reduction in
    several row ranges: the ranges merged into the first (Chan et al., as
    moments_merge, in the same order), a range at a time over all channels,
    whose counts are the range's: loops the compiler vectorises."""
    cdef Py_ssize_t C = job.x.C, c, k
    cdef double* mean = job.partials + 1
    cdef double* m2 = job.partials + 1 + C
    cdef const double* part
    cdef double total = job.partials[0], nb, w, v, delta
    for k in range(1, job.pieces):
        part = job.partials + k * (2 * C + 1)
        nb = part[0]
        if nb == 0.0:
            continue
        w = nb / (total + nb)
        v = total * nb / (total + nb)
        for c in range(C):
            delta = part[1 + c] - mean[c]
            mean[c] = mean[c] + delta * w
            m2[c] = m2[c] + part[1 + C + c] + delta * delta * v
        total = total + nb
    finish_training(job, mean, m2, total)


# ---------------------------------------------------------------- kernels

cdef inline void partial_moments(const floating* compute, const Job* job) noexcept nogil:
    """Per-unit (channels-first) or per-row-range (channels-last) statistics into part."""
    cdef LongRows lr = long_rows(job)
    if lr.copies:
        long_rows_moments(compute, job, lr)
    elif job.channels_first:
        for_each(cf_unit_moments[floating], compute, job, job.x.C * job.pieces, job.nthreads)
    else:
        for_each(cl_part_moments[floating], compute, job, job.pieces, job.nthreads)


cdef inline void affine(const floating* compute, const Job* job) noexcept nogil:
    """out = (x - shift) * scale + offset with the coefficient table."""
    cdef Job rows
    cdef floating* coef = <floating*>job.row_scratch
    cdef LongRows lr = long_rows(job)
    if lr.copies and job.channels_first:   # (channels-last rows: as fast as they are)
        expanded(<const floating*>job.tables.coef, 3, job.x.C, lr, coef)
        long_rows_job(job, &rows, lr, coef, NULL)
        elementwise(cf_unit_affine[floating], cl_block_affine[floating], compute, &rows)
    else:
        elementwise(cf_unit_affine[floating], cl_block_affine[floating], compute, job)


cdef inline void train_kernel(const floating* compute, const Job* job) noexcept nogil:
    if job.channels_first and fuse_by_channel(job.x, job.itemsize):
        for_each(cf_channel_train[floating], compute, job, job.x.C, job.nthreads)
    else:
        partial_moments(compute, job)
        if job.pieces == 1:
            one_piece_training(compute, job)
        elif not job.channels_first:
            rows_training(compute, job)
        else:
            for_each(channel_training[floating], compute, job, job.x.C, channel_threads(job))
        affine(compute, job)


cdef inline void forward_typed(int kernel, const floating* compute, const Job* job) noexcept nogil:
    if kernel == MOMENTS:
        partial_moments(compute, job)
        for_each(channel_moments[floating], compute, job, job.x.C, channel_threads(job))
    elif kernel == NORMALIZE:
        given_stats_coefficients(job)
        affine(compute, job)
    else:
        train_kernel(compute, job)


cdef inline Py_ssize_t partial_doubles(const Job* job) noexcept:
    """Partial statistics: per unit (channels-first) or per row range (channels-last)."""
    if job.channels_first:
        return 3 * job.x.C * job.pieces
    return job.pieces * (2 * job.x.C + 1)


cdef inline Py_ssize_t row_values(const Job* job, bint reduces) noexcept:
    """Channels-last reductions: 3*C values of the type computed in per row
    range, or 3 long rows (the shifts and sums); channels-first long rows: 3
    of them (the shifts and sums, then the expanded coefficients)."""
    cdef LongRows lr = long_rows(job)
    if lr.copies and job.channels_first:
        return 3 * row_length(lr, job.x.C)
    if job.channels_first or not reduces:
        return 0
    return max(3 * job.x.C * job.pieces, 3 * row_length(lr, job.x.C))


cdef inline bint forward_run(ForwardKernel kernel, Job* job) except -1:
    """forward_typed(kernel) with its scratch; the coefficients go to the caller's
    relu_coef when given (begin_affine), else to scratch. Returns whether an
    output is +-inf from finite inputs (2-byte data: see run_and_free)."""
    cdef bint reduces = kernel != NORMALIZE
    cdef void* block = allocate(job, partial_doubles(job) if reduces else 0,
                                3 if job.tables.coef == NULL else 0,
                                row_values(job, reduces))
    return run_and_free(forward_typed[float], forward_typed[double], kernel, job, block)


cdef inline cnp.ndarray begin_affine(Job* job, object x, object y, object weight, object bias,
                              double eps, object relu_coef, int nthreads):
    """begin(), then the operands normalize and train_forward share."""
    cdef cnp.ndarray xa = begin(job, x, nthreads)
    job.out = output(y, "y", xa, 0 if relu_coef is None else CBN_RELU)
    job.tables.weight = vector_data(weight, "weight", job)
    job.tables.bias = vector_data(bias, "bias", job)
    job.eps = eps
    # a fused ReLU's coefficients, written for backward (an array of their own)
    job.tables.coef = table_data(relu_coef, "relu_coef", 3, job, True)
    return xa
