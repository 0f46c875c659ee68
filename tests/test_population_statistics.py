"""cbn.precise_statistics: exact population statistics over a block of forwards."""
import numpy as np
import pytest

import cbn
from helpers import random_input


def batches(rng, sizes, tail, dtype=np.float64):
    return [random_input(rng, (n,) + tail, dtype, scale=1 + i, offset=i) for i, n in enumerate(sizes)]


@pytest.mark.parametrize("training", [True, False])
def test_equals_the_statistics_of_the_concatenated_data(training, rng):
    bn1 = cbn.BatchNorm2d(3, dtype=np.float64).train(training)
    bn2 = cbn.BatchNorm1d(5, dtype=np.float64, layout="NHWC").train(training)
    xs1 = batches(rng, [7, 2, 13, 4], (3, 4, 5))
    xs2 = batches(rng, [3, 9, 2, 11], (6, 5))
    with cbn.precise_statistics(bn1, bn2):
        for a, b in zip(xs1, xs2):
            bn1(a)
            bn2(b)
    all1, all2 = np.concatenate(xs1), np.concatenate(xs2)
    np.testing.assert_allclose(bn1.running_mean, all1.mean(axis=(0, 2, 3)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bn1.running_var, all1.var(axis=(0, 2, 3), ddof=1), rtol=1e-12)
    np.testing.assert_allclose(bn2.running_mean, all2.mean(axis=(0, 1)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bn2.running_var, all2.var(axis=(0, 1), ddof=1), rtol=1e-12)
    assert int(bn1.num_batches_tracked) == 0  # the block does not count as training


def test_float32_large_offset_population_is_exact(rng):
    bn = cbn.BatchNorm2d(2)
    xs = [(1e4 + rng.standard_normal((n, 2, 6, 6))).astype(np.float32) for n in (5, 8, 3)]
    with cbn.precise_statistics(bn):
        for x in xs:
            bn(x)
    full = np.concatenate(xs).astype(np.float64)
    np.testing.assert_allclose(bn.running_var, full.var(axis=(0, 2, 3), ddof=1), rtol=1e-6)


def test_an_exception_leaves_the_statistics_untouched(rng):
    bn = cbn.BatchNorm1d(4, dtype=np.float64)
    for x in batches(rng, [6, 6], (4,)):
        bn(x)
    before = bn.state_dict()
    with pytest.raises(KeyError):
        with cbn.precise_statistics(bn):
            bn(random_input(rng, (8, 4), np.float64, offset=50))
            raise KeyError("stop")
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    assert bn._collector is None


def test_a_layer_that_saw_nothing_is_an_error_and_changes_nothing(rng):
    a, b = cbn.BatchNorm1d(2), cbn.BatchNorm1d(2)
    before = a.state_dict()
    with pytest.raises(ValueError, match="no batch"):
        with cbn.precise_statistics(a, b):
            a(random_input(rng, (4, 2), np.float32, offset=9))
    for key, value in a.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


@pytest.mark.parametrize("layers,exc,message", [
    (lambda: ("bn",), TypeError, "expected cbn batch-norm layers"),
    (lambda: (cbn.BatchNorm1d(2, track_running_stats=False),), ValueError, "no running statistics"),
    (lambda: (lambda bn: (bn, bn))(cbn.BatchNorm1d(2)), ValueError, "more than once"),
])
def test_bad_layers(layers, exc, message):
    with pytest.raises(exc, match=message):
        with cbn.precise_statistics(*layers()):
            pass


def test_nesting_the_same_layer_is_refused():
    bn = cbn.BatchNorm1d(2)
    with cbn.precise_statistics(bn):
        with pytest.raises(ValueError, match="already collecting"):
            with cbn.precise_statistics(bn):
                pass
        bn(np.ones((3, 2), np.float32) * np.arange(3, dtype=np.float32)[:, None])


def test_an_eval_forward_in_place_collects_its_input_not_its_output(rng):
    x = random_input(rng, (40, 3), np.float64, scale=3.0, offset=5.0)
    bn = cbn.BatchNorm1d(3, dtype=np.float64).eval()
    with cbn.precise_statistics(bn):
        inout = x.copy()
        bn(inout, out=inout)   # normalises over the input
    np.testing.assert_allclose(bn.running_mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, x.var(axis=0, ddof=1), rtol=1e-12)
