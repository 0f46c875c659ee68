# Backward kernels: the reductions sum(dy), sum(dy * (x - mean)) and dx, alone
# and fused. Same canonical views as _forward.pyx; x and dy may have different
# strides, dx is written through its own.
from cython cimport floating, view
from cython.parallel cimport prange
from libc.stdlib cimport free, malloc

from _coefficients cimport grad_input_coefficients, param_or
from _elementwise cimport grad_input_row, grad_input_run
from _gradsums cimport rows_grad_sums, strided_runs_grad_sums
from _plan cimport channel_parts, part_start, row_parts


cdef inline const floating* opt_ptr(const floating[::1] a) noexcept:
    return NULL if a is None else &a[0]


cdef inline floating* opt_out_ptr(floating[::1] a) noexcept:
    return NULL if a is None else &a[0]


cdef inline void finish_sums(Py_ssize_t C, const double* mean, const floating* shift,
                             double* s_dy, double* s_dyx) noexcept nogil:
    """Turn sum(dy * (x - shift)) into sum(dy * (x - mean)): shift is mean rounded."""
    cdef Py_ssize_t c
    for c in range(C):
        s_dyx[c] = s_dyx[c] - (mean[c] - <double>shift[c]) * s_dy[c]


cdef inline void write_param_grads(Py_ssize_t C, const double* invstd, const double* s_dy,
                                   const double* s_dyx, floating* grad_weight,
                                   floating* grad_bias) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(C):
        if grad_weight != NULL:
            grad_weight[c] = <floating>(s_dyx[c] * invstd[c])
        if grad_bias != NULL:
            grad_bias[c] = <floating>s_dy[c]


cdef class _Work:
    """Per-call scratch: float64 sums and input-typed coefficients/buffers."""
    cdef double* sums
    cdef void* typed
    cdef Py_ssize_t nsums

    def __cinit__(self, Py_ssize_t nsums, Py_ssize_t ntyped, Py_ssize_t itemsize):
        cdef Py_ssize_t i
        self.nsums = nsums
        self.sums = <double*>malloc(max(1, nsums) * sizeof(double))
        self.typed = malloc(max(1, ntyped) * itemsize)
        if self.sums == NULL or self.typed == NULL:
            raise MemoryError()
        for i in range(nsums):
            self.sums[i] = 0.0

    def __dealloc__(self):
        free(self.sums)
        free(self.typed)


# ---------------------------------------------------------------- channels-first

cdef void cf_partial_sums(const floating* dy, Py_ssize_t dsn, Py_ssize_t dsc, const floating* x,
                          Py_ssize_t xsn, Py_ssize_t xsc, Py_ssize_t N, Py_ssize_t C,
                          Py_ssize_t S, Py_ssize_t parts, const floating* shift, double* part,
                          int nthreads) noexcept nogil:
    """part[2u], part[2u+1] = sums of unit u = c * parts + k; part zeroed by caller."""
    cdef Py_ssize_t u, c, k, n0, n1
    for u in prange(C * parts, num_threads=nthreads, schedule="static"):
        c = u // parts
        k = u % parts
        n0 = part_start(N, parts, k)
        n1 = part_start(N, parts, k + 1)
        strided_runs_grad_sums(dy + n0 * dsn + c * dsc, x + n0 * xsn + c * xsc, n1 - n0, dsn,
                               xsn, S, shift[c], &part[2 * u], &part[2 * u + 1])


cdef void cf_sum_parts(const double* part, Py_ssize_t C, Py_ssize_t parts, double* s_dy,
                       double* s_dyx) noexcept nogil:
    cdef Py_ssize_t c, k
    for c in range(C):
        s_dy[c] = 0.0
        s_dyx[c] = 0.0
        for k in range(parts):
            s_dy[c] += part[2 * (c * parts + k)]
            s_dyx[c] += part[2 * (c * parts + k) + 1]


cdef void cf_grad_input(const floating* dy, Py_ssize_t dsn, Py_ssize_t dsc, const floating* x,
                        Py_ssize_t xsn, Py_ssize_t xsc, floating* dx, Py_ssize_t gsn,
                        Py_ssize_t gsc, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                        const floating* coef, int nthreads) noexcept nogil:
    """coef holds shift, k_dy, k_x, k_0, each C long."""
    cdef Py_ssize_t i, n, c
    for i in prange(N * C, num_threads=nthreads, schedule="static"):
        n = i // C
        c = i % C
        grad_input_run(dy + n * dsn + c * dsc, x + n * xsn + c * xsc, dx + n * gsn + c * gsc, S,
                       coef[c], coef[C + c], coef[2 * C + c], coef[3 * C + c])


def grad_sums_channels_first(const floating[::view.strided, ::view.strided, ::view.contiguous] dy,
                             const floating[::view.strided, ::view.strided, ::view.contiguous] x,
                             const double[::1] mean, double[::1] sum_dy, double[::1] sum_dy_xmu,
                             int nthreads):
    """sum(dy) and sum(dy * (x - mean)) per channel."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2], c
    cdef Py_ssize_t parts = channel_parts(N, C)
    cdef _Work work = _Work(2 * C * parts, C, sizeof(floating))
    cdef floating* shift = <floating*>work.typed
    with nogil:
        for c in range(C):
            shift[c] = <floating>mean[c]
        cf_partial_sums(&dy[0, 0, 0], dy.strides[0] // sizeof(floating),
                        dy.strides[1] // sizeof(floating), &x[0, 0, 0],
                        x.strides[0] // sizeof(floating), x.strides[1] // sizeof(floating),
                        N, C, S, parts, shift, work.sums, nthreads)
        cf_sum_parts(work.sums, C, parts, &sum_dy[0], &sum_dy_xmu[0])
        finish_sums(C, &mean[0], shift, &sum_dy[0], &sum_dy_xmu[0])


cdef void cf_backward_by_channel(const floating* dy, Py_ssize_t dsn, Py_ssize_t dsc,
                                 const floating* x, Py_ssize_t xsn, Py_ssize_t xsc, floating* dx,
                                 Py_ssize_t gsn, Py_ssize_t gsc, Py_ssize_t N, Py_ssize_t C,
                                 Py_ssize_t S, const double* mean, const double* invstd,
                                 const floating* w, bint batch_stats, floating* coef,
                                 double* s_dy, double* s_dyx, int nthreads) noexcept nogil:
    """Sums, then dx, one channel at a time while its values are in cache."""
    cdef Py_ssize_t c, n
    cdef floating shift
    for c in prange(C, num_threads=nthreads, schedule="static"):
        shift = <floating>mean[c]
        s_dy[c] = 0.0
        s_dyx[c] = 0.0
        strided_runs_grad_sums(dy + c * dsc, x + c * xsc, N, dsn, xsn, S, shift, &s_dy[c],
                               &s_dyx[c])
        s_dyx[c] = s_dyx[c] - (mean[c] - <double>shift) * s_dy[c]
        grad_input_coefficients(mean[c], invstd[c], param_or(w, c, 1.0), <double>(N * S),
                                s_dy[c], s_dyx[c], batch_stats, &coef[c], &coef[C + c],
                                &coef[2 * C + c], &coef[3 * C + c])
        for n in range(N):
            grad_input_run(dy + n * dsn + c * dsc, x + n * xsn + c * xsc, dx + n * gsn + c * gsc,
                           S, coef[c], coef[C + c], coef[2 * C + c], coef[3 * C + c])


def backward_channels_first(const floating[::view.strided, ::view.strided, ::view.contiguous] dy,
                            const floating[::view.strided, ::view.strided, ::view.contiguous] x,
                            const double[::1] mean, const double[::1] invstd,
                            const floating[::1] weight, bint batch_stats,
                            floating[::view.strided, ::view.strided, ::view.contiguous] dx,
                            floating[::1] grad_weight, floating[::1] grad_bias, int nthreads):
    """dx and, when given, grad_weight = sum(dy * xhat), grad_bias = sum(dy).

    batch_stats: mean/invstd are the batch's own (training); otherwise they are
    fixed (eval) and dx = dy * weight * invstd.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2], c
    cdef Py_ssize_t parts = channel_parts(N, C)
    cdef _Work work = _Work(2 * C + 2 * C * parts, 4 * C, sizeof(floating))
    cdef double* s_dy = work.sums
    cdef double* s_dyx = work.sums + C
    cdef double* part = work.sums + 2 * C
    cdef floating* coef = <floating*>work.typed
    cdef const floating* w = opt_ptr(weight)
    cdef floating* gw = opt_out_ptr(grad_weight)
    cdef floating* gb = opt_out_ptr(grad_bias)
    cdef Py_ssize_t dsn = dy.strides[0] // sizeof(floating), dsc = dy.strides[1] // sizeof(floating)
    cdef Py_ssize_t xsn = x.strides[0] // sizeof(floating), xsc = x.strides[1] // sizeof(floating)
    cdef Py_ssize_t gsn = dx.strides[0] // sizeof(floating), gsc = dx.strides[1] // sizeof(floating)
    with nogil:
        if parts == 1:
            cf_backward_by_channel(&dy[0, 0, 0], dsn, dsc, &x[0, 0, 0], xsn, xsc, &dx[0, 0, 0],
                                   gsn, gsc, N, C, S, &mean[0], &invstd[0], w, batch_stats, coef,
                                   s_dy, s_dyx, nthreads)
        else:
            for c in range(C):
                coef[c] = <floating>mean[c]
            cf_partial_sums(&dy[0, 0, 0], dsn, dsc, &x[0, 0, 0], xsn, xsc, N, C, S, parts, coef,
                            part, nthreads)
            cf_sum_parts(part, C, parts, s_dy, s_dyx)
            finish_sums(C, &mean[0], coef, s_dy, s_dyx)
            for c in range(C):
                grad_input_coefficients(mean[c], invstd[c], param_or(w, c, 1.0), <double>(N * S),
                                        s_dy[c], s_dyx[c], batch_stats, &coef[c], &coef[C + c],
                                        &coef[2 * C + c], &coef[3 * C + c])
            cf_grad_input(&dy[0, 0, 0], dsn, dsc, &x[0, 0, 0], xsn, xsc, &dx[0, 0, 0], gsn, gsc,
                          N, C, S, coef, nthreads)
        write_param_grads(C, &invstd[0], s_dy, s_dyx, gw, gb)


# ---------------------------------------------------------------- channels-last

cdef void cl_partial_sums(const floating* dy, Py_ssize_t ds, const floating* x, Py_ssize_t xs,
                          Py_ssize_t M, Py_ssize_t C, Py_ssize_t parts, const floating* shift,
                          floating* scratch, double* part, int nthreads) noexcept nogil:
    """part[k*2C :] = (sum_dy[C], sum_dyx[C]) of row range k; part zeroed by caller."""
    cdef Py_ssize_t k
    for k in prange(parts, num_threads=nthreads, schedule="static"):
        rows_grad_sums(dy, ds, x, xs, part_start(M, parts, k), part_start(M, parts, k + 1), C,
                       shift, scratch + k * 2 * C, part + k * 2 * C, part + k * 2 * C + C)


cdef void cl_sum_parts(const double* part, Py_ssize_t C, Py_ssize_t parts, double* s_dy,
                       double* s_dyx) noexcept nogil:
    cdef Py_ssize_t c, k
    for c in range(C):
        s_dy[c] = 0.0
        s_dyx[c] = 0.0
    for k in range(parts):
        for c in range(C):
            s_dy[c] += part[k * 2 * C + c]
            s_dyx[c] += part[k * 2 * C + C + c]


cdef void cl_grad_input(const floating* dy, Py_ssize_t ds, const floating* x, Py_ssize_t xs,
                        floating* dx, Py_ssize_t gs, Py_ssize_t M, Py_ssize_t C,
                        const floating* coef, int nthreads) noexcept nogil:
    cdef Py_ssize_t r
    for r in prange(M, num_threads=nthreads, schedule="static"):
        grad_input_row(dy + r * ds, x + r * xs, dx + r * gs, C, coef, coef + C, coef + 2 * C,
                       coef + 3 * C)


def grad_sums_channels_last(const floating[::view.strided, ::view.contiguous] dy,
                            const floating[::view.strided, ::view.contiguous] x,
                            const double[::1] mean, double[::1] sum_dy, double[::1] sum_dy_xmu,
                            int nthreads):
    """sum(dy) and sum(dy * (x - mean)) per channel."""
    cdef Py_ssize_t M = x.shape[0], C = x.shape[1], c
    cdef Py_ssize_t parts = row_parts(M)
    cdef _Work work = _Work(2 * C * parts, 3 * C * parts, sizeof(floating))
    cdef floating* shift = <floating*>work.typed
    with nogil:
        for c in range(C):
            shift[c] = <floating>mean[c]
        cl_partial_sums(&dy[0, 0], dy.strides[0] // sizeof(floating), &x[0, 0],
                        x.strides[0] // sizeof(floating), M, C, parts, shift, shift + C,
                        work.sums, nthreads)
        cl_sum_parts(work.sums, C, parts, &sum_dy[0], &sum_dy_xmu[0])
        finish_sums(C, &mean[0], shift, &sum_dy[0], &sum_dy_xmu[0])


def backward_channels_last(const floating[::view.strided, ::view.contiguous] dy,
                           const floating[::view.strided, ::view.contiguous] x,
                           const double[::1] mean, const double[::1] invstd,
                           const floating[::1] weight, bint batch_stats,
                           floating[::view.strided, ::view.contiguous] dx,
                           floating[::1] grad_weight, floating[::1] grad_bias, int nthreads):
    """As backward_channels_first, for (M, C) arrays."""
    cdef Py_ssize_t M = x.shape[0], C = x.shape[1], c
    cdef Py_ssize_t parts = row_parts(M)
    cdef _Work work = _Work(2 * C + 2 * C * parts, 4 * C + 2 * C * parts, sizeof(floating))
    cdef double* s_dy = work.sums
    cdef double* s_dyx = work.sums + C
    cdef floating* coef = <floating*>work.typed
    cdef const floating* w = opt_ptr(weight)
    cdef floating* gw = opt_out_ptr(grad_weight)
    cdef floating* gb = opt_out_ptr(grad_bias)
    with nogil:
        for c in range(C):
            coef[c] = <floating>mean[c]
        cl_partial_sums(&dy[0, 0], dy.strides[0] // sizeof(floating), &x[0, 0],
                        x.strides[0] // sizeof(floating), M, C, parts, coef, coef + 4 * C,
                        work.sums + 2 * C, nthreads)
        cl_sum_parts(work.sums + 2 * C, C, parts, s_dy, s_dyx)
        finish_sums(C, &mean[0], coef, s_dy, s_dyx)
        for c in range(C):
            grad_input_coefficients(mean[c], invstd[c], param_or(w, c, 1.0), <double>M, s_dy[c],
                                    s_dyx[c], batch_stats, &coef[c], &coef[C + c],
                                    &coef[2 * C + c], &coef[3 * C + c])
        cl_grad_input(&dy[0, 0], dy.strides[0] // sizeof(floating), &x[0, 0],
                      x.strides[0] // sizeof(floating), &dx[0, 0],
                      dx.strides[0] // sizeof(floating), M, C, coef, nthreads)
        write_param_grads(C, &invstd[0], s_dy, s_dyx, gw, gb)
