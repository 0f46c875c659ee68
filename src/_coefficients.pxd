# Per-channel coefficients of the affine maps the loops apply (cbn_loops.h),
# computed in float64 from a Job's tables and rounded once to the type the
# loops compute in, which compute (a null pointer of that type) selects.
from cython cimport floating
from libc.float cimport DBL_MAX, FLT_MAX
from libc.math cimport sqrt

from _job cimport Job


cdef inline void store_clamped(floating* dst, double v) noexcept nogil:
    """dst = v rounded to the type computed in, finite values kept finite: a scale
    past its range (eps -> 0 on a constant channel: invstd ~ 1/sqrt(eps))
    becomes its largest value, so (x - shift) * scale is 0, not 0 * inf = NaN."""
    cdef double limit
    if floating is float:
        limit = FLT_MAX
    else:
        limit = DBL_MAX
    dst[0] = <floating>min(max(v, -limit), limit) if v == v else <floating>v


cdef inline double param_or(const floating* p, Py_ssize_t c, double default) noexcept nogil:
    return default if p == NULL else <double>p[c]


cdef inline void set_shift(floating* shift, double mean, double max_dev) noexcept nogil:
    """The shift K of (x - K) * scale: the mean rounded to the type computed in, so
    that x - K is exact near it; 0 when x - mean could overflow the type
    (max_dev, a bound on |x - mean| such as sqrt(M2), past half its range:
    values near +-3e38 in float32). x * scale cannot overflow then, and the
    mean is within 2 sqrt(count) standard deviations of 0, so few digits are
    lost to the cancellation with the offset."""
    cdef double limit
    if floating is float:
        limit = FLT_MAX
    else:
        limit = DBL_MAX
    if max_dev > 0.5 * limit:
        shift[0] = 0
    else:
        shift[0] = <floating>mean


cdef inline void normalize_coefficients(const floating* compute, const Job* job, Py_ssize_t c,
                                        double mean, double invstd, double max_dev) noexcept nogil:
    """Channel c of y = gamma * (x - mean) * invstd + beta as (x - shift) * scale + offset,
    into job.tables.coef (3, C), gamma and beta from the tables.

    shift is the mean rounded to the type computed in (see set_shift; max_dev bounds
    |x - mean|, 0 when unknown), so x - shift is exact near the mean; offset
    absorbs the rounding of the mean. A constant channel gives exactly beta.
    """
    cdef Py_ssize_t C = job.x.C
    cdef floating* coef = <floating*>job.tables.coef
    cdef double a = param_or(<const floating*>job.tables.weight, c, 1.0) * invstd
    cdef double beta = param_or(<const floating*>job.tables.bias, c, 0.0)
    set_shift(&coef[c], mean, max_dev)
    store_clamped(&coef[C + c], a)
    coef[2 * C + c] = <floating>(beta + (<double>coef[c] - mean) * a)


cdef inline void coefficients_in_loop(floating* coef, Py_ssize_t C, Py_ssize_t c, double mean,
                                      double scale, double beta,
                                      double dev_squared) noexcept nogil:
    """normalize_coefficients' arithmetic for the loops over all channels
    (finish_training, given_stats_coefficients), from scale = gamma * invstd:
    there it is inlined without reading the Job, and set_shift's bound
    sqrt(M2) > 0.5 * limit is written dev_squared (M2) > (0.5 * limit)^2, or
    inf (the square overflows for double): no square root per channel. The
    two saved ~0.25 us of a 60x100 call (asv_bench/NOTES.md section 22)."""
    cdef double limit
    if floating is float:
        limit = FLT_MAX
    else:
        limit = DBL_MAX
    if dev_squared > (0.5 * limit) * (0.5 * limit) or dev_squared > DBL_MAX:
        coef[c] = 0
    else:
        coef[c] = <floating>mean
    coef[C + c] = <floating>min(max(scale, -limit), limit) if scale == scale else <floating>scale
    coef[2 * C + c] = <floating>(beta + (<double>coef[c] - mean) * scale)


cdef inline double inverse_std(double var, double eps) noexcept nogil:
    return 1.0 / sqrt(var + eps)


cdef inline void grad_input_coefficients(const floating* compute, const Job* job,
                                         Py_ssize_t c) noexcept nogil:
    """Channel c of dx = g * k_dy + (x - shift) * k_x + k_0, into job.tables.coef
    (4, C) [shift, k_dy, k_x, k_0], from stats [mean, invstd], gamma, and (with
    batch statistics) sums [sum(g), sum(g * (x - mean))] over count values.

    With batch statistics (training), xhat = (x - mean) * invstd and M = count:
      dx = gamma * invstd * (g - sum(g) / M - xhat * sum(g * xhat) / M)
         = g * k_dy - (x - mean) * c3 - k_dy * sum(g) / M
      with k_dy = gamma * invstd and c3 = sum(g * (x - mean)) / M * invstd^2 * k_dy;
      x - mean = (x - shift) + (shift - mean) gives k_x = -c3 and
      k_0 = -k_dy * sum(g) / M + c3 * (mean - shift).
    With fixed statistics (eval): dx = gamma * invstd * g (k_x = k_0 = 0).
    sum(g * (x - mean)) is taken with the exact (float64) mean.
    """
    cdef Py_ssize_t C = job.x.C
    cdef floating* coef = <floating*>job.tables.coef
    cdef double mean = job.tables.stats[c], invstd = job.tables.stats[C + c]
    cdef double count = job.count
    cdef double g = param_or(<const floating*>job.tables.weight, c, 1.0) * invstd
    cdef double c3
    set_shift(&coef[c], mean, sqrt(count) / invstd)   # |x - mean| <= sqrt(M2 + count * eps)
    store_clamped(&coef[C + c], g)
    if job.batch_stats:
        # sums first: on a constant channel sum(g * (x - mean)) is 0 and c3
        # stays 0 however large invstd^2 (eps -> 0)
        c3 = job.tables.sums[C + c] / count * invstd * invstd * g
        store_clamped(&coef[2 * C + c], -c3)
        store_clamped(&coef[3 * C + c],
                      -g * job.tables.sums[c] / count + c3 * (mean - <double>coef[c]))
    else:
        coef[2 * C + c] = 0
        coef[3 * C + c] = 0
