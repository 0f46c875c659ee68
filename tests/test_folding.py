"""fold_linear / fold_conv against the unfused eval-mode computation."""
import numpy as np
import pytest

import cbn


def trained_bn(cls, C, rng, dtype=np.float64, **kwargs):
    bn = cls(C, dtype=dtype, **kwargs)
    bn.weight[...] = rng.uniform(0.5, 2, C)
    bn.bias[...] = rng.standard_normal(C)
    bn.running_mean[...] = rng.standard_normal(C)
    bn.running_var[...] = rng.uniform(0.2, 3, C)
    return bn.eval()


def conv2d(x, w, b=None):
    """Valid cross-correlation, (N, Cin, H, W) * (Cout, Cin, kh, kw)."""
    windows = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(2, 3))
    y = np.einsum("nchwij,ocij->nohw", windows, w)
    return y if b is None else y + b[None, :, None, None]


@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_linear(with_bias, rng):
    W = rng.standard_normal((6, 4))
    b = rng.standard_normal(6) if with_bias else None
    bn = trained_bn(cbn.BatchNorm1d, 6, rng)
    x = rng.standard_normal((10, 4))
    unfused = bn(x @ W.T + (0 if b is None else b))
    W2, b2 = cbn.fold_linear(W, b, bn)
    np.testing.assert_allclose(x @ W2.T + b2, unfused, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("cls", [cbn.BatchNorm2d, cbn.BatchRenorm2d])
def test_fold_conv(cls, with_bias, rng):
    W = rng.standard_normal((5, 3, 3, 2))
    b = rng.standard_normal(5) if with_bias else None
    bn = trained_bn(cls, 5, rng)
    x = rng.standard_normal((2, 3, 8, 7))
    unfused = bn(conv2d(x, W, b))
    W2, b2 = cbn.fold_conv(W, b, bn)
    np.testing.assert_allclose(conv2d(x, W2, b2), unfused, rtol=1e-11, atol=1e-11)


def test_fold_conv_without_affine_and_in_float32(rng):
    W = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    bn = cbn.BatchNorm2d(4, affine=False).eval()
    bn.running_mean[...] = [1, 2, 3, 4]
    bn.running_var[...] = [1, 4, 9, 16]
    W2, b2 = cbn.fold_conv(W, None, bn)
    assert W2.dtype == np.float32 and b2.dtype == np.float32
    expected = W / np.sqrt(np.array([1, 4, 9, 16]) + 1e-5)[:, None, None, None]
    np.testing.assert_allclose(W2, expected, rtol=1e-6)
    np.testing.assert_allclose(b2, -np.array([1, 2, 3, 4]) / np.sqrt(np.array([1, 4, 9, 16]) + 1e-5),
                               rtol=1e-6)


def test_folding_uses_the_debiased_running_statistics(rng):
    bn = cbn.BatchNorm1d(3, bias_correction=True, dtype=np.float64)
    bn(rng.standard_normal((8, 3)) * 2 + 5)
    W = rng.standard_normal((3, 2))
    x = rng.standard_normal((4, 2))
    W2, b2 = cbn.fold_linear(W, None, bn)
    np.testing.assert_allclose(x @ W2.T + b2, bn.eval()(x @ W.T), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("call,exc,message", [
    (lambda bn: cbn.fold_linear(np.ones((4, 2)), None, bn), ValueError, "expected 3 output channels"),
    (lambda bn: cbn.fold_linear(np.ones((3, 2, 1)), None, bn), ValueError, r"expected a 2-D \(C, in\)"),
    (lambda bn: cbn.fold_conv(np.ones((3, 2)), None, bn), ValueError, "at least 3 dimensions"),
    (lambda bn: cbn.fold_linear(np.ones((3, 2)), np.ones(4), bn), ValueError, r"bias: expected shape \(3,\)"),
    (lambda bn: cbn.fold_linear(np.ones((3, 2), int), None, bn), TypeError, "weight: expected a float"),
    (lambda bn: cbn.fold_linear(np.ones((3, 2)), None, "bn"), TypeError, "bn: expected a cbn"),
    (lambda bn: cbn.fold_linear(np.ones((3, 2)), None, cbn.BatchNorm1d(3, track_running_stats=False)),
     ValueError, "nothing fixed to fold"),
    (lambda bn: cbn.fold_linear(np.ones((3, 2)), None, cbn.BatchNorm1d(3, activation="relu")),
     ValueError, "cannot be folded"),
])
def test_fold_errors(call, exc, message):
    with pytest.raises(exc, match=message):
        call(cbn.BatchNorm1d(3))
