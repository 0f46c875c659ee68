"""The fixed-point sums SyncBatchNorm exchanges (cbn._sums): exact to one
unit per value, and the same bits whatever order the limbs are added in."""
from fractions import Fraction

import numpy as np
import pytest

from cbn import _sums


def encode(values, tops):
    limbs = np.empty((2,) + values.shape, np.int64)
    return limbs, _sums.encode(values, tops, limbs)


def decode(limbs, tops):
    values = np.empty(tops.shape)
    _sums.decode(limbs, tops, values)
    return values


def unit(top):
    """One unit of the low limb in window top, exactly."""
    return Fraction(2) ** (int(top) - 2 * _sums.LIMB_BITS)


@pytest.mark.parametrize("top", [-1022, -900, -40, 0, 7, 60, 1000])
def test_sums_in_any_order_decode_to_the_same_bits_within_one_unit_per_value(rng, top):
    P, n = 13, 7
    scale = np.ldexp(1.0, top - 1)
    # every sign and magnitude the window holds, down to far below its unit
    values = rng.uniform(-1, 1, (P, 1, n)) * scale * np.ldexp(1.0, -rng.integers(0, 120, (P, 1, n)))
    values[0, 0, 0] = np.nextafter(np.ldexp(1.0, top), 0)   # the largest value the window holds
    values[1, 0, 0] = -values[0, 0, 0]
    tops = np.full((1, n), top, np.int32)
    encoded = []
    for row in values:
        limbs, outside = encode(row, tops)
        assert not outside
        encoded.append(limbs)
    results = set()
    for _ in range(5):
        total = np.zeros((2, 1, n), np.int64)
        for r in rng.permutation(P):
            total += encoded[r]
        results.add(decode(total, tops).tobytes())
    assert len(results) == 1
    decoded = np.frombuffer(results.pop())
    for j in range(n):
        truth = sum((Fraction(float(v)) for v in values[:, 0, j]), Fraction(0))
        # P units of the fixed point, and the decode's own rounding to float64
        assert abs(Fraction(float(decoded[j])) - truth) <= P * unit(top) + abs(truth) / 2 ** 52


@pytest.mark.parametrize("bad", [2.0, -1.0, np.nan, np.inf, -np.inf])
def test_a_value_outside_its_window_or_not_finite_is_reported_and_sent_as_zero(bad):
    values = np.array([[0.5, bad, -0.25]])
    limbs, outside = encode(values, np.zeros((1, 3), np.int32))
    assert outside and not limbs[:, 0, 1].any()
    np.testing.assert_array_equal(decode(limbs, np.zeros((1, 3), np.int32)), [[0.5, 0.0, -0.25]])
    assert not encode(values[:, [0, 2]], np.zeros((1, 2), np.int32))[1]


def test_windows_hold_their_bound_with_room_to_spare():
    bounds = np.array([[0.0, 5e-324, 1e-300, 3.0, 4.0, 1e300, np.finfo(np.float64).max]])
    tops = np.empty(bounds.shape, np.int32)
    _sums.tops_for(bounds, 0, tops)
    assert np.all([Fraction(float(b)) * 2 < Fraction(2) ** int(t)
                   for b, t in zip(bounds[0, :-1], tops[0, :-1])])
    # the largest float64 has no room to spare: 2**1024 bounds every finite one
    assert tops[0, 0] == _sums.LOWEST_TOP and tops[0, -1] == _sums.HIGHEST_TOP
    more = np.empty_like(tops)
    _sums.tops_for(bounds, 8, more)
    np.testing.assert_array_equal(more, np.minimum(tops + 8, _sums.HIGHEST_TOP))


@pytest.mark.parametrize("top, values", [
    (_sums.HIGHEST_TOP, [np.finfo(np.float64).max, -np.finfo(np.float64).max, 1e300, -3.0]),
    (_sums.LOWEST_TOP, [5e-324, -5e-324, 1.5e-308, -2.2e-308]),   # subnormals and the smallest
    (-1000, [2.0 ** -1001, -(2.0 ** -1001) * 1.5, 1e-305, -7e-310]),
])
def test_the_extreme_windows_encode_every_value_they_hold(top, values):
    values = np.array([values])
    tops = np.full(values.shape, top, np.int32)
    limbs, outside = encode(values, tops)
    assert not outside
    assert limbs[0].min() >= -2 ** _sums.LIMB_BITS and limbs[0].max() <= 2 ** _sums.LIMB_BITS
    assert limbs[1].min() >= 0 and limbs[1].max() <= 2 ** _sums.LIMB_BITS
    decoded = decode(limbs, tops)
    for v, d in zip(values[0], decoded[0]):
        assert abs(Fraction(float(d)) - Fraction(float(v))) <= unit(top) + abs(Fraction(float(v))) / 2 ** 52


def test_the_limbs_of_the_most_processes_add_up_without_overflow():
    values = np.array([[np.nextafter(1.0, 0), -np.nextafter(1.0, 0), -0.75]])
    tops = np.zeros(values.shape, np.int32)
    limbs, _ = encode(values, tops)
    total = limbs * _sums.MAX_PROCESSES   # every process sent the same: no int64 wrapped
    np.testing.assert_array_equal(total // _sums.MAX_PROCESSES, limbs)
    np.testing.assert_allclose(decode(total, tops), values * _sums.MAX_PROCESSES, rtol=2 ** -52)


def test_a_frame_fingerprint_changes_with_any_one_of_its_values(rng):
    shift, tops = rng.standard_normal(6), rng.integers(-20, 20, (2, 6)).astype(np.int32)
    nonfinite = np.zeros(6, np.uint8)
    seen = {_sums.fingerprint(shift, tops, nonfinite)}
    for change in range(6):
        s, t, n = shift.copy(), tops.copy(), nonfinite.copy()
        s[change] = np.nextafter(s[change], np.inf)
        seen.add(_sums.fingerprint(s, tops, nonfinite))
        t[change % 2, change] += 1
        seen.add(_sums.fingerprint(shift, t, nonfinite))
        n[change] = 1
        seen.add(_sums.fingerprint(shift, tops, n))
    swapped = shift[[1, 0, 2, 3, 4, 5]]
    seen.add(_sums.fingerprint(swapped, tops, nonfinite))
    assert len(seen) == 1 + 3 * 6 + 1


def test_statistics_of_sums_match_the_algebra(rng):
    C, n = 6, 40.0
    x = rng.standard_normal((int(n), C)) * 3 + 100
    shift = x[0] + 0.5
    sums = np.array([(x - shift).sum(axis=0), ((x - shift) ** 2).sum(axis=0)])
    tops = np.empty((2, C), np.int32)
    _sums.tops_for(np.abs(sums), 0, tops)
    mean, m2, errors, following = np.empty(C), np.empty(C), np.empty((2, C)), np.empty_like(tops)
    nonfinite = np.zeros(C, np.uint8)
    nonfinite[3] = 1

    def statistics(shift, sums):
        return _sums.statistics(shift, n, 1.0, sums, tops, nonfinite, 2.0 ** -44, 8, mean, m2,
                                errors, following)

    assert statistics(shift, sums)
    keep = nonfinite == 0
    np.testing.assert_allclose(mean[keep], x.mean(axis=0)[keep], rtol=1e-15)
    np.testing.assert_allclose(m2[keep], ((x - x.mean(axis=0)) ** 2).sum(axis=0)[keep],
                               rtol=1e-12)
    assert np.isnan(mean[3]) and np.isnan(m2[3]) and not errors[:, 3].any()
    assert np.all(errors[:, keep] > 0)   # bounds on the errors of mean and M2
    # the next exchange's windows: 8 bits above sqrt(n M2) and M2
    assert np.all(np.ldexp(1.0, following[:, keep] - 9) > [np.sqrt(n * m2[keep]), m2[keep]])
    assert np.all(np.ldexp(1.0, following[:, keep] - 10) <= [np.sqrt(n * m2[keep]), m2[keep]])
    # far from the mean, the same values lose precision: not precise
    far = shift - 1e9
    sums = np.array([(x - far).sum(axis=0), ((x - far) ** 2).sum(axis=0)])
    _sums.tops_for(np.abs(sums), 0, tops)
    assert not statistics(far, sums)
