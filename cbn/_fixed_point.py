"""Exact sums of float64 values across processes: fixed-point integers.

An MPI Allreduce of floats adds in an order the library chooses, and need
not give every process the same bits. Integer addition is exact and
associative, so a sum of integers is the same on every process whatever
the order. A value v whose window is ``top`` (|v| < 2**top, the same top on
every process) travels as two int64 limbs of LIMB_BITS bits each::

    v ~= high * 2**(top - 43) + low * 2**(top - 86),   0 <= low <= 2**43

(to within one unit of 2**(top - 86)). Summed over up to MAX_PROCESSES
processes, the limbs stay below 2**63: high < 2**43 * 2**19.
"""
import numpy as np

LIMB_BITS = 43
MAX_PROCESSES = 2 ** 19
# a window wholly in float64's normal range, its lowest unit included
LOWEST_TOP = -1022 + 2 * LIMB_BITS
HIGHEST_TOP = 1024


def unit(top):
    """The weight of one unit of the low limb: 2**(top - 86), the
    resolution of a value in window top (and its error bound)."""
    return np.ldexp(1.0, np.asarray(top) - 2 * LIMB_BITS)


def top_for(bound):
    """A window that holds every |v| <= bound (bound >= 0, finite), with a
    factor of 2 to spare for the rounding of whatever computed bound."""
    bound = np.asarray(bound, dtype=np.float64)
    _, exponent = np.frexp(bound)   # bound < 2**exponent
    top = np.where(bound > 0, exponent + 1, LOWEST_TOP)
    return np.clip(top, LOWEST_TOP, HIGHEST_TOP).astype(np.int64)


def encode(values, top):
    """int64 (2, n) limbs [high, low] of float64 values (n,) in windows top (n,).

    Returns (limbs, outside): outside marks the values not finite or not
    below 2**top in magnitude, encoded as 0.
    """
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        outside = ~(np.abs(values) < np.ldexp(1.0, top))
    v = np.where(outside, 0.0, values)
    high = np.floor(np.ldexp(v, LIMB_BITS - top))             # |high| <= 2**43
    rest = v - np.ldexp(high, top - LIMB_BITS)                # in [0, 2**(top - 43))
    low = np.rint(np.ldexp(rest, 2 * LIMB_BITS - top))        # in [0, 2**43]
    return np.stack([high, low]).astype(np.int64), outside


def decode(limbs, top):
    """float64 (n,): the value of summed limbs (2, n), the same bits on every
    process holding the same limbs."""
    high, low = limbs
    high = high + (low >> LIMB_BITS)          # carry: 0 <= low < 2**43 after it
    low = low & ((1 << LIMB_BITS) - 1)
    return (np.ldexp(high.astype(np.float64), top - LIMB_BITS)
            + np.ldexp(low.astype(np.float64), top - 2 * LIMB_BITS))
