# Forward kernels: channel statistics, normalisation, and both fused.
#
# Two canonical views: channels-first (N, C, S), each (n, c) a contiguous run
# of S values, and channels-last (M, C), each row a contiguous run of C
# channels. Only the innermost dimension must be contiguous. The caller
# validates shapes and dtypes and passes the thread count.
from cython cimport floating, view
from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc

from _coefficients cimport inverse_std, normalize_coefficients, param_or
from _elementwise cimport affine_row, affine_run
from _moments cimport (Moments, merge_partials, moments_zero, rows_moments,
                      strided_runs_moments)
from _plan cimport channel_parts, part_start, row_parts


cdef inline const floating* opt_ptr(const floating[::1] a) noexcept:
    return NULL if a is None else &a[0]


# ---------------------------------------------------------------- channels-first

cdef void cf_partial_moments(const floating* x, Py_ssize_t xsn, Py_ssize_t xsc, Py_ssize_t N,
                             Py_ssize_t C, Py_ssize_t S, Py_ssize_t parts, double* part,
                             int nthreads) noexcept nogil:
    """part[3*u : 3*u+3] = (count, mean, m2) of unit u = c * parts + k."""
    cdef Py_ssize_t u, c, k, n0, n1
    cdef Moments acc
    for u in prange(C * parts, num_threads=nthreads, schedule="static"):
        c = u // parts
        k = u % parts
        n0 = part_start(N, parts, k)
        n1 = part_start(N, parts, k + 1)
        acc = moments_zero()
        strided_runs_moments(x + n0 * xsn + c * xsc, n1 - n0, xsn, S, &acc)
        part[3 * u] = acc.count
        part[3 * u + 1] = acc.mean
        part[3 * u + 2] = acc.m2


cdef void cf_merge_parts(const double* part, Py_ssize_t C, Py_ssize_t parts, double* mean,
                         double* m2) noexcept nogil:
    cdef Py_ssize_t c
    cdef Moments acc
    for c in range(C):
        acc = moments_zero()
        merge_partials(part + 3 * c * parts, part + 3 * c * parts + 1, part + 3 * c * parts + 2,
                       parts, 3, &acc)
        mean[c] = acc.mean
        m2[c] = acc.m2


def moments_channels_first(const floating[::view.strided, ::view.strided, ::view.contiguous] x,
                           double[::1] mean, double[::1] m2, int nthreads):
    """Per-channel mean and M2 (sum of squared deviations) of x; returns the count."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t parts = channel_parts(N, C)
    cdef double* part = <double*>malloc(3 * C * parts * sizeof(double))
    if part == NULL:
        raise MemoryError()
    with nogil:
        cf_partial_moments(&x[0, 0, 0], x.strides[0] // sizeof(floating),
                           x.strides[1] // sizeof(floating), N, C, S, parts, part, nthreads)
        cf_merge_parts(part, C, parts, &mean[0], &m2[0])
    free(part)
    return N * S


cdef void cf_affine(const floating* x, Py_ssize_t xsn, Py_ssize_t xsc, floating* y,
                    Py_ssize_t ysn, Py_ssize_t ysc, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                    const floating* shift, const floating* scale, const floating* offset,
                    int nthreads) noexcept nogil:
    cdef Py_ssize_t i, n, c
    for i in prange(N * C, num_threads=nthreads, schedule="static"):
        n = i // C
        c = i % C
        affine_run(x + n * xsn + c * xsc, y + n * ysn + c * ysc, S, shift[c], scale[c], offset[c])


def normalize_channels_first(const floating[::view.strided, ::view.strided, ::view.contiguous] x,
                             const double[::1] mean, const double[::1] var, double eps,
                             const floating[::1] weight, const floating[::1] bias,
                             floating[::view.strided, ::view.strided, ::view.contiguous] y,
                             int nthreads):
    """y = weight * (x - mean) / sqrt(var + eps) + bias, per channel."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2], c
    cdef floating* coef = <floating*>malloc(3 * C * sizeof(floating))
    cdef const floating* w = opt_ptr(weight)
    cdef const floating* b = opt_ptr(bias)
    if coef == NULL:
        raise MemoryError()
    with nogil:
        for c in range(C):
            normalize_coefficients(mean[c], inverse_std(var[c], eps), param_or(w, c, 1.0),
                                   param_or(b, c, 0.0), &coef[c], &coef[C + c], &coef[2 * C + c])
        cf_affine(&x[0, 0, 0], x.strides[0] // sizeof(floating), x.strides[1] // sizeof(floating),
                  &y[0, 0, 0], y.strides[0] // sizeof(floating), y.strides[1] // sizeof(floating),
                  N, C, S, coef, coef + C, coef + 2 * C, nthreads)
    free(coef)


cdef void cf_train_by_channel(const floating* x, Py_ssize_t xsn, Py_ssize_t xsc, floating* y,
                              Py_ssize_t ysn, Py_ssize_t ysc, Py_ssize_t N, Py_ssize_t C,
                              Py_ssize_t S, const floating* w, const floating* b, double eps,
                              floating* coef, double* mean, double* var, double* invstd,
                              int nthreads) noexcept nogil:
    """Statistics, then normalisation, one channel at a time: the channel's
    N*S values are still in cache when they are normalised."""
    cdef Py_ssize_t c, n
    cdef Moments acc
    for c in prange(C, num_threads=nthreads, schedule="static"):
        acc = moments_zero()
        strided_runs_moments(x + c * xsc, N, xsn, S, &acc)
        mean[c] = acc.mean
        var[c] = acc.m2 / acc.count
        invstd[c] = inverse_std(var[c], eps)
        normalize_coefficients(acc.mean, invstd[c], param_or(w, c, 1.0), param_or(b, c, 0.0),
                               &coef[c], &coef[C + c], &coef[2 * C + c])
        for n in range(N):
            affine_run(x + n * xsn + c * xsc, y + n * ysn + c * ysc, S,
                       coef[c], coef[C + c], coef[2 * C + c])


cdef void cf_train_by_part(const floating* x, Py_ssize_t xsn, Py_ssize_t xsc, floating* y,
                           Py_ssize_t ysn, Py_ssize_t ysc, Py_ssize_t N, Py_ssize_t C,
                           Py_ssize_t S, Py_ssize_t parts, const floating* w, const floating* b,
                           double eps, floating* coef, double* part, double* mean, double* var,
                           double* invstd, int nthreads) noexcept nogil:
    """Few channels: each is split over N, partial statistics merged, then normalised."""
    cdef Py_ssize_t c
    cf_partial_moments(x, xsn, xsc, N, C, S, parts, part, nthreads)
    cf_merge_parts(part, C, parts, mean, var)
    for c in range(C):
        var[c] = var[c] / <double>(N * S)
        invstd[c] = inverse_std(var[c], eps)
        normalize_coefficients(mean[c], invstd[c], param_or(w, c, 1.0), param_or(b, c, 0.0),
                               &coef[c], &coef[C + c], &coef[2 * C + c])
    cf_affine(x, xsn, xsc, y, ysn, ysc, N, C, S, coef, coef + C, coef + 2 * C, nthreads)


def train_forward_channels_first(
        const floating[::view.strided, ::view.strided, ::view.contiguous] x,
        const floating[::1] weight, const floating[::1] bias, double eps,
        floating[::view.strided, ::view.strided, ::view.contiguous] y,
        double[::1] mean, double[::1] var, double[::1] invstd, int nthreads):
    """Training forward: batch statistics (mean, biased var, invstd) and y."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t parts = channel_parts(N, C)
    cdef floating* coef = <floating*>malloc(3 * C * sizeof(floating))
    cdef double* part = <double*>malloc(3 * C * parts * sizeof(double))
    cdef const floating* w = opt_ptr(weight)
    cdef const floating* b = opt_ptr(bias)
    if coef == NULL or part == NULL:
        free(coef)
        free(part)
        raise MemoryError()
    with nogil:
        if parts == 1:
            cf_train_by_channel(&x[0, 0, 0], x.strides[0] // sizeof(floating),
                                x.strides[1] // sizeof(floating), &y[0, 0, 0],
                                y.strides[0] // sizeof(floating), y.strides[1] // sizeof(floating),
                                N, C, S, w, b, eps, coef, &mean[0], &var[0], &invstd[0], nthreads)
        else:
            cf_train_by_part(&x[0, 0, 0], x.strides[0] // sizeof(floating),
                             x.strides[1] // sizeof(floating), &y[0, 0, 0],
                             y.strides[0] // sizeof(floating), y.strides[1] // sizeof(floating),
                             N, C, S, parts, w, b, eps, coef, part, &mean[0], &var[0], &invstd[0],
                             nthreads)
    free(coef)
    free(part)


# ---------------------------------------------------------------- channels-last

cdef void cl_partial_moments(const floating* x, Py_ssize_t xs, Py_ssize_t M, Py_ssize_t C,
                             Py_ssize_t parts, floating* scratch, double* part,
                             int nthreads) noexcept nogil:
    """part[k*(2C+1) :] = (count, mean[C], m2[C]) of row range k; part zeroed by caller."""
    cdef Py_ssize_t k
    cdef double* p
    for k in prange(parts, num_threads=nthreads, schedule="static"):
        p = part + k * (2 * C + 1)
        rows_moments(x, xs, part_start(M, parts, k), part_start(M, parts, k + 1), C,
                     scratch + k * 3 * C, p, p + 1, p + 1 + C)


cdef void cl_merge_parts(const double* part, Py_ssize_t C, Py_ssize_t parts, double* mean,
                         double* m2) noexcept nogil:
    cdef Py_ssize_t c
    cdef Moments acc
    for c in range(C):
        acc = moments_zero()
        merge_partials(part, part + 1 + c, part + 1 + C + c, parts, 2 * C + 1, &acc)
        mean[c] = acc.mean
        m2[c] = acc.m2


cdef void cl_affine(const floating* x, Py_ssize_t xs, floating* y, Py_ssize_t ys, Py_ssize_t M,
                    Py_ssize_t C, const floating* shift, const floating* scale,
                    const floating* offset, int nthreads) noexcept nogil:
    cdef Py_ssize_t r
    for r in prange(M, num_threads=nthreads, schedule="static"):
        affine_row(x + r * xs, y + r * ys, C, shift, scale, offset)


cdef class _RowWork:
    """Scratch for channels-last reductions: partial results and per-part buffers."""
    cdef Py_ssize_t parts
    cdef double* part
    cdef void* scratch
    cdef void* coef

    def __cinit__(self, Py_ssize_t M, Py_ssize_t C, Py_ssize_t itemsize,
                  Py_ssize_t scratch_per_part):
        cdef Py_ssize_t i, n
        self.parts = row_parts(M)
        n = self.parts * (2 * C + 1)
        self.part = <double*>malloc(n * sizeof(double))
        self.scratch = malloc(self.parts * scratch_per_part * C * itemsize)
        self.coef = malloc(4 * C * itemsize)
        if self.part == NULL or self.scratch == NULL or self.coef == NULL:
            raise MemoryError()
        for i in range(n):
            self.part[i] = 0.0

    def __dealloc__(self):
        free(self.part)
        free(self.scratch)
        free(self.coef)


def moments_channels_last(const floating[::view.strided, ::view.contiguous] x, double[::1] mean,
                          double[::1] m2, int nthreads):
    """Per-channel mean and M2 of x; returns the count (rows)."""
    cdef Py_ssize_t M = x.shape[0], C = x.shape[1]
    cdef _RowWork work = _RowWork(M, C, sizeof(floating), 3)
    with nogil:
        cl_partial_moments(&x[0, 0], x.strides[0] // sizeof(floating), M, C, work.parts,
                           <floating*>work.scratch, work.part, nthreads)
        cl_merge_parts(work.part, C, work.parts, &mean[0], &m2[0])
    return M


def normalize_channels_last(const floating[::view.strided, ::view.contiguous] x,
                            const double[::1] mean, const double[::1] var, double eps,
                            const floating[::1] weight, const floating[::1] bias,
                            floating[::view.strided, ::view.contiguous] y, int nthreads):
    """y = weight * (x - mean) / sqrt(var + eps) + bias, per channel."""
    cdef Py_ssize_t M = x.shape[0], C = x.shape[1], c
    cdef floating* coef = <floating*>malloc(3 * C * sizeof(floating))
    cdef const floating* w = opt_ptr(weight)
    cdef const floating* b = opt_ptr(bias)
    if coef == NULL:
        raise MemoryError()
    with nogil:
        for c in range(C):
            normalize_coefficients(mean[c], inverse_std(var[c], eps), param_or(w, c, 1.0),
                                   param_or(b, c, 0.0), &coef[c], &coef[C + c], &coef[2 * C + c])
        cl_affine(&x[0, 0], x.strides[0] // sizeof(floating), &y[0, 0],
                  y.strides[0] // sizeof(floating), M, C, coef, coef + C, coef + 2 * C, nthreads)
    free(coef)


def train_forward_channels_last(const floating[::view.strided, ::view.contiguous] x,
                                const floating[::1] weight, const floating[::1] bias, double eps,
                                floating[::view.strided, ::view.contiguous] y, double[::1] mean,
                                double[::1] var, double[::1] invstd, int nthreads):
    """Training forward: batch statistics (mean, biased var, invstd) and y."""
    cdef Py_ssize_t M = x.shape[0], C = x.shape[1], c
    cdef _RowWork work = _RowWork(M, C, sizeof(floating), 3)
    cdef floating* coef = <floating*>work.coef
    cdef const floating* w = opt_ptr(weight)
    cdef const floating* b = opt_ptr(bias)
    with nogil:
        cl_partial_moments(&x[0, 0], x.strides[0] // sizeof(floating), M, C, work.parts,
                           <floating*>work.scratch, work.part, nthreads)
        cl_merge_parts(work.part, C, work.parts, &mean[0], &var[0])
        for c in range(C):
            var[c] = var[c] / <double>M
            invstd[c] = inverse_std(var[c], eps)
            normalize_coefficients(mean[c], invstd[c], param_or(w, c, 1.0), param_or(b, c, 0.0),
                                   &coef[c], &coef[C + c], &coef[2 * C + c])
        cl_affine(&x[0, 0], x.strides[0] // sizeof(floating), &y[0, 0],
                  y.strides[0] // sizeof(floating), M, C, coef, coef + C, coef + 2 * C, nthreads)


# ---------------------------------------------------------------- running statistics

def update_running_stats(floating[::1] running_mean, floating[::1] running_var,
                         const double[::1] mean, const double[::1] var, double count,
                         double momentum):
    """PyTorch's update: r <- (1 - m) r + m * batch, with the unbiased variance."""
    cdef Py_ssize_t c, C = running_mean.shape[0]
    cdef double unbias = count / (count - 1.0)
    with nogil:
        for c in range(C):
            running_mean[c] = <floating>((1.0 - momentum) * running_mean[c] + momentum * mean[c])
            running_var[c] = <floating>((1.0 - momentum) * running_var[c]
                                        + momentum * var[c] * unbias)
