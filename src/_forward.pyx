# Forward kernels: channel statistics, normalisation, and both fused.
#
# Two canonical views: channels-first (N, C, S), each (n, c) a contiguous run
# of S values, and channels-last (M, C), each row a contiguous run of C
# channels; 3-D arrays are the first, 2-D the second. Only the innermost axis
# must be contiguous. Entry points check their arguments (cheaply, through the
# NumPy C API) and take the thread count from the caller.
#
# Every parallel loop runs an inline body per index, from prange or, for one
# thread, from a plain loop: an OpenMP region costs ~0.7 us even with one
# thread, more than a small tensor's arithmetic.
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport isfinite, sqrt
from libc.string cimport memcpy

from _arrays cimport (Geometry, checked, checked_like, checked_table, checked_threads,
                     checked_vector, data_or_null, free_scratch, geometry, input_typenum, run_bytes,
                     scratch)
from _coefficients cimport inverse_std, normalize_coefficients, param_or
from _loops cimport CBN_RELU, CBN_STREAM, init_loops, rows_affine, runs_affine
from _moments cimport (Moments, merge_partials, moments_zero, row_block, rows_moments,
                      strided_runs_moments)
from _plan cimport (PARALLEL_CHANNELS, channel_parts, fuse_by_channel, part_start, row_parts,
                   streams)

cnp.import_array()
init_loops()


cdef inline double read_double(const void* p, bint f32, Py_ssize_t c) noexcept nogil:
    return <double>(<const float*>p)[c] if f32 else (<const double*>p)[c]


cdef inline void set_coefficients(floating* coef, Py_ssize_t C, Py_ssize_t c, double mean,
                                  double invstd, double max_dev, const floating* w,
                                  const floating* b) noexcept nogil:
    """coef holds shift, scale, offset, each C long; max_dev bounds |x - mean|."""
    normalize_coefficients(mean, invstd, param_or(w, c, 1.0), param_or(b, c, 0.0), max_dev,
                           &coef[c], &coef[C + c], &coef[2 * C + c])


cdef inline int channel_threads(Py_ssize_t C, int nthreads) noexcept nogil:
    """Threads for per-channel finishing work (merges, square roots): only many channels pay."""
    return nthreads if C >= PARALLEL_CHANNELS else 1


# ---------------------------------------------------------------- channels-first

cdef inline void cf_unit_moments(const floating* x, Geometry g, Py_ssize_t parts, double* part,
                                 Py_ssize_t u) noexcept nogil:
    """part[3u : 3u+3] = (count, mean, m2) of unit u = c * parts + k (channel c, batch range k)."""
    cdef Py_ssize_t c = u // parts, k = u % parts
    cdef Py_ssize_t n0 = part_start(g.N, parts, k), n1 = part_start(g.N, parts, k + 1)
    cdef Moments acc = moments_zero()
    strided_runs_moments(x + n0 * g.sn + c * g.sc, n1 - n0, g.sn, g.S, &acc)
    part[3 * u] = acc.count
    part[3 * u + 1] = acc.mean
    part[3 * u + 2] = acc.m2


cdef void cf_partial_moments(const floating* x, Geometry g, double* part,
                             int nthreads) noexcept nogil:
    cdef Py_ssize_t u, parts = channel_parts(g.N, g.C, g.S)
    if nthreads == 1:
        for u in range(g.C * parts):
            cf_unit_moments(x, g, parts, part, u)
    else:
        for u in prange(g.C * parts, num_threads=nthreads, schedule="static"):
            cf_unit_moments(x, g, parts, part, u)


cdef inline void cf_run_affine(const floating* x, Geometry gx, floating* y, Geometry gy,
                               const floating* coef, Py_ssize_t i) noexcept nogil:
    """Run i = n * C + c: memory order, sequential for contiguous data."""
    cdef Py_ssize_t C = gx.C, n = i // C, c = i % C
    runs_affine(x + n * gx.sn + c * gx.sc, 0, y + n * gy.sn + c * gy.sc, 0, 1, gx.S, coef[c],
                coef[C + c], coef[2 * C + c], gy.flags)


cdef void cf_affine(const floating* x, Geometry gx, floating* y, Geometry gy,
                    const floating* coef, int nthreads) noexcept nogil:
    cdef Py_ssize_t i
    if nthreads == 1:
        for i in range(gx.N * gx.C):
            cf_run_affine(x, gx, y, gy, coef, i)
    else:
        for i in prange(gx.N * gx.C, num_threads=nthreads, schedule="static"):
            cf_run_affine(x, gx, y, gy, coef, i)


cdef inline void cf_channel_train(const floating* x, Geometry gx, floating* y, Geometry gy,
                                  const floating* w, const floating* b, double eps,
                                  floating* coef, double* stats, Py_ssize_t c) noexcept nogil:
    """Statistics, then normalisation, of channel c while its values are in cache."""
    cdef Py_ssize_t C = gx.C
    cdef Moments acc = moments_zero()
    strided_runs_moments(x + c * gx.sc, gx.N, gx.sn, gx.S, &acc)
    stats[c] = acc.mean
    stats[2 * C + c] = acc.m2 / acc.count
    stats[C + c] = inverse_std(stats[2 * C + c], eps)
    set_coefficients(coef, C, c, acc.mean, stats[C + c], sqrt(acc.m2), w, b)
    runs_affine(x + c * gx.sc, gx.sn, y + c * gy.sc, gy.sn, gx.N, gx.S, coef[c], coef[C + c],
                coef[2 * C + c], gy.flags)


cdef void cf_train_by_channel(const floating* x, Geometry gx, floating* y, Geometry gy,
                              const floating* w, const floating* b, double eps, floating* coef,
                              double* stats, int nthreads) noexcept nogil:
    cdef Py_ssize_t c
    if nthreads == 1:
        for c in range(gx.C):
            cf_channel_train(x, gx, y, gy, w, b, eps, coef, stats, c)
    else:
        for c in prange(gx.C, num_threads=nthreads, schedule="static"):
            cf_channel_train(x, gx, y, gy, w, b, eps, coef, stats, c)


# ---------------------------------------------------------------- channels-last

cdef inline void cl_part_moments(const floating* x, Geometry g, Py_ssize_t parts,
                                 floating* rows, double* part, Py_ssize_t k) noexcept nogil:
    """part[k*(2C+1) :] = (count, mean[C], m2[C]) of row range k; rows: 3C per range."""
    cdef Py_ssize_t C = g.C, i
    cdef double* p = part + k * (2 * C + 1)
    for i in range(2 * C + 1):
        p[i] = 0.0
    rows_moments(x, g.sn, part_start(g.N, parts, k), part_start(g.N, parts, k + 1), C,
                 rows + k * 3 * C, p, p + 1, p + 1 + C)


cdef void cl_partial_moments(const floating* x, Geometry g, floating* rows, double* part,
                             int nthreads) noexcept nogil:
    cdef Py_ssize_t k, parts = row_parts(g.N)
    if nthreads == 1:
        for k in range(parts):
            cl_part_moments(x, g, parts, rows, part, k)
    else:
        for k in prange(parts, num_threads=nthreads, schedule="static"):
            cl_part_moments(x, g, parts, rows, part, k)


cdef inline void cl_block_affine(const floating* x, Geometry gx, floating* y, Geometry gy,
                                 const floating* coef, Py_ssize_t nblocks,
                                 Py_ssize_t i) noexcept nogil:
    """Row blocks last first: after a statistics pass the most recently read
    rows are the likeliest to be still in cache."""
    cdef Py_ssize_t C = gx.C, block = row_block(C, sizeof(floating))
    cdef Py_ssize_t r0 = (nblocks - 1 - i) * block
    rows_affine(x + r0 * gx.sn, gx.sn, y + r0 * gy.sn, gy.sn, min(block, gx.N - r0), C, coef,
                coef + C, coef + 2 * C, gy.flags)


cdef void cl_affine(const floating* x, Geometry gx, floating* y, Geometry gy,
                    const floating* coef, int nthreads) noexcept nogil:
    cdef Py_ssize_t i, block = row_block(gx.C, sizeof(floating))
    cdef Py_ssize_t nblocks = (gx.N + block - 1) // block
    if nthreads == 1:
        for i in range(nblocks):
            cl_block_affine(x, gx, y, gy, coef, nblocks, i)
    else:
        for i in prange(nblocks, num_threads=nthreads, schedule="static"):
            cl_block_affine(x, gx, y, gy, coef, nblocks, i)


# ---------------------------------------------------------------- shared

cdef Py_ssize_t scratch_doubles(Geometry g, bint channels_first) noexcept:
    """Partial statistics: per unit (channels-first) or per row range (channels-last)."""
    if channels_first:
        return 3 * g.C * channel_parts(g.N, g.C, g.S)
    return row_parts(g.N) * (2 * g.C + 1)


cdef Py_ssize_t scratch_typed(Geometry g, bint channels_first) noexcept:
    """3*C coefficients, then (channels-last) 3*C per row range."""
    return 3 * g.C * (1 if channels_first else row_parts(g.N) + 1)


cdef void partial_moments(const floating* x, Geometry g, bint channels_first, double* part,
                          floating* rows, int nthreads) noexcept nogil:
    """Per-unit (channels-first) or per-row-range (channels-last) statistics into part."""
    if channels_first:
        cf_partial_moments(x, g, part, nthreads)
    else:
        cl_partial_moments(x, g, rows, part, nthreads)


cdef inline Moments merged(const double* part, Geometry g, bint channels_first,
                           Py_ssize_t c) noexcept nogil:
    """Channel c's statistics, its partial results merged in a fixed order."""
    cdef Moments acc = moments_zero()
    cdef Py_ssize_t parts, C = g.C
    if channels_first:
        parts = channel_parts(g.N, C, g.S)
        merge_partials(part + 3 * c * parts, part + 3 * c * parts + 1, part + 3 * c * parts + 2,
                       parts, 3, &acc)
    else:
        merge_partials(part, part + 1 + c, part + 1 + C + c, row_parts(g.N), 2 * C + 1, &acc)
    return acc


cdef inline void channel_moments(const double* part, Geometry g, bint channels_first,
                                 double* mean, double* m2, Py_ssize_t c) noexcept nogil:
    cdef Moments acc = merged(part, g, channels_first, c)
    mean[c] = acc.mean
    m2[c] = acc.m2


cdef void finish_moments(const double* part, Geometry g, bint channels_first, double* mean,
                         double* m2, int nthreads) noexcept nogil:
    cdef Py_ssize_t c
    if channel_threads(g.C, nthreads) == 1:
        for c in range(g.C):
            channel_moments(part, g, channels_first, mean, m2, c)
    else:
        for c in prange(g.C, num_threads=nthreads, schedule="static"):
            channel_moments(part, g, channels_first, mean, m2, c)


cdef inline void channel_training(const double* part, Geometry g, bint channels_first,
                                  const floating* w, const floating* b, double eps,
                                  floating* coef, double* stats, Py_ssize_t c) noexcept nogil:
    """Channel c's merged statistics [mean, invstd, var] and coefficients."""
    cdef Py_ssize_t C = g.C
    cdef Moments acc = merged(part, g, channels_first, c)
    stats[c] = acc.mean
    stats[2 * C + c] = acc.m2 / acc.count
    stats[C + c] = inverse_std(stats[2 * C + c], eps)
    set_coefficients(coef, C, c, stats[c], stats[C + c], sqrt(acc.m2), w, b)


cdef void finish_training(const double* part, Geometry g, bint channels_first, const floating* w,
                          const floating* b, double eps, floating* coef, double* stats,
                          int nthreads) noexcept nogil:
    cdef Py_ssize_t c
    if channel_threads(g.C, nthreads) == 1:
        for c in range(g.C):
            channel_training(part, g, channels_first, w, b, eps, coef, stats, c)
    else:
        for c in prange(g.C, num_threads=nthreads, schedule="static"):
            channel_training(part, g, channels_first, w, b, eps, coef, stats, c)


cdef void affine_kernel(const floating* x, Geometry gx, floating* y, Geometry gy,
                        bint channels_first, const floating* coef, int nthreads) noexcept nogil:
    if channels_first:
        cf_affine(x, gx, y, gy, coef, nthreads)
    else:
        cl_affine(x, gx, y, gy, coef, nthreads)


cdef void train_kernel(const floating* x, Geometry gx, floating* y, Geometry gy,
                       bint channels_first, const floating* w, const floating* b, double eps,
                       double* part, floating* typed, double* stats, int nthreads) noexcept nogil:
    """typed: 3*C coefficients, then (channels-last) per-row-range buffers."""
    cdef Py_ssize_t C = gx.C
    if channels_first and fuse_by_channel(gx, sizeof(floating)):
        cf_train_by_channel(x, gx, y, gy, w, b, eps, typed, stats, nthreads)
    else:
        partial_moments(x, gx, channels_first, part, typed + 3 * C, nthreads)
        finish_training(part, gx, channels_first, w, b, eps, typed, stats, nthreads)
        affine_kernel(x, gx, y, gy, channels_first, typed, nthreads)


# ---------------------------------------------------------------- entry points

def moments(x, out, int nthreads):
    """out[0] = per-channel mean, out[1] = M2 (sum of squared deviations), float64;
    returns the count of values per channel."""
    cdef int typenum = input_typenum(x, "x")
    cdef cnp.ndarray xa = checked(x, "x", cnp.PyArray_NDIM(x), typenum, False)
    cdef Geometry g = geometry(xa)
    cdef cnp.ndarray oa = checked_table(out, "out", 2, g.C, cnp.NPY_FLOAT64, True)
    cdef double* o = <double*>cnp.PyArray_DATA(oa)
    cdef bint cf = cnp.PyArray_NDIM(xa) == 3
    cdef void* xp = cnp.PyArray_DATA(xa)
    cdef Py_ssize_t nd = scratch_doubles(g, cf)
    cdef double* part
    cdef void* typed
    checked_threads(nthreads)
    part = <double*>scratch(nd * sizeof(double) + scratch_typed(g, cf) * cnp.PyArray_ITEMSIZE(xa))
    typed = part + nd
    try:
        with nogil:
            if typenum == cnp.NPY_FLOAT32:
                partial_moments(<const float*>xp, g, cf, part, <float*>typed, nthreads)
            else:
                partial_moments(<const double*>xp, g, cf, part, <double*>typed, nthreads)
            finish_moments(part, g, cf, o, o + g.C, nthreads)
    finally:
        free_scratch(part)
    return g.N * g.S


cdef void normalize_kernel(const floating* x, Geometry gx, floating* y, Geometry gy,
                           bint channels_first, const void* mean, const void* var,
                           bint stats_f32, double eps, double count, const floating* w,
                           const floating* b, floating* coef, int nthreads) noexcept nogil:
    """count: the values per channel mean and var came from (for sqrt(M2), the
    bound set_shift needs), or 0 when they are not this batch's."""
    cdef Py_ssize_t c, C = gx.C
    cdef double v
    for c in range(C):
        v = read_double(var, stats_f32, c)
        set_coefficients(coef, C, c, read_double(mean, stats_f32, c), inverse_std(v, eps),
                         sqrt(v * count), w, b)
    affine_kernel(x, gx, y, gy, channels_first, coef, nthreads)


def normalize(x, mean, var, double eps, weight, bias, y, int nthreads, bint relu=False,
              coef_out=None, double count=0.0):
    """y = weight * (x - mean) / sqrt(var + eps) + bias (then max(y, 0) if relu).

    count: values per channel when mean and var (biased) are x's own
    statistics (batch renormalisation, synchronised statistics), else 0.

    mean, var: (C,) float32 or float64 (the same), e.g. running statistics.
    coef_out: a (3, C) array of x's dtype receiving the coefficients used,
    [shift, scale, offset] with y = (x - shift) * scale + offset.
    """
    cdef int typenum = input_typenum(x, "x")
    cdef cnp.ndarray xa = checked(x, "x", cnp.PyArray_NDIM(x), typenum, False)
    cdef cnp.ndarray ya = checked_like(y, "y", xa, True)
    cdef Geometry gx = geometry(xa), gy = geometry(ya)
    gy.flags = ((CBN_STREAM if streams(cnp.PyArray_NBYTES(ya), run_bytes(gy, cnp.PyArray_ITEMSIZE(ya)))
                 else 0) | (CBN_RELU if relu else 0))
    cdef int stats_type = (cnp.PyArray_TYPE(<cnp.ndarray>mean) if cnp.PyArray_Check(mean)
                           else cnp.NPY_FLOAT64)
    cdef cnp.ndarray ma = checked(mean, "mean", 1, stats_type, False)
    cdef cnp.ndarray va = checked(var, "var", 1, stats_type, False)
    cdef cnp.ndarray wa = checked_vector(weight, "weight", gx.C, typenum, False)
    cdef cnp.ndarray ba = checked_vector(bias, "bias", gx.C, typenum, False)
    cdef bint cf = cnp.PyArray_NDIM(xa) == 3
    cdef bint f32 = stats_type == cnp.NPY_FLOAT32
    cdef const void* mp
    cdef const void* vp
    cdef void* xp = cnp.PyArray_DATA(xa)
    cdef void* yp = cnp.PyArray_DATA(ya)
    cdef void* wp = data_or_null(wa)
    cdef void* bp = data_or_null(ba)
    cdef void* coef
    checked_threads(nthreads)
    if stats_type != cnp.NPY_FLOAT32 and stats_type != cnp.NPY_FLOAT64:
        raise TypeError("mean, var: expected float32 or float64 arrays")
    if cnp.PyArray_DIMS(ma)[0] != gx.C or cnp.PyArray_DIMS(va)[0] != gx.C:
        raise ValueError(f"mean, var: expected shape ({gx.C},), got {mean.shape} and {var.shape}")
    mp = cnp.PyArray_DATA(ma)
    vp = cnp.PyArray_DATA(va)
    cdef cnp.ndarray ca = (None if coef_out is None
                           else checked_table(coef_out, "coef_out", 3, gx.C, typenum, True))
    coef = scratch(3 * gx.C * cnp.PyArray_ITEMSIZE(xa))
    try:
        with nogil:
            if typenum == cnp.NPY_FLOAT32:
                normalize_kernel(<const float*>xp, gx, <float*>yp, gy, cf, mp, vp, f32, eps, count,
                                 <const float*>wp, <const float*>bp, <float*>coef, nthreads)
            else:
                normalize_kernel(<const double*>xp, gx, <double*>yp, gy, cf, mp, vp, f32, eps,
                                 count, <const double*>wp, <const double*>bp, <double*>coef,
                                 nthreads)
        if ca is not None:
            memcpy(cnp.PyArray_DATA(ca), coef, 3 * gx.C * cnp.PyArray_ITEMSIZE(xa))
    finally:
        free_scratch(coef)


def train_forward(x, weight, bias, double eps, y, stats, int nthreads, bint relu=False,
                  coef_out=None):
    """Training forward: y, and stats = [mean, invstd, biased var] (float64 (3, C)).

    The running statistics are the caller's to update (cbn._ops), from stats.
    relu and coef_out as for normalize.
    """
    cdef int typenum = input_typenum(x, "x")
    cdef cnp.ndarray xa = checked(x, "x", cnp.PyArray_NDIM(x), typenum, False)
    cdef cnp.ndarray ya = checked_like(y, "y", xa, True)
    cdef Geometry gx = geometry(xa), gy = geometry(ya)
    gy.flags = ((CBN_STREAM if streams(cnp.PyArray_NBYTES(ya), run_bytes(gy, cnp.PyArray_ITEMSIZE(ya)))
                 else 0) | (CBN_RELU if relu else 0))
    cdef Py_ssize_t C = gx.C
    cdef cnp.ndarray sa = checked_table(stats, "stats", 3, C, cnp.NPY_FLOAT64, True)
    cdef cnp.ndarray wa = checked_vector(weight, "weight", C, typenum, False)
    cdef cnp.ndarray ba = checked_vector(bias, "bias", C, typenum, False)
    cdef bint cf = cnp.PyArray_NDIM(xa) == 3
    cdef double* s = <double*>cnp.PyArray_DATA(sa)
    cdef void* xp = cnp.PyArray_DATA(xa)
    cdef void* yp = cnp.PyArray_DATA(ya)
    cdef void* wp = data_or_null(wa)
    cdef void* bp = data_or_null(ba)
    cdef Py_ssize_t nd = scratch_doubles(gx, cf)
    cdef double* part
    cdef void* typed
    checked_threads(nthreads)
    if gx.N * gx.S < 2:
        raise ValueError("x: expected more than 1 value per channel")
    cdef cnp.ndarray ca = (None if coef_out is None
                           else checked_table(coef_out, "coef_out", 3, C, typenum, True))
    part = <double*>scratch(nd * sizeof(double) + scratch_typed(gx, cf) * cnp.PyArray_ITEMSIZE(xa))
    typed = part + nd
    try:
        with nogil:
            if typenum == cnp.NPY_FLOAT32:
                train_kernel(<const float*>xp, gx, <float*>yp, gy, cf, <const float*>wp,
                             <const float*>bp, eps, part, <float*>typed, s, nthreads)
            else:
                train_kernel(<const double*>xp, gx, <double*>yp, gy, cf, <const double*>wp,
                             <const double*>bp, eps, part, <double*>typed, s, nthreads)
        if ca is not None:  # the coefficients are the first 3*C of typed
            memcpy(cnp.PyArray_DATA(ca), typed, 3 * C * cnp.PyArray_ITEMSIZE(xa))
    finally:
        free_scratch(part)


cdef Py_ssize_t moved_all(const floating* running_mean, const floating* running_var,
                          const double* mean, const double* var, double var_scale,
                          double momentum, floating* new_mean, floating* new_var,
                          cnp.npy_bool* kept, Py_ssize_t C) noexcept nogil:
    """new = (1 - momentum) * running + momentum * batch per channel, in float64,
    rounded once (the batch's var multiplied by var_scale first); a channel whose new values are not finite (NaN/Inf batch
    statistics, or values past the type's range) keeps its running ones."""
    cdef Py_ssize_t c, count = 0
    cdef floating m, v
    for c in range(C):
        m = <floating>((1.0 - momentum) * running_mean[c] + momentum * mean[c])
        v = <floating>((1.0 - momentum) * running_var[c] + momentum * (var[c] * var_scale))
        kept[c] = not (isfinite(m) and isfinite(v))
        if kept[c]:
            m = running_mean[c]
            v = running_var[c]
            count += 1
        new_mean[c] = m
        new_var[c] = v
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
    cdef cnp.ndarray nma = cnp.PyArray_SimpleNew(1, dims, typenum)
    cdef cnp.ndarray nva = cnp.PyArray_SimpleNew(1, dims, typenum)
    cdef cnp.ndarray ka = cnp.PyArray_SimpleNew(1, dims, cnp.NPY_BOOL)
    cdef const double* m = <const double*>cnp.PyArray_DATA(ma)
    cdef const double* v = <const double*>cnp.PyArray_DATA(va)
    cdef cnp.npy_bool* k = <cnp.npy_bool*>cnp.PyArray_DATA(ka)
    cdef Py_ssize_t kept
    if typenum == cnp.NPY_FLOAT32:
        kept = moved_all(<const float*>cnp.PyArray_DATA(rma),
                         <const float*>cnp.PyArray_DATA(rva), m, v, var_scale, momentum,
                         <float*>cnp.PyArray_DATA(nma), <float*>cnp.PyArray_DATA(nva), k, C)
    else:
        kept = moved_all(<const double*>cnp.PyArray_DATA(rma),
                         <const double*>cnp.PyArray_DATA(rva), m, v, var_scale, momentum,
                         <double*>cnp.PyArray_DATA(nma), <double*>cnp.PyArray_DATA(nva), k, C)
    return nma, nva, (ka if kept else None)
