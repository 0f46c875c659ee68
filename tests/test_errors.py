"""Bad arguments raise TypeError/ValueError naming them, and change no state."""
import copy

import numpy as np
import pytest

import cbn


def snapshot(bn):
    return copy.deepcopy(bn.__dict__)


def assert_same_state(bn, before):
    after = bn.__dict__
    assert after.keys() == before.keys()
    for key, value in before.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(after[key], value, err_msg=key)
        elif key == "_saved":
            assert (after[key] is None) == (value is None), key
        else:
            assert after[key] == value, key


def trained_layer(layout="NCHW"):
    bn = cbn.BatchNorm2d(3, layout=layout)
    rng = np.random.default_rng(0)
    shape = (2, 3, 4, 4) if layout == "NCHW" else (2, 4, 4, 3)
    bn(rng.standard_normal(shape).astype(np.float32))
    return bn


BAD_INPUTS = [
    (np.ones((2, 3, 4, 4)), TypeError, "x: expected dtype float32, got float64"),
    (np.ones((2, 3, 4, 4), np.int32), TypeError, "x: expected dtype float32, got int32"),
    (np.ones((2, 3, 4, 4), np.float16), TypeError, "x: expected dtype float32, got float16"),
    (np.ones((2, 3, 4, 4), np.complex64), TypeError, "x: expected dtype float32, got complex64"),
    (np.ones((2, 3, 4, 4), bool), TypeError, "x: expected dtype float32, got bool"),
    (np.ones((2, 3, 4, 4), object), TypeError, "x: expected dtype float32, got object"),
    ([[1.0, 2.0]], TypeError, "x: expected a numpy.ndarray, got list"),
    (3.0, TypeError, "x: expected a numpy.ndarray, got float"),
    (np.ones((2, 3, 4), np.float32), ValueError, r"x: expected a 4-D \(N, C, H, W\) array, got 3-D"),
    (np.ones((2, 4, 4, 4), np.float32), ValueError, "x: expected 3 channels on axis 1, got 4"),
    (np.ones((1, 3, 1, 1), np.float32), ValueError, "more than 1 value per channel"),
    (np.ones((0, 3, 4, 4), np.float32), ValueError, "more than 1 value per channel"),
    (np.ones((2, 3, 0, 4), np.float32), ValueError, "more than 1 value per channel"),
]


@pytest.mark.parametrize("x,exc,message", BAD_INPUTS)
def test_bad_forward_input(x, exc, message):
    bn = trained_layer()
    before = snapshot(bn)
    with pytest.raises(exc, match=message):
        bn(x)
    assert_same_state(bn, before)


def test_bad_input_in_eval_mode_still_checked():
    bn = trained_layer().eval()
    with pytest.raises(ValueError, match="expected 3 channels"):
        bn(np.ones((2, 5, 4, 4), np.float32))


def test_one_value_per_channel_is_fine_in_eval():
    bn = trained_layer().eval()
    y = bn(np.ones((1, 3, 1, 1), np.float32))
    assert y.shape == (1, 3, 1, 1)


def test_empty_batch_in_eval_returns_empty_output():
    bn = trained_layer().eval()
    y = bn(np.ones((0, 3, 4, 4), np.float32))
    assert y.shape == (0, 3, 4, 4) and y.dtype == np.float32


def test_nhwc_channel_error_names_last_axis():
    bn = trained_layer("NHWC")
    with pytest.raises(ValueError, match="x: expected 3 channels on axis 3, got 4"):
        bn(np.ones((2, 4, 4, 4), np.float32))


def test_backward_before_forward():
    bn = cbn.BatchNorm2d(3)
    with pytest.raises(ValueError, match="dy: backward needs a forward first"):
        bn.backward(np.ones((2, 3, 4, 4), np.float32))


@pytest.mark.parametrize("dy,exc,message", [
    (np.ones((2, 3, 4, 5), np.float32), ValueError, r"dy: expected shape \(2, 3, 4, 4\)"),
    (np.ones((2, 3, 4, 4)), TypeError, "dy: expected dtype float32, got float64"),
    ("dy", TypeError, "dy: expected a numpy.ndarray, got str"),
    (np.ones((2, 3, 4), np.float32), ValueError, "dy: expected a 4-D"),
])
def test_bad_backward_input(dy, exc, message):
    bn = trained_layer()
    bn.backward(np.ones((2, 3, 4, 4), np.float32))
    before = snapshot(bn)
    with pytest.raises(exc, match=message):
        bn.backward(dy)
    assert_same_state(bn, before)


@pytest.mark.parametrize("kwargs,exc,message", [
    (dict(num_features=0), ValueError, "num_features: expected a positive int, got 0"),
    (dict(num_features=2.0), TypeError, "num_features: expected a positive int, got float"),
    (dict(num_features=True), TypeError, "num_features: expected a positive int, got bool"),
    (dict(num_features=3, eps=-1e-5), ValueError, "eps: expected a finite float >= 0, got -1e-05"),
    (dict(num_features=3, eps=float("nan")), ValueError, "eps: expected a finite float >= 0"),
    (dict(num_features=3, eps="1e-5"), TypeError, "eps: expected a finite float >= 0, got str"),
    (dict(num_features=3, momentum=1.5), ValueError, r"momentum: expected a float in \[0, 1\] or None"),
    (dict(num_features=3, momentum=-0.1), ValueError, "momentum: expected"),
    (dict(num_features=3, momentum=float("inf")), ValueError, "momentum: expected"),
    (dict(num_features=3, affine=1), TypeError, "affine: expected True or False, got int"),
    (dict(num_features=3, track_running_stats="yes"), TypeError, "track_running_stats: expected"),
    (dict(num_features=3, dtype=np.float16), TypeError, "dtype: expected float32 or float64, got float16"),
    (dict(num_features=3, dtype=np.int64), TypeError, "dtype: expected float32 or float64, got int64"),
    (dict(num_features=3, dtype="nonsense"), TypeError, "dtype: expected float32 or float64"),
    (dict(num_features=3, layout="NWHC"), ValueError, r"layout: expected one of \('NCHW', 'NHWC'\), got 'NWHC'"),
    (dict(num_features=3, layout=None), ValueError, "layout: expected one of"),
])
def test_bad_constructor_arguments(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        cbn.BatchNorm2d(**kwargs)


def test_attribute_assignment_is_validated():
    bn = trained_layer()
    before = snapshot(bn)
    with pytest.raises(ValueError, match="momentum"):
        bn.momentum = 2.0
    with pytest.raises(ValueError, match="eps"):
        bn.eps = -1.0
    with pytest.raises(TypeError, match="weight: expected dtype float32, got float64"):
        bn.weight = np.ones(3)
    with pytest.raises(ValueError, match=r"running_var: expected shape \(3,\), got \(4,\)"):
        bn.running_var = np.ones(4, np.float32)
    with pytest.raises(TypeError, match="mode: expected True or False"):
        bn.train("eval")
    assert_same_state(bn, before)
    no_affine = cbn.BatchNorm2d(3, affine=False)
    with pytest.raises(AttributeError, match="weight: the layer was built with affine=False"):
        no_affine.weight = np.ones(3, np.float32)


def test_valid_attribute_assignment_is_used():
    bn = cbn.BatchNorm1d(2, dtype=np.float64)
    bn.weight = np.array([2.0, 3.0])
    bn.momentum = None
    x = np.array([[1.0, 2.0], [3.0, 6.0]])
    np.testing.assert_allclose(bn(x), [[-2, -3], [2, 3]], atol=1e-4)
