# cython: language_level=3
"""Exact sums of float64 values across processes, as fixed-point integers,
and the statistics SyncBatchNorm draws from them (see cbn/_exchange.py).

An MPI Allreduce of floats adds in an order the library chooses, and need
not give every process the same bits. Integer addition is exact and
associative, so a sum of integers is the same on every process whatever
the order. A value v in window ``top`` (|v| < 2**top, the same top on every
process) travels as two int64 limbs of LIMB_BITS bits::

    v ~= high * 2**(top - 43) + low * 2**(top - 86),   0 <= low <= 2**43

to within one unit of 2**(top - 86). Summed over up to MAX_PROCESSES
processes the limbs stay below 2**63: |high| <= 2**43 * 2**19.

Every function loops over channels once; arrays are C-contiguous, (k, C)
with k the number of fields (S1, S2 and, with virtual batches, W).
"""
from libc.math cimport fabs, sqrt
from libc.string cimport memcpy

LIMB_BITS = 43
MAX_PROCESSES = 2 ** 19
# a window wholly in float64's normal range, its lowest unit included
LOWEST_TOP = -1022 + 2 * 43
HIGHEST_TOP = 1024
ROUNDING = 2.0 ** -52

cdef enum:
    LIMB = 43
    LOWEST = -1022 + 2 * 43
    HIGHEST = 1024
cdef long long LOW_MASK = (1LL << 43) - 1
cdef double EPS = 2.0 ** -52


cdef inline double pow2(int e) noexcept nogil:
    """2**e for e in [-1022, 1024] (1024: inf), from its bits: ldexp is a
    library call, several times slower, and every exponent here is in range."""
    cdef unsigned long long bits = <unsigned long long>(e + 1023) << 52
    cdef double d
    memcpy(&d, &bits, sizeof(double))
    return d


cdef inline int exponent_of(double x) noexcept nogil:
    """e with x < 2**e <= 2x for a positive normal x (frexp's exponent),
    from its bits; -1022 for a subnormal x."""
    cdef unsigned long long bits
    memcpy(&bits, &x, sizeof(double))
    return <int>((bits >> 52) & 0x7FF) - 1022


cdef inline long long floor_small(double x) noexcept nogil:
    """floor(x) for |x| < 2**62 (the library's floor is a call without SSE4.1)."""
    cdef long long t = <long long>x   # truncated
    return t - (t > x)


cdef inline double rint_small(double x) noexcept nogil:
    """x rounded to the nearest integer, ties to even, for 0 <= x < 2**52:
    adding 2**52 leaves no fraction bits (round to nearest, the default mode;
    without -ffast-math the compiler keeps both operations)."""
    return (x + 4503599627370496.0) - 4503599627370496.0


cdef inline bint encode_value(double v, int top, long long* high, long long* low) noexcept nogil:
    """high, low = the limbs of v in window top; v is sent as 0 when not
    finite or not below 2**top in magnitude, and then returns True."""
    cdef bint outside = not fabs(v) < pow2(top)   # NaN compares False
    cdef double rest
    if outside:
        v = 0.0
    high[0] = floor_small(v * pow2(LIMB - top))                 # |high| <= 2**43
    rest = v - <double>high[0] * pow2(top - LIMB)               # in [0, 2**(top - 43)): exact
    low[0] = <long long>rint_small(rest * pow2(2 * LIMB - top))   # in [0, 2**43]
    return outside


def encode(const double[:, ::1] values, const int[:, ::1] tops, long long[:, :, ::1] limbs):
    """limbs[0], limbs[1] = the high and low limbs of values in windows tops;
    returns whether a value was not finite or outside its window (sent as 0)."""
    cdef Py_ssize_t i, j
    cdef bint outside = False
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            outside |= encode_value(values[i, j], tops[i, j], &limbs[0, i, j], &limbs[1, i, j])
    return outside


def encode_shard(double count, const double[::1] mean, const double[::1] m2,
                 const double[::1] within, const double[::1] shift, const int[:, ::1] tops,
                 const unsigned char[::1] nonfinite, long long[:, :, ::1] limbs):
    """The limbs of one shard's shifted sums, per channel c with d = mean - shift:

        S1 = count d,    S2 = M2 + (count d) d,    W = within (virtual batches)

    (tops has 3 rows when within is given, else 2 and within is empty).
    Channels marked nonfinite are sent as 0; returns whether another value
    was not finite or outside its window."""
    cdef Py_ssize_t c
    cdef double d, s1
    cdef bint outside = False
    for c in range(mean.shape[0]):
        if nonfinite[c]:
            d = 0.0
            s1 = 0.0
        else:
            d = mean[c] - shift[c]
            s1 = count * d
        outside |= encode_value(s1, tops[0, c], &limbs[0, 0, c], &limbs[1, 0, c])
        outside |= encode_value(0.0 if nonfinite[c] else m2[c] + s1 * d, tops[1, c],
                                &limbs[0, 1, c], &limbs[1, 1, c])
        if tops.shape[0] == 3:
            outside |= encode_value(0.0 if nonfinite[c] else within[c], tops[2, c],
                                    &limbs[0, 2, c], &limbs[1, 2, c])
    return outside


def fingerprint(const double[::1] shift, const int[:, ::1] tops,
                const unsigned char[::1] nonfinite):
    """A 64-bit sum of the words of a frame weighted by odd numbers (so that
    no reordering keeps it), modulo 2**64: differs when frames differ,
    almost surely."""
    cdef Py_ssize_t i, j, n = 0
    cdef unsigned long long h = 0, word
    for i in range(shift.shape[0]):
        memcpy(&word, &shift[i], sizeof(double))
        h += word * <unsigned long long>(2 * n + 1)
        n += 1
    for i in range(tops.shape[0]):
        for j in range(tops.shape[1]):
            h += <unsigned long long>(<unsigned int>tops[i, j]) * <unsigned long long>(2 * n + 1)
            n += 1
    for i in range(nonfinite.shape[0]):
        h += <unsigned long long>nonfinite[i] * <unsigned long long>(2 * n + 1)
        n += 1
    return h


def decode(const long long[:, :, ::1] limbs, const int[:, ::1] tops, double[:, ::1] values):
    """values = the value of summed limbs, the same bits wherever the limbs are the same."""
    cdef Py_ssize_t i, j
    cdef long long high, low
    cdef int top
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            top = tops[i, j]
            high = limbs[0, i, j] + (limbs[1, i, j] >> LIMB)   # carry: 0 <= low < 2**43
            low = limbs[1, i, j] & LOW_MASK
            values[i, j] = <double>high * pow2(top - LIMB) + <double>low * pow2(top - 2 * LIMB)


def tops_for(const double[:, ::1] bounds, int headroom_bits, int[:, ::1] tops):
    """tops = the windows that hold every |v| <= bounds (finite, >= 0), with
    a factor of 2 to spare for the rounding of whatever computed the bound,
    and headroom_bits more."""
    cdef Py_ssize_t i, j
    for i in range(bounds.shape[0]):
        for j in range(bounds.shape[1]):
            tops[i, j] = window(bounds[i, j], headroom_bits)


cdef inline int window(double bound, int headroom_bits) noexcept nogil:
    cdef int top = LOWEST + headroom_bits
    if bound > 0:
        top = exponent_of(bound) + 1 + headroom_bits   # bound < 2**(top - 1)
    return min(max(top, <int>LOWEST), <int>HIGHEST)


def statistics(const double[::1] shift, double count, double senders,
               const double[:, ::1] sums, const int[:, ::1] tops,
               const unsigned char[::1] nonfinite, double target, int headroom_bits,
               double[::1] mean, double[::1] m2, double[:, ::1] errors, int[:, ::1] next_tops):
    """The whole batch's mean and M2 from the sums S1, S2 (and W) in their
    frame, bounds on the sums' errors, and the windows of the next
    exchange; returns whether every channel meets target (its own relative
    precision).

    With n = count and K = shift:

        mean = K + S1 / n,        M2 = S2 - S1 * (S1 / n)   (at least 0)

    Error bounds: one fixed-point unit per process that sent values
    (senders), plus each process's rounding of its values: S2_r, W_r about
    3 roundings each; S1 = sum n_r (m_r - K) at most sqrt(n S2) in
    magnitude summed over processes (Cauchy-Schwarz). From them

        err(M2) = err(S2) + (2 |S1| err(S1) + err(S1)**2) / n + 2**-52 |S2|

    Precise: err(M2) and err(W) within target times what the data can
    resolve (M2, but at least n (2**-52 mean)**2: values equal to rounding
    have no finer spread), and err(S1) / n, the mean's error beyond its
    own rounding to float64, within target times its square root per value.
    Channels marked nonfinite get NaN and are not checked.

    The next exchange, shifted by this mean, finds S2 near this M2 and S1
    within sqrt(n S2) (Cauchy-Schwarz), W near this W: next_tops hold
    those, headroom_bits above (nonfinite channels: the lowest windows).
    """
    cdef Py_ssize_t c, i, k = sums.shape[0]
    cdef double s1, s2, shifted, err1, err2, err_m2, floor_, resolvable
    cdef double per_value = 1.0 / count   # in the bounds only: the statistics divide
    cdef bint precise = True
    for c in range(sums.shape[1]):
        s1 = sums[0, c]
        s2 = sums[1, c]
        err1 = senders * pow2(tops[0, c] - 2 * LIMB) + EPS * sqrt(count * fabs(s2))
        err2 = senders * pow2(tops[1, c] - 2 * LIMB) + 3 * EPS * fabs(s2)
        errors[0, c] = err1
        errors[1, c] = err2
        if nonfinite[c]:
            mean[c] = m2[c] = float("nan")
            for i in range(k):
                next_tops[i, c] = LOWEST + headroom_bits
            if k == 3:
                errors[2, c] = 0.0
            continue
        shifted = s1 / count
        mean[c] = shift[c] + shifted
        m2[c] = max(s2 - s1 * shifted, 0.0)
        err_m2 = err2 + (2 * fabs(s1) * err1 + err1 * err1) * per_value + EPS * fabs(s2)
        floor_ = count * (EPS * mean[c]) * (EPS * mean[c])
        resolvable = max(m2[c], floor_)
        if not (err_m2 <= target * resolvable and err1 <= target * sqrt(resolvable * count)):
            precise = False
        next_tops[0, c] = window(sqrt(count * m2[c]), headroom_bits)
        next_tops[1, c] = window(m2[c], headroom_bits)
        if k == 3:
            errors[2, c] = senders * pow2(tops[2, c] - 2 * LIMB) + 3 * EPS * fabs(sums[2, c])
            if not errors[2, c] <= target * max(sums[2, c], floor_):
                precise = False
            next_tops[2, c] = window(sums[2, c], headroom_bits)
    return precise
