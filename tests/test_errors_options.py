"""Bad constructor options, attribute values and state dicts (cases in
bad_input_cases)."""
import numpy as np
import pytest

import cbn
from bad_input_cases import (LAYERS, F32, assert_unchanged, layer_2d, raises, snapshot)


BAD_OPTIONS = [
    ("num_features-0", dict(num_features=0), ValueError, "num_features"),
    ("num_features-float", dict(num_features=3.0), TypeError, "num_features"),
    ("num_features-bool", dict(num_features=True), TypeError, "num_features"),
    ("eps-negative", dict(eps=-1e-5), ValueError, "eps"),
    ("eps-nan", dict(eps=float("nan")), ValueError, "eps"),
    ("eps-inf", dict(eps=float("inf")), ValueError, "eps"),
    ("eps-string", dict(eps="1e-5"), TypeError, "eps"),
    ("momentum-negative", dict(momentum=-0.1), ValueError, "momentum"),
    ("momentum-above-1", dict(momentum=1.5), ValueError, "momentum"),
    ("momentum-nan", dict(momentum=float("nan")), ValueError, "momentum"),
    ("momentum-inf", dict(momentum=float("-inf")), ValueError, "momentum"),
    ("momentum-string", dict(momentum="0.1"), TypeError, "momentum"),
    ("affine-int", dict(affine=1), TypeError, "affine"),
    ("track-string", dict(track_running_stats="no"), TypeError, "track_running_stats"),
    ("bias_correction-none", dict(bias_correction=None), TypeError, "bias_correction"),
    ("dtype-longdouble", dict(dtype=np.longdouble), TypeError, "dtype"),
    ("dtype-big-endian-float16", dict(dtype=">f2"), TypeError, "dtype"),
    ("param_dtype-float64", dict(param_dtype=np.float64), TypeError, "param_dtype"),
    ("param_dtype-float16", dict(dtype=np.float16, param_dtype=np.float16), TypeError,
     "param_dtype"),
    ("param_dtype-garbage", dict(param_dtype="nonsense"), TypeError, "param_dtype"),
    ("dtype-int", dict(dtype=np.int32), TypeError, "dtype"),
    ("dtype-garbage", dict(dtype="nonsense"), TypeError, "dtype"),
    ("layout-lower", dict(layout="nchw"), ValueError, "layout"),
    ("layout-typo", dict(layout="NWHC"), ValueError, "layout"),
    ("layout-none", dict(layout=None), ValueError, "layout"),
    ("layout-int", dict(layout=3), ValueError, "layout"),
    ("activation", dict(activation="gelu"), ValueError, "activation"),
    ("virtual_batch_size-0", dict(virtual_batch_size=0), ValueError, "virtual_batch_size"),
    ("virtual_batch_size-float", dict(virtual_batch_size=2.0), ValueError, "virtual_batch_size"),
]


@pytest.mark.parametrize("case,kwargs,exc,arg", BAD_OPTIONS, ids=[c[0] for c in BAD_OPTIONS])
@pytest.mark.parametrize("cls", [cbn.BatchNorm1d, cbn.BatchNorm2d, cbn.BatchNorm3d,
                                 cbn.BatchRenorm2d])
def test_layer_constructor(cls, case, kwargs, exc, arg):
    kwargs = dict(kwargs)
    C = kwargs.pop("num_features", 3)
    raises(exc, arg, lambda: cls(C, **kwargs))


@pytest.mark.parametrize("case,kwargs,exc,arg", [
    ("rmax-below-1", dict(rmax=0.5), ValueError, "rmax"),
    ("rmax-inf", dict(rmax=float("inf")), ValueError, "rmax"),
    ("dmax-negative", dict(dmax=-1.0), ValueError, "dmax"),
    ("dmax-string", dict(dmax="5"), TypeError, "dmax"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_renorm_limits(case, kwargs, exc, arg):
    raises(exc, arg, lambda: cbn.BatchRenorm2d(3, **kwargs))
    bn = cbn.BatchRenorm2d(3)
    before = snapshot(bn)
    raises(exc, arg, lambda: setattr(bn, arg, kwargs[arg]))
    assert_unchanged(bn, before)


SETTERS = [
    ("eps", -1.0, ValueError), ("eps", None, TypeError), ("momentum", 2.0, ValueError),
    ("momentum", "0.5", TypeError), ("weight", np.ones(3), TypeError),
    ("weight", np.ones(4, F32), ValueError), ("weight", [1.0, 1.0, 1.0], TypeError),
    ("bias", np.ones((3, 1), F32), ValueError), ("running_mean", np.ones(3, np.int64), TypeError),
    ("running_var", np.ones(6, F32)[::2], ValueError),
    ("running_var", np.broadcast_to(np.ones(1, F32), (3,)), ValueError),
    ("num_batches_tracked", -1, ValueError), ("num_batches_tracked", 1.5, ValueError),
    ("num_batches_tracked", "3", TypeError), ("virtual_batch_size", -4, ValueError),
]


@pytest.mark.parametrize("attr,value,exc", SETTERS, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(SETTERS)])
def test_attribute_assignment(attr, value, exc):
    bn = layer_2d()
    before = snapshot(bn)
    raises(exc, attr, lambda: setattr(bn, attr, value))
    assert_unchanged(bn, before)


@pytest.mark.parametrize("attr,kwargs", [("weight", dict(affine=False)),
                                         ("running_mean", dict(track_running_stats=False)),
                                         ("num_batches_tracked", dict(track_running_stats=False))])
def test_assigning_what_the_layer_was_built_without(attr, kwargs):
    bn = cbn.BatchNorm2d(3, **kwargs)
    before = snapshot(bn)
    raises(AttributeError, attr, lambda: setattr(bn, attr, np.ones(3, F32)))
    assert_unchanged(bn, before)


def test_train_mode_must_be_a_bool():
    bn = layer_2d()
    before = snapshot(bn)
    raises(TypeError, "mode", lambda: bn.train("eval"))
    assert_unchanged(bn, before)


# ---------------------------------------------------------------- state dicts


def good_state():
    return {"weight": np.ones(3), "bias": np.zeros(3), "running_mean": np.zeros(3),
            "running_var": np.ones(3), "num_batches_tracked": np.array(2)}


BAD_STATES = [
    ("missing", lambda d: d.pop("running_var"), ValueError, "state_dict"),
    ("extra", lambda d: d.update(extra=np.ones(3)), ValueError, "state_dict"),
    ("shape", lambda d: d.update(weight=np.ones(4)), ValueError, "state_dict['weight']"),
    ("shape-2d", lambda d: d.update(bias=np.ones((3, 1))), ValueError, "state_dict['bias']"),
    ("negative-var", lambda d: d.update(running_var=-np.ones(3)), ValueError, "state_dict['running_var']"),
    ("nan-mean", lambda d: d.update(running_mean=np.array([0, np.nan, 0])), ValueError,
     "state_dict['running_mean']"),
    ("inf-weight", lambda d: d.update(weight=np.array([1, np.inf, 1])), ValueError, "state_dict['weight']"),
    ("strings", lambda d: d.update(bias=np.array(["a", "b", "c"])), TypeError, "state_dict['bias']"),
    ("complex", lambda d: d.update(bias=np.ones(3, complex)), TypeError, "state_dict['bias']"),
    ("ragged", lambda d: d.update(bias=[[1], [1, 2]]), TypeError, "state_dict['bias']"),
    ("count-negative", lambda d: d.update(num_batches_tracked=-1), ValueError,
     "state_dict['num_batches_tracked']"),
    ("count-fraction", lambda d: d.update(num_batches_tracked=1.5), ValueError,
     "state_dict['num_batches_tracked']"),
    ("count-vector", lambda d: d.update(num_batches_tracked=np.ones(2)), ValueError,
     "state_dict['num_batches_tracked']"),
]


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("case,change,exc,arg", BAD_STATES, ids=[c[0] for c in BAD_STATES])
def test_load_state_dict(layer, case, change, exc, arg):
    bn = LAYERS[layer]()
    before = snapshot(bn)
    state = good_state()
    change(state)
    raises(exc, arg, lambda: bn.load_state_dict(state))
    assert_unchanged(bn, before)


def test_load_state_dict_needs_a_mapping():
    bn = layer_2d()
    before = snapshot(bn)
    raises(TypeError, "state_dict", lambda: bn.load_state_dict([("weight", np.ones(3))]))
    assert_unchanged(bn, before)
