"""state_dict / load_state_dict: PyTorch's keys, strict loading, checked values."""
import numpy as np
import pytest

import cbn
from helpers import random_input


def trained(rng, **kwargs):
    bn = cbn.BatchNorm2d(3, **kwargs)
    for _ in range(3):
        bn(random_input(rng, (4, 3, 5, 5), bn.dtype))
    if bn.affine:
        bn.weight[...] = rng.standard_normal(3)
        bn.bias[...] = rng.standard_normal(3)
    return bn


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("track", [True, False])
def test_keys_follow_pytorch(affine, track, rng):
    bn = trained(rng, affine=affine, track_running_stats=track)
    keys = (["weight", "bias"] if affine else []) + (
        ["running_mean", "running_var", "num_batches_tracked"] if track else [])
    assert list(bn.state_dict()) == keys


def test_round_trip_restores_behaviour(rng):
    bn = trained(rng)
    state = bn.state_dict()
    other = cbn.BatchNorm2d(3)
    other.load_state_dict(state)
    x = random_input(rng, (2, 3, 5, 5), np.float32)
    np.testing.assert_array_equal(other.eval()(x), bn.eval()(x))
    assert int(other.num_batches_tracked) == 3


def test_state_dict_holds_copies(rng):
    bn = trained(rng)
    state = bn.state_dict()
    state["running_mean"][...] = 99
    assert not np.any(bn.running_mean == 99)


def test_loading_keeps_array_identity_and_converts_dtype(rng):
    bn = cbn.BatchNorm2d(3)
    rm = bn.running_mean
    bn.load_state_dict({"weight": [1.0, 2.0, 3.0], "bias": (0, 0, 1), "running_mean": np.arange(3.0),
                        "running_var": np.full(3, 2.0), "num_batches_tracked": np.array(7)})
    assert bn.running_mean is rm and rm.dtype == np.float32
    np.testing.assert_array_equal(rm, [0, 1, 2])
    np.testing.assert_array_equal(bn.weight, [1, 2, 3])
    assert int(bn.num_batches_tracked) == 7 and bn.num_batches_tracked.dtype == np.int64


def good_state():
    return {"weight": np.ones(3), "bias": np.zeros(3), "running_mean": np.zeros(3),
            "running_var": np.ones(3), "num_batches_tracked": np.array(2)}


@pytest.mark.parametrize("change,exc,message", [
    (lambda d: d.pop("running_var"), ValueError, r"missing \['running_var'\]"),
    (lambda d: d.update(extra=np.ones(3)), ValueError, r"unexpected \['extra'\]"),
    (lambda d: d.update(weight=np.ones(4)), ValueError, r"state_dict\['weight'\]: expected shape \(3,\), got \(4,\)"),
    (lambda d: d.update(running_var=-np.ones(3)), ValueError, "running_var'\\]: expected values >= 0"),
    (lambda d: d.update(running_mean=np.array([0, np.nan, 0])), ValueError, "expected finite values"),
    (lambda d: d.update(bias=np.array(["a", "b", "c"])), TypeError, "expected a real numeric array"),
    (lambda d: d.update(bias=np.ones(3, complex)), TypeError, "expected a real numeric array"),
    (lambda d: d.update(num_batches_tracked=-1), ValueError, "non-negative integer"),
    (lambda d: d.update(num_batches_tracked=1.5), ValueError, "non-negative integer"),
    (lambda d: d.update(num_batches_tracked=np.ones(2)), ValueError, "expected a scalar"),
])
def test_bad_state_dict_changes_nothing(change, exc, message, rng):
    bn = trained(rng)
    before = bn.state_dict()
    state = good_state()
    change(state)
    with pytest.raises(exc, match=message):
        bn.load_state_dict(state)
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_non_mapping_is_rejected():
    with pytest.raises(TypeError, match="state_dict: expected a mapping, got list"):
        cbn.BatchNorm2d(3).load_state_dict([1, 2])


def test_non_strict_loads_what_is_there(rng):
    bn = trained(rng)
    bn.load_state_dict({"running_mean": np.full(3, 5.0), "extra": 1}, strict=False)
    np.testing.assert_array_equal(bn.running_mean, [5, 5, 5])
