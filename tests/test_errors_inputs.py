"""Bad inputs, outputs and gradients of the layers' forward and backward
(cases in bad_input_cases); views and read-only arrays work."""
import numpy as np
import pytest

import cbn
import cbn.functional as F
from bad_input_cases import (BAD_X, GOOD, LAYERS, F32, assert_unchanged, layer_2d, raises,
                             running, snapshot)
from fake_mpi import FakeWorld


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
    raises(exc, "out", lambda: bn.backward(np.ones_like(x), out=make(bn._last_forward.canon.view)
                                           if case == "overlap" else make(x)))
    assert_unchanged(bn, before)



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
