"""Bad arguments of the functional API and the other entry points (cases in
bad_input_cases)."""
import numpy as np
import pytest

import cbn
import cbn.functional as F
from bad_input_cases import (BAD_X, GOOD, F32, assert_unchanged, layer_2d, raises, running,
                             snapshot)
from fake_mpi import FakeWorld


@pytest.mark.parametrize("case,x,exc", [c for c in BAD_X if c[0] not in ("ndim-5", "channels-4",
                                                                          "channels-1")],
                         ids=[c[0] for c in BAD_X if c[0] not in ("ndim-5", "channels-4",
                                                                  "channels-1")])
def test_functional_batch_norm_x(case, x, exc):
    rm, rv = running()
    if case == "ndim-3":  # any ndim >= 2 is fine functionally: use a 1-D input instead
        x, exc = np.ones(3, F32), ValueError
    if case == "float16":   # float16 x with float32 statistics is supported: break its byte order
        x = x.astype(">f2")
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
