"""The fixed-point encoding SyncBatchNorm sums across processes: exact to
one unit per value, and the same bits whatever order the limbs are added in."""
from fractions import Fraction

import numpy as np
import pytest

from cbn import _fixed_point as fp


def exact(values):
    return sum((Fraction(float(v)) for v in values), Fraction(0))


@pytest.mark.parametrize("top", [-900, -40, 0, 7, 60, 1000])
def test_sums_in_any_order_decode_to_the_same_bits_within_one_unit_per_value(rng, top):
    P, n = 13, 7
    scale = np.ldexp(1.0, top - 1)
    # every sign and magnitude the window holds, down to far below its unit
    values = rng.uniform(-1, 1, (P, n)) * scale * np.ldexp(1.0, -rng.integers(0, 120, (P, n)))
    values[0, 0] = np.nextafter(np.ldexp(1.0, top), 0)   # the largest value the window holds
    values[1, 0] = -values[0, 0]
    tops = np.full(n, top)
    encoded = []
    for row in values:
        limbs, outside = fp.encode(row, tops)
        assert limbs.dtype == np.int64 and not outside.any()
        encoded.append(limbs)
    results = set()
    for _ in range(5):
        order = rng.permutation(P)
        total = np.zeros((2, n), np.int64)
        for r in order:
            total += encoded[r]
        results.add(fp.decode(total, tops).tobytes())
    assert len(results) == 1
    decoded = np.frombuffer(results.pop())
    unit = Fraction(float(fp.unit(top)))
    for j in range(n):
        truth = exact(values[:, j])
        # P units of the fixed point, and the decode's own rounding to float64
        assert abs(Fraction(float(decoded[j])) - truth) <= P * unit + abs(truth) * Fraction(2) ** -52


def test_values_outside_the_window_or_not_finite_are_marked_and_sent_as_zero():
    values = np.array([1.0, -1.0, 0.5, np.nan, np.inf, -np.inf, 0.0])
    limbs, outside = fp.encode(values, np.zeros(7, np.int64))
    assert outside.tolist() == [True, True, False, True, True, True, False]
    assert not limbs[:, outside].any()
    assert fp.decode(limbs, np.zeros(7, np.int64))[2] == 0.5


def test_windows_hold_their_bound_with_room_to_spare():
    bounds = np.array([0.0, 1e-300, 3.0, 4.0, 1e300])
    tops = fp.top_for(bounds)
    assert np.all(bounds * 2 < np.ldexp(1.0, tops))
    assert tops[0] == fp.LOWEST_TOP
    assert np.all(fp.unit(tops) > 0) and np.all(np.isfinite(np.ldexp(1.0, tops)))


def test_the_limbs_of_the_most_processes_cannot_overflow():
    limbs, _ = fp.encode(np.array([np.nextafter(1.0, 0), -np.nextafter(1.0, 0)]),
                         np.zeros(2, np.int64))
    assert np.abs(limbs).max() <= 2 ** fp.LIMB_BITS
    assert fp.MAX_PROCESSES * (2 ** fp.LIMB_BITS + 1) < 2 ** 63
