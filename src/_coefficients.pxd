# Per-channel coefficients of the affine maps in _elementwise.pxd, computed in
# float64 and rounded once.
from cython cimport floating
from libc.float cimport DBL_MAX, FLT_MAX
from libc.math cimport fabs, sqrt


cdef inline void store_clamped(floating* dst, double v) noexcept nogil:
    """dst = v rounded to the input type, finite values kept finite: a scale
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
    """The shift K of (x - K) * scale: the mean rounded to the input type, so
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


cdef inline void normalize_coefficients(double mean, double invstd, double gamma, double beta,
                                        double max_dev, floating* shift, floating* scale,
                                        floating* offset) noexcept nogil:
    """y = gamma * (x - mean) * invstd + beta as (x - shift) * scale + offset.

    shift is the mean rounded to the input type (see set_shift; max_dev bounds
    |x - mean|, 0 when unknown), so x - shift is exact near the mean; offset
    absorbs the rounding of the mean. A constant channel gives exactly beta.
    """
    cdef double a = gamma * invstd
    cdef floating m
    set_shift(shift, mean, max_dev)
    m = shift[0]
    store_clamped(scale, a)
    offset[0] = <floating>(beta + (<double>m - mean) * a)


cdef inline double inverse_std(double var, double eps) noexcept nogil:
    return 1.0 / sqrt(var + eps)


cdef inline void grad_input_coefficients(double mean, double invstd, double gamma, double count,
                                         double sum_dy, double sum_dy_xmu, bint batch_stats,
                                         floating* shift, floating* k_dy, floating* k_x,
                                         floating* k_0) noexcept nogil:
    """dx = dy * k_dy + (x - shift) * k_x + k_0.

    With batch statistics (training):
      dx = gamma * invstd * (dy - sum_dy / M - (x - mean) * invstd^2 * sum_dy_xmu / M)
    with fixed statistics (eval): dx = gamma * invstd * dy.
    sum_dy_xmu is sum(dy * (x - mean)) with the exact (float64) mean.
    """
    cdef floating m
    cdef double g = gamma * invstd
    cdef double c3
    set_shift(shift, mean, sqrt(count) / invstd)   # |x - mean| <= sqrt(M2 + count * eps)
    m = shift[0]
    store_clamped(k_dy, g)
    if batch_stats:
        # sums first: on a constant channel sum_dy_xmu is 0 and c3 stays 0
        # however large invstd^2 (eps -> 0)
        c3 = sum_dy_xmu / count * invstd * invstd * g
        store_clamped(k_x, -c3)
        store_clamped(k_0, -g * sum_dy / count + c3 * (mean - <double>m))
    else:
        k_x[0] = 0
        k_0[0] = 0
