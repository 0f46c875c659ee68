# Forward kernels: channel statistics, normalisation, and both fused.
#
# Two canonical views: channels-first (N, C, S), each (n, c) a contiguous run
# of S values, and channels-last (M, C), each row a contiguous run of C
# channels; 3-D arrays are the first, 2-D the second. Only the innermost axis
# must be contiguous. Each entry point fills and checks a Job (_job.pxd),
# then run_and_free dispatches on the type computed in once; each kernel
# branches on the layout. Loop bodies take (compute, job, i) and run through
# for_each.
cimport numpy as cnp
from cython cimport floating
from libc.math cimport isfinite, sqrt
from libc.string cimport memcpy

from _arrays cimport checked, checked_vector
from _coefficients cimport inverse_std, normalize_coefficients
from _job cimport (Job, allocate, begin, block_at, channel_threads, element, elementwise,
                   f64_table, for_each, output, piece_start, rows_at, run_and_free, table_data,
                   unit_runs, vector_data)
from _loops cimport CBN_RELU, cbn_block, init_loops, rows_affine, runs_affine
from _block_moments cimport (Moments, merge_partials, moments_zero, rows_moments,
                             strided_runs_moments)
from _plan cimport fuse_by_channel

cnp.import_array()
init_loops()


cdef enum Kernel:
    MOMENTS
    NORMALIZE
    TRAIN


# ---------------------------------------------------------------- channels-first

cdef void cf_unit_moments(const floating* compute, const Job* job, Py_ssize_t u) noexcept nogil:
    """part[3u : 3u+3] = (count, mean, m2) of unit u = c * parts + k (channel c, batch range k)."""
    cdef Py_ssize_t c = u // job.pieces, k = u % job.pieces
    cdef Py_ssize_t n0 = piece_start(job, k), n1 = piece_start(job, k + 1)
    cdef Moments acc = moments_zero()
    strided_runs_moments(element(job.x, n0, c, job.itemsize), job.kind, n1 - n0, job.x.sn,
                         job.x.S, &acc)
    job.partials[3 * u] = acc.count
    job.partials[3 * u + 1] = acc.mean
    job.partials[3 * u + 2] = acc.m2


cdef void cf_unit_affine(const floating* compute, const Job* job, Py_ssize_t u) noexcept nogil:
    """Unit u of the elementwise pass (see unit_runs)."""
    cdef Py_ssize_t c0
    cdef cbn_block runs = unit_runs(job, u, &c0)
    runs_affine(&runs, <const floating*>job.tables.coef + c0)


cdef void cf_channel_train(const floating* compute, const Job* job, Py_ssize_t c) noexcept nogil:
    """Statistics, then normalisation, of channel c while its values are in cache."""
    cdef Moments acc = moments_zero()
    cdef cbn_block runs = block_at(job, 0, job.x.N, c)
    strided_runs_moments(element(job.x, 0, c, job.itemsize), job.kind, job.x.N, job.x.sn,
                         job.x.S, &acc)
    set_channel_stats(compute, job, c, acc)
    runs_affine(&runs, <const floating*>job.tables.coef + c)


# ---------------------------------------------------------------- channels-last

cdef void cl_part_moments(const floating* compute, const Job* job, Py_ssize_t k) noexcept nogil:
    """part[k*(2C+1) :] = (count, mean[C], m2[C]) of row range k; rows: 3C per range."""
    cdef Py_ssize_t C = job.x.C, i
    cdef double* p = job.partials + k * (2 * C + 1)
    for i in range(2 * C + 1):
        p[i] = 0.0
    rows_moments(job.x.data, job.kind, job.x.sn, piece_start(job, k), piece_start(job, k + 1), C,
                 <floating*>job.row_scratch + k * 3 * C, p)


cdef void cl_block_affine(const floating* compute, const Job* job, Py_ssize_t i) noexcept nogil:
    """Block i of rows (see rows_at)."""
    cdef cbn_block rows = rows_at(job, i)
    rows_affine(&rows, job.tables.coef)


# ---------------------------------------------------------------- per channel

cdef inline Moments merged(const Job* job, Py_ssize_t c) noexcept nogil:
    """Channel c's statistics, its partial results merged in a fixed order."""
    cdef Moments acc = moments_zero()
    cdef Py_ssize_t C = job.x.C, pieces = job.pieces
    cdef const double* units   # channels-first: channel c's units, 3 values each
    if job.channels_first:
        units = job.partials + 3 * c * pieces
        merge_partials(units, units + 1, units + 2, pieces, 3, &acc)
    else:
        merge_partials(job.partials, job.partials + 1 + c, job.partials + 1 + C + c, pieces,
                       2 * C + 1, &acc)
    return acc


cdef inline void set_channel_stats(const floating* compute, const Job* job, Py_ssize_t c,
                                   Moments acc) noexcept nogil:
    """stats[:, c] = [mean, invstd, biased var] and channel c's coefficients."""
    cdef Py_ssize_t C = job.x.C
    cdef double* stats = job.tables.stats
    stats[c] = acc.mean
    stats[2 * C + c] = acc.m2 / acc.count
    stats[C + c] = inverse_std(stats[2 * C + c], job.eps)
    normalize_coefficients(compute, job, c, acc.mean, stats[C + c], sqrt(acc.m2))


cdef void channel_moments(const floating* compute, const Job* job, Py_ssize_t c) noexcept nogil:
    cdef Moments acc = merged(job, c)
    job.tables.moments[c] = acc.mean
    job.tables.moments[job.x.C + c] = acc.m2


cdef void channel_training(const floating* compute, const Job* job, Py_ssize_t c) noexcept nogil:
    set_channel_stats(compute, job, c, merged(job, c))


cdef void channel_given_stats(const floating* compute, const Job* job, Py_ssize_t c) noexcept nogil:
    """Coefficients from stats = [mean, var] (given); job.count values behind
    them (for sqrt(M2), the bound set_shift needs), or 0 when they are not x's."""
    cdef double var = job.tables.stats[job.x.C + c]
    normalize_coefficients(compute, job, c, job.tables.stats[c], inverse_std(var, job.eps),
                           sqrt(var * job.count))


# ---------------------------------------------------------------- kernels

cdef void partial_moments(const floating* compute, const Job* job) noexcept nogil:
    """Per-unit (channels-first) or per-row-range (channels-last) statistics into part."""
    if job.channels_first:
        for_each(cf_unit_moments[floating], compute, job, job.x.C * job.pieces, job.nthreads)
    else:
        for_each(cl_part_moments[floating], compute, job, job.pieces, job.nthreads)


cdef void affine(const floating* compute, const Job* job) noexcept nogil:
    """out = (x - shift) * scale + offset with the coefficient table."""
    elementwise(cf_unit_affine[floating], cl_block_affine[floating], compute, job)


cdef void train_kernel(const floating* compute, const Job* job) noexcept nogil:
    if job.channels_first and fuse_by_channel(job.x, job.itemsize):
        for_each(cf_channel_train[floating], compute, job, job.x.C, job.nthreads)
    else:
        partial_moments(compute, job)
        for_each(channel_training[floating], compute, job, job.x.C, channel_threads(job))
        affine(compute, job)


cdef void run_typed(int kernel, const floating* compute, const Job* job) noexcept nogil:
    if kernel == MOMENTS:
        partial_moments(compute, job)
        for_each(channel_moments[floating], compute, job, job.x.C, channel_threads(job))
    elif kernel == NORMALIZE:
        for_each(channel_given_stats[floating], compute, job, job.x.C, 1)
        affine(compute, job)
    else:
        train_kernel(compute, job)


cdef Py_ssize_t partial_doubles(const Job* job) noexcept:
    """Partial statistics: per unit (channels-first) or per row range (channels-last)."""
    if job.channels_first:
        return 3 * job.x.C * job.pieces
    return job.pieces * (2 * job.x.C + 1)


cdef Py_ssize_t row_values(const Job* job) noexcept:
    """Channels-last: 3*C values of the type computed in per row range."""
    return 0 if job.channels_first else 3 * job.x.C * job.pieces


cdef bint run_with_scratch(Kernel kernel, Job* job) except -1:
    """run_typed(kernel) with its scratch; the coefficients go to the caller's
    relu_coef when given (begin_affine), else to scratch. Returns whether an
    output is +-inf from finite inputs (2-byte data: see run_and_free)."""
    cdef bint reduces = kernel != NORMALIZE
    cdef void* block = allocate(job, partial_doubles(job) if reduces else 0,
                                3 if job.tables.coef == NULL else 0,
                                row_values(job) if reduces else 0)
    return run_and_free(run_typed[float], run_typed[double], kernel, job, block)


cdef cnp.ndarray begin_affine(Job* job, object x, object y, object weight, object bias,
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


# ---------------------------------------------------------------- entry points

def moments(x, out, int nthreads):
    """out[0] = per-channel mean, out[1] = M2 (sum of squared deviations), float64;
    returns the count of values per channel."""
    cdef Job job
    cdef cnp.ndarray xa = begin(&job, x, nthreads)
    job.tables.moments = f64_table(out, "out", 2, xa, True)
    run_with_scratch(MOMENTS, &job)
    return job.x.N * job.x.S


def normalize(x, y, weight, bias, double eps, mean, var, double count, relu_coef, int nthreads):
    """y = weight * (x - mean) / sqrt(var + eps) + bias; mean, var: (C,)
    float32 or float64 (the same), e.g. the running statistics. x: float32,
    float64, float16 or bfloat16; y has its dtype, weight, bias and relu_coef
    that of the type computed in (float64 for float64 x, else float32).
    Returns whether some value of y is +-inf though its x is finite (2-byte
    x only: past the type's range).

    Ten parameters, one per argument (as PyTorch's batch_norm): bundling mean
    and var would cost every eval forward a copy into a table.
    count: values per channel when mean and var are x's own (biased)
    statistics (batch renormalisation, synchronised statistics), else 0.
    relu_coef: None, or for a fused ReLU (y = max(y, 0)) a (3, C) array
    receiving the coefficients used, [shift, scale, offset] with
    y = (x - shift) * scale + offset (what backward needs).
    """
    cdef Job job
    cdef cnp.ndarray xa = begin_affine(&job, x, y, weight, bias, eps, relu_coef, nthreads)
    cdef cnp.ndarray stats = mean_var_table(mean, var, xa)
    job.tables.stats = <double*>cnp.PyArray_DATA(stats)
    job.count = count
    return run_with_scratch(NORMALIZE, &job)


cdef cnp.ndarray mean_var_table(object mean, object var, cnp.ndarray x):
    """[mean, var] as a new float64 (2, C) array; mean and var (C,) float32 or
    float64 arrays of the same dtype."""
    cdef Py_ssize_t c, C = cnp.PyArray_DIMS(x)[1]
    cdef int typenum = (cnp.PyArray_TYPE(<cnp.ndarray>mean) if cnp.PyArray_Check(mean)
                        else cnp.NPY_FLOAT64)
    if typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64:
        raise TypeError(f"mean, var: expected float32 or float64 arrays, got {mean.dtype}")
    cdef cnp.ndarray ma = checked_vector(mean, "mean", C, typenum, False)
    cdef cnp.ndarray va = checked_vector(var, "var", C, typenum, False)
    if ma is None or va is None:
        raise TypeError("mean, var: expected arrays, got None")
    cdef cnp.npy_intp dims[2]
    dims[0] = 2
    dims[1] = C
    cdef cnp.ndarray table = cnp.PyArray_SimpleNew(2, dims, cnp.NPY_FLOAT64)
    cdef double* t = <double*>cnp.PyArray_DATA(table)
    if typenum == cnp.NPY_FLOAT32:
        for c in range(C):
            t[c] = (<const float*>cnp.PyArray_DATA(ma))[c]
            t[C + c] = (<const float*>cnp.PyArray_DATA(va))[c]
    else:
        memcpy(t, cnp.PyArray_DATA(ma), C * sizeof(double))
        memcpy(t + C, cnp.PyArray_DATA(va), C * sizeof(double))
    return table


def train_forward(x, y, weight, bias, double eps, stats, relu_coef, int nthreads):
    """Training forward: y, and stats = [mean, invstd, biased var] (float64 (3, C)).

    The running statistics are the caller's to update (cbn._ops), from stats.
    Types, relu_coef and the result as for normalize.
    """
    cdef Job job
    cdef cnp.ndarray xa = begin_affine(&job, x, y, weight, bias, eps, relu_coef, nthreads)
    job.tables.stats = f64_table(stats, "stats", 3, xa, True)
    if job.x.N * job.x.S < 2:
        raise ValueError("x: expected more than 1 value per channel")
    job.rows_last_first = True   # the output pass follows the statistics' reduction
    return run_with_scratch(TRAIN, &job)


cdef Py_ssize_t moved_all(floating* running_mean, floating* running_var, const double* mean,
                          const double* var, double var_scale, double momentum,
                          cnp.npy_bool* kept, Py_ssize_t C) noexcept nogil:
    """running = (1 - momentum) * running + momentum * batch per channel, in
    place, in float64, rounded once (the batch's var multiplied by var_scale
    first); a channel whose new values are not finite (NaN/Inf batch
    statistics, or values past the type's range) keeps its running ones."""
    cdef Py_ssize_t c, count = 0
    cdef floating m, v
    for c in range(C):
        m = <floating>((1.0 - momentum) * running_mean[c] + momentum * mean[c])
        v = <floating>((1.0 - momentum) * running_var[c] + momentum * (var[c] * var_scale))
        kept[c] = not (isfinite(m) and isfinite(v))
        if kept[c]:
            count += 1
        else:
            running_mean[c] = m
            running_var[c] = v
    return count


def moved_running_stats(running_mean, running_var, mean, var, double var_scale, double momentum):
    """The running statistics moved towards the batch's (float64 (C,) mean, and
    var * var_scale, e.g. count / (count - 1)), as new arrays: (new_mean,
    new_var, kept), kept a bool (C,) array marking the channels left as they
    were, or None when there are none. The running statistics are not changed."""
    if not cnp.PyArray_Check(running_mean):
        raise TypeError("running_mean: expected a numpy.ndarray")
    cdef int typenum = cnp.PyArray_TYPE(<cnp.ndarray>running_mean)
    if typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64:
        raise TypeError(f"running_mean: expected float32 or float64, got {running_mean.dtype}")
    cdef cnp.ndarray rma = checked(running_mean, "running_mean", 1, typenum, False)
    cdef Py_ssize_t C = cnp.PyArray_DIMS(rma)[0]
    cdef cnp.ndarray rva = checked_vector(running_var, "running_var", C, typenum, False)
    cdef cnp.ndarray ma = checked_vector(mean, "mean", C, cnp.NPY_FLOAT64, False)
    cdef cnp.ndarray va = checked_vector(var, "var", C, cnp.NPY_FLOAT64, False)
    if rva is None or ma is None or va is None:
        raise TypeError("running_var, mean, var: expected arrays, got None")
    cdef cnp.npy_intp dims[1]
    dims[0] = C
    cdef cnp.ndarray nma = cnp.PyArray_NewCopy(rma, cnp.NPY_CORDER)
    cdef cnp.ndarray nva = cnp.PyArray_NewCopy(rva, cnp.NPY_CORDER)
    cdef cnp.ndarray ka = cnp.PyArray_SimpleNew(1, dims, cnp.NPY_BOOL)
    cdef const double* m = <const double*>cnp.PyArray_DATA(ma)
    cdef const double* v = <const double*>cnp.PyArray_DATA(va)
    cdef cnp.npy_bool* k = <cnp.npy_bool*>cnp.PyArray_DATA(ka)
    cdef Py_ssize_t kept
    if typenum == cnp.NPY_FLOAT32:
        kept = moved_all(<float*>cnp.PyArray_DATA(nma), <float*>cnp.PyArray_DATA(nva), m, v,
                         var_scale, momentum, k, C)
    else:
        kept = moved_all(<double*>cnp.PyArray_DATA(nma), <double*>cnp.PyArray_DATA(nva), m, v,
                         var_scale, momentum, k, C)
    return nma, nva, (ka if kept else None)
