"""Bad input, tried systematically over every public entry point.

Each case raises TypeError/ValueError (AttributeError for attributes a layer
was built without) whose message starts with the argument's name and says
what was expected and what came, and leaves every piece of state exactly as
it was. Read-only and strided inputs must work.
"""
import re

import numpy as np
import pytest

import cbn
import cbn.functional as F
from fake_mpi import FakeWorld

F32 = np.float32
GOOD = np.arange(2 * 3 * 4 * 4, dtype=F32).reshape(2, 3, 4, 4) % 7 + 0.5


def layer_2d(**kwargs):
    bn = cbn.BatchNorm2d(3, **kwargs)
    bn(GOOD)  # trained once: running statistics and saved state are not the initial ones
    return bn


LAYERS = {
    "BatchNorm2d": layer_2d,
    "BatchRenorm2d": lambda: (lambda bn: (bn(GOOD), bn)[1])(cbn.BatchRenorm2d(3)),
    "SyncBatchNorm": lambda: (lambda bn: (bn(GOOD), bn)[1])(
        cbn.SyncBatchNorm(3, FakeWorld(1).comm(0))),
    "BatchNorm2d-relu": lambda: layer_2d(activation="relu"),
}

# (id, bad x for a 3-channel NCHW 2-D float32 layer in training mode, exception)
BAD_X = [
    ("ndim-3", np.ones((2, 3, 4), F32), ValueError),
    ("ndim-5", np.ones((2, 3, 4, 4, 1), F32), ValueError),
    ("channels-4", np.ones((2, 4, 4, 4), F32), ValueError),
    ("channels-1", np.ones((2, 1, 4, 4), F32), ValueError),
    ("int32", np.ones((2, 3, 4, 4), np.int32), TypeError),
    ("int64", np.ones((2, 3, 4, 4), np.int64), TypeError),
    ("uint8", np.ones((2, 3, 4, 4), np.uint8), TypeError),
    ("bool", np.ones((2, 3, 4, 4), bool), TypeError),
    ("complex64", np.ones((2, 3, 4, 4), np.complex64), TypeError),
    ("object", np.ones((2, 3, 4, 4), object), TypeError),
    ("float16", np.ones((2, 3, 4, 4), np.float16), TypeError),
    ("float64", np.ones((2, 3, 4, 4), np.float64), TypeError),
    ("big-endian", np.ones((2, 3, 4, 4), ">f4"), TypeError),
    ("list", GOOD.tolist(), TypeError),
    ("float", 1.0, TypeError),
    ("none", None, TypeError),
    ("string", "x", TypeError),
    ("masked", np.ma.masked_array(GOOD, mask=GOOD > 3), TypeError),
    ("empty-batch", np.ones((0, 3, 4, 4), F32), ValueError),
    ("one-value-per-channel", np.ones((1, 3, 1, 1), F32), ValueError),
    ("zero-height", np.ones((2, 3, 0, 4), F32), ValueError),
    ("zero-width", np.ones((2, 3, 4, 0), F32), ValueError),
]


def snapshot(obj):
    """Copies of the arrays, the other attributes themselves (compared by identity or ==)."""
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(obj).items()}


def assert_unchanged(obj, before):
    after = vars(obj)
    assert after.keys() == before.keys()
    for key, value in before.items():
        now = after[key]
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(now, value, err_msg=key)
            assert now.dtype == value.dtype, key
        else:
            assert now is value or now == value, key


def check_message(exc_info, arg):
    message = str(exc_info.value)
    assert re.match(rf"{re.escape(arg)}(?!\w)", message), f"{message!r} should start with {arg!r}"
    assert "expected" in message and "got" in message, message


def raises(exc, arg, fn):
    with pytest.raises(exc) as info:
        fn()
    check_message(info, arg)


# ---------------------------------------------------------------- layers


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("case,x,exc", BAD_X, ids=[c[0] for c in BAD_X])
def test_layer_forward(layer, case, x, exc):
    if layer == "SyncBatchNorm" and case.startswith("ndim"):
        x = np.ones((2, 3, 4, 4, 1, 1), F32)  # it takes 2-D to 5-D inputs
    bn = LAYERS[layer]()
    before = snapshot(bn)
    raises(exc, "x", lambda: bn(x))
    assert_unchanged(bn, before)


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("case,dy,exc", [c for c in BAD_X if c[0] not in
                                         ("empty-batch", "one-value-per-channel", "zero-height",
                                          "zero-width")] + [
    ("other-shape", np.ones((3, 3, 4, 4), F32), ValueError),
    ("smaller", np.ones((2, 3, 4, 3), F32), ValueError),
], ids=lambda v: v if isinstance(v, str) else "")
def test_layer_backward(layer, case, dy, exc):
    if layer == "SyncBatchNorm" and case.startswith("ndim"):
        dy = np.ones((2, 3, 4, 4, 1, 1), F32)
    bn = LAYERS[layer]()
    bn.backward(np.ones_like(GOOD))
    before = snapshot(bn)
    raises(exc, "dy", lambda: bn.backward(dy))
    assert_unchanged(bn, before)


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 4)], ids=["empty-batch", "zero-height"])
def test_empty_input_in_eval_mode_is_not_an_error(layer, shape):
    """Eval mode needs no batch statistics: an empty input gives an empty
    output, as in PyTorch (training mode raises, above)."""
    bn = LAYERS[layer]().eval()
    running = {k: np.copy(v) for k, v in bn.state_dict().items()}
    x = np.ones(shape, F32)
    y = bn(x)
    assert y.shape == shape and y.dtype == F32
    dx = bn.backward(np.ones_like(y))
    assert dx.shape == shape
    np.testing.assert_array_equal(bn.grad_weight, np.zeros(3, F32))
    np.testing.assert_array_equal(bn.grad_bias, np.zeros(3, F32))
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, running[key])


@pytest.mark.parametrize("layer", list(LAYERS))
def test_backward_before_any_forward(layer):
    bn = {"BatchNorm2d": cbn.BatchNorm2d, "BatchRenorm2d": cbn.BatchRenorm2d,
          "BatchNorm2d-relu": cbn.BatchNorm2d,
          "SyncBatchNorm": lambda C: cbn.SyncBatchNorm(C, FakeWorld(1).comm(0))}[layer](3)
    before = snapshot(bn)
    raises(ValueError, "dy", lambda: bn.backward(np.ones_like(GOOD)))
    assert_unchanged(bn, before)


BAD_OUT = [
    ("shape", lambda x: np.empty((2, 3, 4, 5), F32), ValueError),
    ("dtype", lambda x: np.empty(x.shape), ValueError),
    ("list", lambda x: [0.0], TypeError),
    ("fortran", lambda x: np.empty(x.shape, F32, order="F"), ValueError),
    ("overlap", lambda x: x[:, :, ::-1], ValueError),
    ("read-only", lambda x: np.broadcast_to(np.empty(1, F32), x.shape), ValueError),
]


@pytest.mark.parametrize("case,make,exc", BAD_OUT, ids=[c[0] for c in BAD_OUT])
def test_layer_out(case, make, exc):
    bn = layer_2d()
    x = GOOD.copy()
    before = snapshot(bn)
    raises(exc, "out", lambda: bn(x, out=make(x)))
    assert_unchanged(bn, before)
    bn.backward(np.ones_like(x))
    before = snapshot(bn)
    raises(exc, "out", lambda: bn.backward(np.ones_like(x), out=make(bn._saved[0].view)
                                           if case == "overlap" else make(x)))
    assert_unchanged(bn, before)


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
    ("dtype-float16", dict(dtype=np.float16), TypeError, "dtype"),
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


# ---------------------------------------------------------------- functional


def running():
    return np.zeros(3, F32), np.ones(3, F32)


@pytest.mark.parametrize("case,x,exc", [c for c in BAD_X if c[0] not in ("ndim-5", "channels-4",
                                                                          "channels-1")],
                         ids=[c[0] for c in BAD_X if c[0] not in ("ndim-5", "channels-4",
                                                                  "channels-1")])
def test_functional_batch_norm_x(case, x, exc):
    rm, rv = running()
    if case == "ndim-3":  # any ndim >= 2 is fine functionally: use a 1-D input instead
        x, exc = np.ones(3, F32), ValueError
    if case in ("float64", "big-endian") or case.startswith("float16"):
        exc = TypeError
    raises(exc, "x" if case not in ("float64",) else "running_mean",
           lambda: F.batch_norm(x, rm, rv, training=True))
    np.testing.assert_array_equal(rm, running()[0])
    np.testing.assert_array_equal(rv, running()[1])


FUNCTIONAL = [
    ("rm-dtype", lambda x, rm, rv: F.batch_norm(x, rm.astype(np.float64), rv), TypeError, "running_mean"),
    ("rm-shape", lambda x, rm, rv: F.batch_norm(x, np.zeros(4, F32), np.ones(4, F32)), ValueError,
     "running_mean"),
    ("rm-list", lambda x, rm, rv: F.batch_norm(x, [0, 0, 0], rv), TypeError, "running_mean"),
    ("only-one", lambda x, rm, rv: F.batch_norm(x, rm, None), ValueError, "running_mean, running_var"),
    ("eval-without", lambda x, rm, rv: F.batch_norm(x, None, None), ValueError, "running_mean"),
    ("read-only-updated", lambda x, rm, rv: F.batch_norm(x, np.broadcast_to(rm, (3,)), rv,
                                                         training=True), ValueError, "running_mean"),
    ("weight-dtype", lambda x, rm, rv: F.batch_norm(x, rm, rv, weight=np.ones(3)), TypeError, "weight"),
    ("bias-shape", lambda x, rm, rv: F.batch_norm(x, rm, rv, bias=np.ones(2, F32)), ValueError, "bias"),
    ("momentum-none", lambda x, rm, rv: F.batch_norm(x, rm, rv, training=True, momentum=None),
     TypeError, "momentum"),
    ("momentum-big", lambda x, rm, rv: F.batch_norm(x, rm, rv, training=True, momentum=3), ValueError,
     "momentum"),
    ("eps-negative", lambda x, rm, rv: F.batch_norm(x, rm, rv, eps=-1), ValueError, "eps"),
    ("eps-nan", lambda x, rm, rv: F.batch_norm(x, rm, rv, eps=float("nan")), ValueError, "eps"),
    ("layout", lambda x, rm, rv: F.batch_norm(x, rm, rv, layout="CHWN"), ValueError, "layout"),
    ("out", lambda x, rm, rv: F.batch_norm(x, rm, rv, out=np.empty(3, F32)), ValueError, "out"),
    ("forward-eps", lambda x, rm, rv: F.batch_norm_forward(x, eps=-2.0), ValueError, "eps"),
    ("forward-x", lambda x, rm, rv: F.batch_norm_forward(x.astype(int)), TypeError, "x"),
    ("forward-one", lambda x, rm, rv: F.batch_norm_forward(x[:1, :, :1, :1]), ValueError, "x"),
    ("backward-dy-shape", lambda x, rm, rv: F.batch_norm_backward(x[:1], x, np.zeros(3), np.ones(3)),
     ValueError, "dy"),
    ("backward-dy-dtype", lambda x, rm, rv: F.batch_norm_backward(x.astype(np.float64), x, np.zeros(3),
                                                                  np.ones(3)), TypeError, "dy"),
    ("backward-mean-shape", lambda x, rm, rv: F.batch_norm_backward(x, x, np.zeros(4), np.ones(3)),
     ValueError, "mean"),
    ("backward-mean-int", lambda x, rm, rv: F.batch_norm_backward(x, x, np.zeros(3, int), np.ones(3)),
     TypeError, "mean"),
    ("backward-invstd-list", lambda x, rm, rv: F.batch_norm_backward(x, x, np.zeros(3), [1, 1, 1]),
     TypeError, "invstd"),
    ("backward-weight", lambda x, rm, rv: F.batch_norm_backward(x, x, np.zeros(3), np.ones(3),
                                                                weight=np.ones(5, F32)), ValueError,
     "weight"),
    ("backward-out-x", lambda x, rm, rv: F.batch_norm_backward(x, x, np.zeros(3), np.ones(3), out=x),
     ValueError, "out"),
]


@pytest.mark.parametrize("case,call,exc,arg", FUNCTIONAL, ids=[c[0] for c in FUNCTIONAL])
def test_functional(case, call, exc, arg):
    x = GOOD.copy()
    rm, rv = running()
    raises(exc, arg, lambda: call(x, rm, rv))
    np.testing.assert_array_equal(x, GOOD)
    np.testing.assert_array_equal(rm, running()[0])
    np.testing.assert_array_equal(rv, running()[1])


# ---------------------------------------------------------------- other entry points


@pytest.mark.parametrize("value,exc", [(0, ValueError), (-3, ValueError), (1.5, TypeError),
                                       ("2", TypeError), (True, TypeError), ([2], TypeError)])
def test_set_num_threads(value, exc, threads):
    threads(2)
    before = cbn.get_num_threads()
    raises(exc, "n", lambda: cbn.set_num_threads(value))
    assert cbn.get_num_threads() == before


@pytest.mark.parametrize("call,exc,arg", [
    (lambda bn: cbn.fold_conv(np.ones((3, 2, 3, 3), int), None, bn), TypeError, "weight"),
    (lambda bn: cbn.fold_conv(np.ones((4, 2, 3, 3)), None, bn), ValueError, "weight"),
    (lambda bn: cbn.fold_conv(np.ones((3, 2, 3, 3)), np.ones(2), bn), ValueError, "bias"),
    (lambda bn: cbn.fold_linear(np.ones((3, 2)), "b", bn), TypeError, "bias"),
    (lambda bn: cbn.fold_linear(np.ones((3, 2)), None, None), TypeError, "bn"),
], ids=["weight-int", "weight-channels", "bias-shape", "bias-type", "bn-none"])
def test_folding(call, exc, arg):
    bn = layer_2d()
    before = snapshot(bn)
    raises(exc, arg, lambda: call(bn))
    assert_unchanged(bn, before)


@pytest.mark.parametrize("layers,exc", [(("bn",), TypeError), ((None,), TypeError)])
def test_precise_statistics(layers, exc):
    raises(exc, "layers", lambda: cbn.precise_statistics(*layers).__enter__())


@pytest.mark.parametrize("items,exc", [(["w"], TypeError), ([np.ones(3, int)], TypeError),
                                       ([np.broadcast_to(np.ones(1), (3,))], ValueError),
                                       ([cbn.BatchNorm1d(2)], ValueError)])
def test_allreduce_gradients(items, exc):
    raises(exc, "layers_or_arrays", lambda: cbn.allreduce_gradients(items, FakeWorld(1).comm(0)))


# ---------------------------------------------------------------- what must work


def good_variants():
    x = GOOD.copy()
    readonly = x.copy()
    readonly.flags.writeable = False
    wide = np.zeros((4, 3, 4, 4), F32)
    wide[::2] = x
    return {"read-only": readonly, "fortran": np.asfortranarray(x), "batch-strided": wide[::2],
            "negative-stride": x[::-1].copy()[::-1], "last-axis-reversed": x[..., ::-1].copy()[..., ::-1],
            "channels-last-stored": np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)}


@pytest.mark.parametrize("variant", list(good_variants()))
def test_views_and_read_only_inputs_work_everywhere(variant):
    x = good_variants()[variant]
    dy = good_variants()[variant]
    close = dict(rtol=1e-6, atol=1e-6)
    for name, make in LAYERS.items():
        ref_layer, bn = make(), make()
        np.testing.assert_allclose(bn(x), ref_layer(GOOD), **close, err_msg=name)
        np.testing.assert_allclose(bn.backward(dy), ref_layer.backward(GOOD), rtol=1e-5, atol=1e-5)
    rm, rv = running()
    np.testing.assert_allclose(F.batch_norm(x, rm, rv, training=True),
                               F.batch_norm(GOOD, *running(), training=True), **close)
    y, mean, invstd = F.batch_norm_forward(x)
    np.testing.assert_allclose(F.batch_norm_backward(dy, x, mean, invstd)[0],
                               F.batch_norm_backward(GOOD, GOOD, mean, invstd)[0], rtol=1e-5, atol=1e-5)
    bn = layer_2d()
    bn.load_state_dict({k: (v.copy() if v.ndim == 0 else np.asfortranarray(v[::-1][::-1]))
                        for k, v in bn.state_dict().items()})
