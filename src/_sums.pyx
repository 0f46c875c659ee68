# cython: language_level=3
"""Exact sums of float64 values across processes, as fixed-point integers,
and the statistics SyncBatchNorm draws from them (see cbn/_exchange.py).

An MPI Allreduce of floats adds in an order the library chooses, and need
not give every process the same bits. Integer addition is exact and
associative, so a sum of integers is the same on every process whatever
the order. A value v in window ``top`` (|v| < 2**top, the same top on every
process) travels as two int64 limbs of LIMB_BITS bits, the digits of its
fraction of the window::

    v / 2**top ~= high * 2**-43 + low * 2**-86,   |high| <= 2**43, 0 <= low <= 2**43

to within one unit of 2**-86 (of 2**(top - 86) in v), however small the
window: top goes down to -1022, whose unit 2**-1108 is below what a float64
holds. Summed over up to MAX_PROCESSES processes the limbs stay below 2**63.

Every decision the exchange takes reads what these functions compute from
totals that every process holds: the extension is built without floating-
point contraction (setup.py), so that a build with FMA decides as one
without.

Every function loops over channels once; arrays are C-contiguous, (k, C)
with k the number of fields (S1, S2 and, with virtual batches, W).
"""
from libc.math cimport fabs, ldexp, sqrt
from libc.string cimport memcpy

LIMB_BITS = 43
MAX_PROCESSES = 2 ** 19
# 2**top is a normal float64 (or, at 1024, the bound of every finite one)
LOWEST_TOP = -1022
HIGHEST_TOP = 1024
ROUNDING = 2.0 ** -52

cdef enum:
    LIMB = 43
    LOWEST = -1022
    HIGHEST = 1024
cdef long long LOW_MASK = (1LL << 43) - 1
cdef double EPS = 2.0 ** -52
cdef double LIMB_SCALE = 2.0 ** 43
cdef double LIMB_UNIT = 2.0 ** -43


cdef inline double pow2(int e) noexcept nogil:
    """2**e, from its bits for e in [-1022, 1024] (1024: inf): ldexp is a
    library call, several times slower; ldexp below."""
    cdef unsigned long long bits
    cdef double d
    if e < -1022:
        return ldexp(1.0, e)
    bits = <unsigned long long>(e + 1023) << 52
    memcpy(&d, &bits, sizeof(double))
    return d


cdef inline double scale_by(double v, int e) noexcept nogil:
    """v * 2**e, exact unless the result leaves float64's range, for e in
    [-1024, 1024] (where 2**e alone is not a normal float64: in two steps)."""
    if e > 1023 or e < -1022:
        return v * pow2(e // 2) * pow2(e - e // 2)
    return v * pow2(e)


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


cdef inline double unit(int top) noexcept nogil:
    """2**(top - 86), the error of one encoded value: 0 when below float64's range."""
    return pow2(top) * LIMB_UNIT * LIMB_UNIT


cdef inline bint encode_value(double v, int top, long long* high, long long* low) noexcept nogil:
    """high, low = the limbs of v in window top; v is sent as 0 when not
    finite or not below 2**top in magnitude, and then returns True."""
    cdef double y = scale_by(v, -top) * LIMB_SCALE   # |y| < 2**43: exact, or a tiny v's rounding
    cdef bint outside = not fabs(y) < LIMB_SCALE     # NaN compares False
    if outside:
        y = 0.0
    high[0] = floor_small(y)
    low[0] = <long long>rint_small((y - <double>high[0]) * LIMB_SCALE)   # y - high in [0, 1): exact
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


cdef inline unsigned long long mixed(unsigned long long word, unsigned long long position) noexcept nogil:
    """word at position through splitmix64's finaliser: no linear relation
    between words, or between a word and its position, survives it."""
    cdef unsigned long long h = word + position * 0x9E3779B97F4A7C15ULL
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ULL
    h = (h ^ (h >> 27)) * 0x94D049BB133111EBULL
    return h ^ (h >> 31)


def fingerprint(const double[::1] shift, const int[:, ::1] tops,
                const unsigned char[::1] nonfinite):
    """A 64-bit hash of a frame's bits, the sum of its words' (independent:
    no chain of multiplications) mixed with their positions: differs when
    frames differ, almost surely."""
    cdef Py_ssize_t i, j, n = 1
    cdef unsigned long long h = 0, word
    for i in range(shift.shape[0]):
        memcpy(&word, &shift[i], sizeof(double))
        h += mixed(word, n)
        n += 1
    for i in range(tops.shape[0]):
        for j in range(tops.shape[1]):
            h += mixed(<unsigned int>tops[i, j], n)
            n += 1
    for i in range(nonfinite.shape[0]):
        h += mixed(nonfinite[i], n)
        n += 1
    return mixed(h, n)


def decode(const long long[:, :, ::1] limbs, const int[:, ::1] tops, double[:, ::1] values):
    """values = the value of summed limbs, the same bits wherever the limbs are the same."""
    cdef Py_ssize_t i, j
    cdef long long high, low
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            high = limbs[0, i, j] + (limbs[1, i, j] >> LIMB)   # carry: 0 <= low < 2**43 after
            low = limbs[1, i, j] & LOW_MASK
            values[i, j] = scale_by((<double>high + <double>low * LIMB_UNIT) * LIMB_UNIT,
                                    tops[i, j])


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
    frame, bounds on the errors of the mean, M2 (and W) in errors, and the
    windows of the next exchange; returns whether every channel meets
    target (its own relative precision).

    With n = count and K = shift:

        mean = K + S1 / n,        M2 = S2 - S1 * (S1 / n)   (at least 0)

    Error bounds: one fixed-point unit per process that sent values
    (senders), each process's rounding of its values (S2_r, W_r: up to 3
    roundings each; S1_r = n_r (m_r - K): one, and |S1_r| summed over
    processes is at most sqrt(n S2) by Cauchy-Schwarz), and the decoding's
    own rounding of the totals. From them

        err(mean) = err(S1) / n + 2**-52 |mean|
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
        err1 = senders * unit(tops[0, c]) + EPS * (sqrt(count * fabs(s2)) + fabs(s1))
        err2 = senders * unit(tops[1, c]) + 4 * EPS * fabs(s2)
        if nonfinite[c]:
            mean[c] = m2[c] = float("nan")
            for i in range(k):
                errors[i, c] = 0.0
                next_tops[i, c] = LOWEST + headroom_bits
            continue
        shifted = s1 / count
        mean[c] = shift[c] + shifted
        m2[c] = max(s2 - s1 * shifted, 0.0)
        err_m2 = err2 + (2 * fabs(s1) * err1 + err1 * err1) * per_value + EPS * fabs(s2)
        errors[0, c] = err1 * per_value + EPS * fabs(mean[c])
        errors[1, c] = err_m2
        floor_ = count * (EPS * mean[c]) * (EPS * mean[c])
        resolvable = max(m2[c], floor_)
        if not (err_m2 <= target * resolvable and err1 <= target * sqrt(resolvable * count)):
            precise = False
        next_tops[0, c] = window(sqrt(count * m2[c]), headroom_bits)
        next_tops[1, c] = window(m2[c], headroom_bits)
        if k == 3:
            errors[2, c] = senders * unit(tops[2, c]) + 4 * EPS * fabs(sums[2, c])
            if not errors[2, c] <= target * max(sums[2, c], floor_):
                precise = False
            next_tops[2, c] = window(sums[2, c], headroom_bits)
    return precise
