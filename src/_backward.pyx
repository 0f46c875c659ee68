# Backward kernels: the reductions sum(dy), sum(dy * (x - mean)) and dx, alone
# and fused. Same canonical views and conventions as _forward.pyx (including
# serial loops for one thread); dy, x and dx may each have their own strides.
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange

from _arrays cimport (Geometry, checked, checked_like, checked_table, checked_threads,
                     checked_vector, data_or_null, free_scratch, geometry, input_typenum, run_bytes,
                     scratch)
from _coefficients cimport grad_input_coefficients, param_or
from _loops cimport CBN_FIXED, CBN_STREAM, init_loops, rows_grad_input, runs_grad_input, runs_grad_sums
from _gradsums cimport rows_grad_sums_f64
from _moments cimport row_block
from _plan cimport channel_parts, fuse_by_channel, part_start, row_parts, streams

cnp.import_array()
init_loops()


cdef inline void set_coefficients(floating* coef, Py_ssize_t C, Py_ssize_t c, double mean,
                                  double invstd, const floating* w, double count, double s_dy,
                                  double s_dyx, bint batch_stats) noexcept nogil:
    """coef holds shift, k_dy, k_x, k_0, each C long."""
    grad_input_coefficients(mean, invstd, param_or(w, c, 1.0), count, s_dy, s_dyx, batch_stats,
                            &coef[c], &coef[C + c], &coef[2 * C + c], &coef[3 * C + c])


cdef inline const floating* relu_of(const floating* relu, Py_ssize_t C, Py_ssize_t c,
                                    floating* buf) noexcept nogil:
    """Channel c's forward coefficients {shift, scale, offset} from the (3, C) table, or NULL."""
    if relu == NULL:
        return NULL
    buf[0] = relu[c]
    buf[1] = relu[C + c]
    buf[2] = relu[2 * C + c]
    return buf


# ---------------------------------------------------------------- channels-first

cdef inline void cf_unit_sums(const floating* dy, Geometry gd, const floating* x, Geometry gx,
                              Py_ssize_t parts, const floating* shift, const floating* relu,
                              double* part, Py_ssize_t u) noexcept nogil:
    """part[2u], part[2u+1] = sums of unit u = c * parts + k (channel c, batch range k)."""
    cdef Py_ssize_t c = u // parts, k = u % parts
    cdef Py_ssize_t n0 = part_start(gx.N, parts, k), n1 = part_start(gx.N, parts, k + 1)
    cdef floating rc[3]
    part[2 * u] = 0.0
    part[2 * u + 1] = 0.0
    runs_grad_sums(dy + n0 * gd.sn + c * gd.sc, gd.sn, x + n0 * gx.sn + c * gx.sc, gx.sn,
                   n1 - n0, gx.S, shift[c], relu_of(relu, gx.C, c, rc), &part[2 * u],
                   &part[2 * u + 1])


cdef void cf_partial_sums(const floating* dy, Geometry gd, const floating* x, Geometry gx,
                          const floating* shift, const floating* relu, double* part,
                          int nthreads) noexcept nogil:
    cdef Py_ssize_t u, parts = channel_parts(gx.N, gx.C, gx.S)
    if nthreads == 1:
        for u in range(gx.C * parts):
            cf_unit_sums(dy, gd, x, gx, parts, shift, relu, part, u)
    else:
        for u in prange(gx.C * parts, num_threads=nthreads, schedule="static"):
            cf_unit_sums(dy, gd, x, gx, parts, shift, relu, part, u)


cdef void cf_sum_parts(const double* part, Geometry g, double* s_dy, double* s_dyx) noexcept nogil:
    cdef Py_ssize_t c, k, parts = channel_parts(g.N, g.C, g.S)
    for c in range(g.C):
        s_dy[c] = 0.0
        s_dyx[c] = 0.0
        for k in range(parts):
            s_dy[c] += part[2 * (c * parts + k)]
            s_dyx[c] += part[2 * (c * parts + k) + 1]


cdef inline void cf_run_grad_input(const floating* dy, Geometry gd, const floating* x,
                                   Geometry gx, floating* dx, Geometry gg, const floating* coef,
                                   const floating* relu, Py_ssize_t i) noexcept nogil:
    """Run i = n * C + c: memory order, sequential for contiguous data."""
    cdef Py_ssize_t C = gx.C, n = i // C, c = i % C
    cdef floating rc[3]
    runs_grad_input(dy + n * gd.sn + c * gd.sc, 0, x + n * gx.sn + c * gx.sc, 0,
                    dx + n * gg.sn + c * gg.sc, 0, 1, gx.S, coef[c], coef[C + c], coef[2 * C + c],
                    coef[3 * C + c], relu_of(relu, C, c, rc), gg.flags)


cdef void cf_grad_input(const floating* dy, Geometry gd, const floating* x, Geometry gx,
                        floating* dx, Geometry gg, const floating* coef, const floating* relu,
                        int nthreads) noexcept nogil:
    cdef Py_ssize_t i
    if nthreads == 1:
        for i in range(gx.N * gx.C):
            cf_run_grad_input(dy, gd, x, gx, dx, gg, coef, relu, i)
    else:
        for i in prange(gx.N * gx.C, num_threads=nthreads, schedule="static"):
            cf_run_grad_input(dy, gd, x, gx, dx, gg, coef, relu, i)


cdef inline void cf_channel_backward(const floating* dy, Geometry gd, const floating* x,
                                     Geometry gx, floating* dx, Geometry gg, const double* stats,
                                     const floating* w, bint batch_stats, const floating* relu,
                                     floating* coef, double* sums, Py_ssize_t c) noexcept nogil:
    """Sums, then dx, of channel c while its values are in cache."""
    cdef Py_ssize_t C = gx.C
    cdef floating shift = <floating>stats[c]
    cdef floating rc[3]
    cdef const floating* r = relu_of(relu, C, c, rc)
    sums[c] = 0.0
    sums[C + c] = 0.0
    runs_grad_sums(dy + c * gd.sc, gd.sn, x + c * gx.sc, gx.sn, gx.N, gx.S, shift, r, &sums[c],
                   &sums[C + c])
    sums[C + c] = sums[C + c] - (stats[c] - <double>shift) * sums[c]
    set_coefficients(coef, C, c, stats[c], stats[C + c], w, <double>(gx.N * gx.S), sums[c],
                     sums[C + c], batch_stats)
    runs_grad_input(dy + c * gd.sc, gd.sn, x + c * gx.sc, gx.sn, dx + c * gg.sc, gg.sn, gx.N, gx.S,
                    coef[c], coef[C + c], coef[2 * C + c], coef[3 * C + c], r,
                    gg.flags)


cdef void cf_backward_by_channel(const floating* dy, Geometry gd, const floating* x,
                                 Geometry gx, floating* dx, Geometry gg, const double* stats,
                                 const floating* w, bint batch_stats, const floating* relu,
                                 floating* coef, double* sums, int nthreads) noexcept nogil:
    cdef Py_ssize_t c
    if nthreads == 1:
        for c in range(gx.C):
            cf_channel_backward(dy, gd, x, gx, dx, gg, stats, w, batch_stats, relu, coef, sums,
                                c)
    else:
        for c in prange(gx.C, num_threads=nthreads, schedule="static"):
            cf_channel_backward(dy, gd, x, gx, dx, gg, stats, w, batch_stats, relu, coef, sums,
                                c)


# ---------------------------------------------------------------- channels-last

cdef inline void cl_part_sums(const floating* dy, Geometry gd, const floating* x, Geometry gx,
                              Py_ssize_t parts, const floating* shift, const floating* relu,
                              floating* rows, double* part, Py_ssize_t k) noexcept nogil:
    """part[k*2C :] = (sum_dy[C], sum_dyx[C]) of row range k; rows: 2C per range."""
    cdef Py_ssize_t i, C = gx.C
    for i in range(2 * C):
        part[k * 2 * C + i] = 0.0
    rows_grad_sums_f64(dy, gd.sn, x, gx.sn, part_start(gx.N, parts, k),
                       part_start(gx.N, parts, k + 1), C, shift, relu, rows + k * 2 * C,
                       part + k * 2 * C, part + k * 2 * C + C)


cdef void cl_partial_sums(const floating* dy, Geometry gd, const floating* x, Geometry gx,
                          const floating* shift, const floating* relu, floating* rows,
                          double* part, int nthreads) noexcept nogil:
    cdef Py_ssize_t k, parts = row_parts(gx.N)
    if nthreads == 1:
        for k in range(parts):
            cl_part_sums(dy, gd, x, gx, parts, shift, relu, rows, part, k)
    else:
        for k in prange(parts, num_threads=nthreads, schedule="static"):
            cl_part_sums(dy, gd, x, gx, parts, shift, relu, rows, part, k)


cdef void cl_sum_parts(const double* part, Geometry g, double* s_dy, double* s_dyx) noexcept nogil:
    cdef Py_ssize_t c, k, C = g.C
    for c in range(C):
        s_dy[c] = 0.0
        s_dyx[c] = 0.0
    for k in range(row_parts(g.N)):
        for c in range(C):
            s_dy[c] += part[k * 2 * C + c]
            s_dyx[c] += part[k * 2 * C + C + c]


cdef inline void cl_block_grad_input(const floating* dy, Geometry gd, const floating* x,
                                     Geometry gx, floating* dx, Geometry gg, const floating* coef,
                                     const floating* relu, Py_ssize_t nblocks,
                                     Py_ssize_t i) noexcept nogil:
    """Row blocks last first (the most recently summed are likeliest cached)."""
    cdef Py_ssize_t C = gx.C, block = row_block(C, sizeof(floating))
    cdef Py_ssize_t r0 = (nblocks - 1 - i) * block
    rows_grad_input(dy + r0 * gd.sn, gd.sn, x + r0 * gx.sn, gx.sn, dx + r0 * gg.sn, gg.sn,
                    min(block, gx.N - r0), C, coef, coef + C, coef + 2 * C, coef + 3 * C, relu,
                    gg.flags)


cdef void cl_grad_input(const floating* dy, Geometry gd, const floating* x, Geometry gx,
                        floating* dx, Geometry gg, const floating* coef, const floating* relu,
                        int nthreads) noexcept nogil:
    cdef Py_ssize_t i, block = row_block(gx.C, sizeof(floating))
    cdef Py_ssize_t nblocks = (gx.N + block - 1) // block
    if nthreads == 1:
        for i in range(nblocks):
            cl_block_grad_input(dy, gd, x, gx, dx, gg, coef, relu, nblocks, i)
    else:
        for i in prange(nblocks, num_threads=nthreads, schedule="static"):
            cl_block_grad_input(dy, gd, x, gx, dx, gg, coef, relu, nblocks, i)


# ---------------------------------------------------------------- shared

cdef Py_ssize_t scratch_doubles(Geometry g, bint channels_first) noexcept:
    """2*C sums, then partial sums per unit or row range."""
    return 2 * g.C + 2 * g.C * (channel_parts(g.N, g.C, g.S) if channels_first else row_parts(g.N))


cdef Py_ssize_t scratch_typed(Geometry g, bint channels_first) noexcept:
    """4*C coefficients (the first C, the shifts), then per-row-range buffers."""
    return 4 * g.C + (0 if channels_first else 2 * g.C * row_parts(g.N))


cdef void sums_kernel(const floating* dy, Geometry gd, const floating* x, Geometry gx,
                      bint channels_first, const double* mean, const floating* relu,
                      floating* typed, double* part, double* s_dy, double* s_dyx,
                      int nthreads) noexcept nogil:
    """s_dy = sum(g), s_dyx = sum(g * (x - mean)), g = dy (gated by relu);
    typed[:C] receives the shifts."""
    cdef Py_ssize_t c, C = gx.C
    for c in range(C):
        typed[c] = <floating>mean[c]
    if channels_first:
        cf_partial_sums(dy, gd, x, gx, typed, relu, part, nthreads)
        cf_sum_parts(part, gx, s_dy, s_dyx)
    else:
        cl_partial_sums(dy, gd, x, gx, typed, relu, typed + 4 * C, part, nthreads)
        cl_sum_parts(part, gx, s_dy, s_dyx)
    for c in range(C):  # sum(g * (x - shift)) -> sum(g * (x - mean))
        s_dyx[c] = s_dyx[c] - (mean[c] - <double>typed[c]) * s_dy[c]


cdef void backward_kernel(const floating* dy, Geometry gd, const floating* x, Geometry gx,
                          floating* dx, Geometry gg, bint channels_first, const double* stats,
                          const floating* w, bint batch_stats, const floating* relu,
                          floating* typed, double* part, floating* grads,
                          int nthreads) noexcept nogil:
    cdef Py_ssize_t c, C = gx.C
    cdef double count = <double>(gx.N * gx.S)
    cdef double* sums = part
    if channels_first and fuse_by_channel(gx, 2 * sizeof(floating)):
        cf_backward_by_channel(dy, gd, x, gx, dx, gg, stats, w, batch_stats, relu, typed, sums,
                               nthreads)
    else:
        sums_kernel(dy, gd, x, gx, channels_first, stats, relu, typed, part + 2 * C, sums,
                    sums + C, nthreads)
        for c in range(C):
            set_coefficients(typed, C, c, stats[c], stats[C + c], w, count, sums[c], sums[C + c],
                             batch_stats)
        if channels_first:
            cf_grad_input(dy, gd, x, gx, dx, gg, typed, relu, nthreads)
        else:
            cl_grad_input(dy, gd, x, gx, dx, gg, typed, relu, nthreads)
    if grads != NULL:
        for c in range(C):
            grads[c] = <floating>(sums[C + c] * stats[C + c])
            grads[C + c] = <floating>sums[c]


# ---------------------------------------------------------------- entry points

cdef void* relu_data(object relu, Py_ssize_t C, int typenum) except? NULL:
    """The forward's (3, C) coefficient table of a fused ReLU, or NULL for none."""
    if relu is None:
        return NULL
    return cnp.PyArray_DATA(checked_table(relu, "relu", 3, C, typenum, False))


def grad_sums(dy, x, mean, out, int nthreads, relu=None):
    """out[0] = sum(g), out[1] = sum(g * (x - mean)) per channel, float64; g = dy,
    or dy where the fused ReLU's input was positive (relu: the forward's
    [shift, scale, offset] table)."""
    cdef int typenum = input_typenum(x, "x")
    cdef cnp.ndarray xa = checked(x, "x", cnp.PyArray_NDIM(x), typenum, False)
    cdef cnp.ndarray da = checked_like(dy, "dy", xa, False)
    cdef Geometry gx = geometry(xa), gd = geometry(da)
    cdef cnp.ndarray ma = checked_vector(mean, "mean", gx.C, cnp.NPY_FLOAT64, False) \
        if mean is not None else checked(mean, "mean", 1, cnp.NPY_FLOAT64, False)
    cdef cnp.ndarray oa = checked_table(out, "out", 2, gx.C, cnp.NPY_FLOAT64, True)
    cdef void* rp = relu_data(relu, gx.C, typenum)
    cdef bint cf = cnp.PyArray_NDIM(xa) == 3
    cdef Py_ssize_t nd = scratch_doubles(gx, cf)
    cdef void* xp = cnp.PyArray_DATA(xa)
    cdef void* dp = cnp.PyArray_DATA(da)
    cdef const double* m = <const double*>cnp.PyArray_DATA(ma)
    cdef double* o = <double*>cnp.PyArray_DATA(oa)
    cdef double* part
    cdef void* typed
    checked_threads(nthreads)
    part = <double*>scratch(nd * sizeof(double) + scratch_typed(gx, cf) * cnp.PyArray_ITEMSIZE(xa))
    typed = part + nd
    try:
        with nogil:
            if typenum == cnp.NPY_FLOAT32:
                sums_kernel(<const float*>dp, gd, <const float*>xp, gx, cf, m, <const float*>rp,
                            <float*>typed, part, o, o + gx.C, nthreads)
            else:
                sums_kernel(<const double*>dp, gd, <const double*>xp, gx, cf, m,
                            <const double*>rp, <double*>typed, part, o, o + gx.C, nthreads)
    finally:
        free_scratch(part)


def backward(dy, x, stats, weight, bint batch_stats, dx, grads, int nthreads, relu=None):
    """dx, and when grads is given, grads[0] = sum(g * xhat), grads[1] = sum(g).

    stats = [mean, invstd], float64 (2, C). batch_stats: they are the batch's own
    (training); otherwise they are fixed (eval) and dx = g * weight * invstd.
    g = dy, or with a fused ReLU (relu: the forward's [shift, scale, offset]
    table, x's dtype, (3, C)) dy where the ReLU's input was positive.
    """
    cdef int typenum = input_typenum(x, "x")
    cdef cnp.ndarray xa = checked(x, "x", cnp.PyArray_NDIM(x), typenum, False)
    cdef cnp.ndarray da = checked_like(dy, "dy", xa, False)
    cdef cnp.ndarray ga = checked_like(dx, "dx", xa, True)
    cdef Geometry gx = geometry(xa), gd = geometry(da), gg = geometry(ga)
    gg.flags = ((CBN_STREAM if streams(cnp.PyArray_NBYTES(ga),
                                       run_bytes(gg, cnp.PyArray_ITEMSIZE(ga))) else 0)
                | (0 if batch_stats else CBN_FIXED))
    cdef cnp.ndarray sa = checked_table(stats, "stats", 2, gx.C, cnp.NPY_FLOAT64, False)
    cdef cnp.ndarray wa = checked_vector(weight, "weight", gx.C, typenum, False)
    cdef void* rp = relu_data(relu, gx.C, typenum)
    cdef cnp.ndarray gra = None
    cdef bint cf = cnp.PyArray_NDIM(xa) == 3
    cdef Py_ssize_t nd = scratch_doubles(gx, cf)
    cdef void* xp = cnp.PyArray_DATA(xa)
    cdef void* dp = cnp.PyArray_DATA(da)
    cdef void* gp = cnp.PyArray_DATA(ga)
    cdef void* wp = data_or_null(wa)
    cdef void* grp = NULL
    cdef const double* s = <const double*>cnp.PyArray_DATA(sa)
    cdef double* part
    cdef void* typed
    if grads is not None:
        gra = checked_table(grads, "grads", 2, gx.C, typenum, True)
        grp = cnp.PyArray_DATA(gra)
    checked_threads(nthreads)
    part = <double*>scratch(nd * sizeof(double) + scratch_typed(gx, cf) * cnp.PyArray_ITEMSIZE(xa))
    typed = part + nd
    try:
        with nogil:
            if typenum == cnp.NPY_FLOAT32:
                backward_kernel(<const float*>dp, gd, <const float*>xp, gx, <float*>gp, gg, cf, s,
                                <const float*>wp, batch_stats, <const float*>rp, <float*>typed,
                                part, <float*>grp, nthreads)
            else:
                backward_kernel(<const double*>dp, gd, <const double*>xp, gx, <double*>gp, gg, cf,
                                s, <const double*>wp, batch_stats, <const double*>rp,
                                <double*>typed, part, <double*>grp, nthreads)
    finally:
        free_scratch(part)


cdef void grad_input_kernel(const floating* dy, Geometry gd, const floating* x, Geometry gx,
                            floating* dx, Geometry gg, bint channels_first, const double* stats,
                            const floating* w, const double* sums, double count,
                            bint batch_stats, const floating* relu, floating* coef,
                            int nthreads) noexcept nogil:
    cdef Py_ssize_t c, C = gx.C
    for c in range(C):
        set_coefficients(coef, C, c, stats[c], stats[C + c], w, count, sums[c], sums[C + c],
                         batch_stats)
    if channels_first:
        cf_grad_input(dy, gd, x, gx, dx, gg, coef, relu, nthreads)
    else:
        cl_grad_input(dy, gd, x, gx, dx, gg, coef, relu, nthreads)


def grad_input(dy, x, stats, weight, sums, double count, bint batch_stats, dx, int nthreads,
               relu=None):
    """dx from given sums and count, e.g. over every process of a distributed batch.

    sums = [sum(g), sum(g * (x - mean))] (float64 (2, C), as grad_sums gives,
    summed over the processes); count: values per channel in all of them;
    stats = [mean, invstd] as for backward.
    """
    cdef int typenum = input_typenum(x, "x")
    cdef cnp.ndarray xa = checked(x, "x", cnp.PyArray_NDIM(x), typenum, False)
    cdef cnp.ndarray da = checked_like(dy, "dy", xa, False)
    cdef cnp.ndarray ga = checked_like(dx, "dx", xa, True)
    cdef Geometry gx = geometry(xa), gd = geometry(da), gg = geometry(ga)
    gg.flags = ((CBN_STREAM if streams(cnp.PyArray_NBYTES(ga),
                                       run_bytes(gg, cnp.PyArray_ITEMSIZE(ga))) else 0)
                | (0 if batch_stats else CBN_FIXED))
    cdef cnp.ndarray sa = checked_table(stats, "stats", 2, gx.C, cnp.NPY_FLOAT64, False)
    cdef cnp.ndarray ua = checked_table(sums, "sums", 2, gx.C, cnp.NPY_FLOAT64, False)
    cdef cnp.ndarray wa = checked_vector(weight, "weight", gx.C, typenum, False)
    cdef void* rp = relu_data(relu, gx.C, typenum)
    cdef bint cf = cnp.PyArray_NDIM(xa) == 3
    cdef void* xp = cnp.PyArray_DATA(xa)
    cdef void* dp = cnp.PyArray_DATA(da)
    cdef void* gp = cnp.PyArray_DATA(ga)
    cdef void* wp = data_or_null(wa)
    cdef const double* s = <const double*>cnp.PyArray_DATA(sa)
    cdef const double* u = <const double*>cnp.PyArray_DATA(ua)
    cdef void* coef
    checked_threads(nthreads)
    if batch_stats and not count > 0:
        raise ValueError(f"count: expected a positive count of values per channel, got {count}")
    coef = scratch(4 * gx.C * cnp.PyArray_ITEMSIZE(xa))
    try:
        with nogil:
            if typenum == cnp.NPY_FLOAT32:
                grad_input_kernel(<const float*>dp, gd, <const float*>xp, gx, <float*>gp, gg, cf,
                                  s, <const float*>wp, u, count, batch_stats, <const float*>rp,
                                  <float*>coef, nthreads)
            else:
                grad_input_kernel(<const double*>dp, gd, <const double*>xp, gx, <double*>gp, gg,
                                  cf, s, <const double*>wp, u, count, batch_stats,
                                  <const double*>rp, <double*>coef, nthreads)
    finally:
        free_scratch(coef)
