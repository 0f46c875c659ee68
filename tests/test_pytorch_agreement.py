"""Against PyTorch, the semantic contract. Skipped when torch is not installed."""
import numpy as np
import pytest

import cbn
import cbn.functional as F
from helpers import DTYPES, random_input

torch = pytest.importorskip("torch")

TORCH_LAYERS = {cbn.BatchNorm1d: torch.nn.BatchNorm1d, cbn.BatchNorm2d: torch.nn.BatchNorm2d,
                cbn.BatchNorm3d: torch.nn.BatchNorm3d}
TORCH_DTYPES = {np.float32: torch.float32, np.float64: torch.float64}


def to_nchw(a, layout):
    return a if layout == "NCHW" else np.moveaxis(a, -1, 1)


def tensor(a, layout, requires_grad=False):
    return torch.tensor(np.ascontiguousarray(to_nchw(a, layout)), requires_grad=requires_grad)


def close(dtype):
    return dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)


CASES = [(cbn.BatchNorm1d, (6, 4)), (cbn.BatchNorm1d, (3, 4, 5)), (cbn.BatchNorm2d, (3, 4, 5, 6)),
         (cbn.BatchNorm3d, (2, 4, 3, 2, 5))]


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("cls,nchw_shape", CASES)
def test_training_steps_and_eval_match_pytorch(cls, nchw_shape, layout, dtype, affine, momentum, rng):
    shape = nchw_shape if layout == "NCHW" else (nchw_shape[0],) + nchw_shape[2:] + (nchw_shape[1],)
    C = nchw_shape[1]
    ours = cls(C, momentum=momentum, affine=affine, dtype=dtype, layout=layout)
    theirs = TORCH_LAYERS[cls](C, momentum=momentum, affine=affine, dtype=TORCH_DTYPES[dtype])
    if affine:
        w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
        ours.weight[...], ours.bias[...] = w, b
        with torch.no_grad():
            theirs.weight.copy_(torch.from_numpy(w))
            theirs.bias.copy_(torch.from_numpy(b))
    for step in range(3):
        x = random_input(rng, shape, dtype, scale=1 + step, offset=step)
        dy = random_input(rng, shape, dtype)
        xt = tensor(x, layout, requires_grad=True)
        yt = theirs(xt)
        yt.backward(tensor(dy, layout))
        y = ours(x)
        dx = ours.backward(dy)
        np.testing.assert_allclose(to_nchw(y, layout), yt.detach().numpy(), **close(dtype))
        np.testing.assert_allclose(to_nchw(dx, layout), xt.grad.numpy(), **close(dtype))
        if affine:
            np.testing.assert_allclose(ours.grad_weight, theirs.weight.grad.numpy(), **close(dtype))
            np.testing.assert_allclose(ours.grad_bias, theirs.bias.grad.numpy(), **close(dtype))
            theirs.weight.grad = theirs.bias.grad = None
    for key, value in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[key], value.numpy(), **close(dtype), err_msg=key)
    ours.eval()
    theirs.eval()
    x = random_input(rng, shape, dtype)
    xt = tensor(x, layout, requires_grad=True)
    yt = theirs(xt)
    dy = random_input(rng, shape, dtype)
    yt.backward(tensor(dy, layout))
    np.testing.assert_allclose(to_nchw(ours(x), layout), yt.detach().numpy(), **close(dtype))
    np.testing.assert_allclose(to_nchw(ours.backward(dy), layout), xt.grad.numpy(), **close(dtype))
    if affine:
        np.testing.assert_allclose(ours.grad_weight, theirs.weight.grad.numpy(), **close(dtype))


def test_state_dict_moves_both_ways(rng):
    theirs = torch.nn.BatchNorm2d(3)
    theirs(torch.randn(4, 3, 5, 5) * 2 + 1)
    ours = cbn.BatchNorm2d(3)
    ours.load_state_dict(theirs.state_dict())  # tensors, read as they are
    back = torch.nn.BatchNorm2d(3)
    back.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    for key, value in theirs.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[key].numpy(), value.numpy())


def test_functional_matches_pytorch(rng):
    x = random_input(rng, (4, 3, 6), np.float64)
    rm, rv = np.zeros(3), np.ones(3)
    rmt, rvt = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    y = F.batch_norm(x, rm, rv, training=True, momentum=0.2, eps=1e-3)
    yt = torch.nn.functional.batch_norm(torch.from_numpy(x), rmt, rvt, training=True, momentum=0.2, eps=1e-3)
    np.testing.assert_allclose(y, yt.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rm, rmt.numpy(), rtol=1e-12)
    np.testing.assert_allclose(rv, rvt.numpy(), rtol=1e-12)


def test_one_value_per_channel_is_a_value_error_in_both():
    with pytest.raises(ValueError):
        torch.nn.BatchNorm1d(3)(torch.ones(1, 3))
    with pytest.raises(ValueError):
        cbn.BatchNorm1d(3)(np.ones((1, 3), np.float32))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_large_mean_float32_is_more_exact_than_pytorch(layout, rng):
    """PyTorch's channels-last statistics lose digits at |mean| >> std; ours do not.

    (Its channels-first path is exact; ours must be too.)
    """
    x = (1e4 + rng.standard_normal((16, 8, 16, 16))).astype(np.float32)
    truth = x.astype(np.float64).var(axis=(0, 2, 3), ddof=1)
    xt = torch.from_numpy(x)
    if layout == "NHWC":
        xt = xt.contiguous(memory_format=torch.channels_last)
    theirs = torch.nn.BatchNorm2d(8, momentum=1.0)
    theirs(xt)
    ours = cbn.BatchNorm2d(8, momentum=1.0, layout=layout)
    ours(x if layout == "NCHW" else np.ascontiguousarray(np.moveaxis(x, 1, -1)))
    our_err = np.abs(ours.running_var / truth - 1).max()
    their_err = np.abs(theirs.running_var.numpy() / truth - 1).max()
    assert our_err < 1e-6
    if layout == "NHWC":
        assert their_err > 10 * our_err


def test_folding_matches_pytorch(rng):
    from torch.nn.utils.fusion import fuse_conv_bn_weights
    W = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    bn = cbn.BatchNorm2d(5)
    bn.weight[...] = rng.uniform(0.5, 2, 5)
    bn.bias[...] = rng.standard_normal(5)
    bn.running_mean[...] = rng.standard_normal(5)
    bn.running_var[...] = rng.uniform(0.5, 2, 5)
    ours = cbn.fold_conv(W, b, bn)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    theirs = fuse_conv_bn_weights(t(W), t(b), t(bn.running_mean), t(bn.running_var), bn.eps,
                                  t(bn.weight), t(bn.bias))
    np.testing.assert_allclose(ours[0], theirs[0].detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours[1], theirs[1].detach().numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_fused_relu_matches_pytorch_bn_then_relu(layout, rng):
    x = random_input(rng, (4, 3, 5, 6), np.float64)
    dy = random_input(rng, (4, 3, 5, 6), np.float64)
    theirs = torch.nn.Sequential(torch.nn.BatchNorm2d(3, dtype=torch.float64), torch.nn.ReLU())
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    yt.backward(torch.from_numpy(dy))
    ours = cbn.BatchNorm2d(3, dtype=np.float64, layout=layout, activation="relu")
    xl = x if layout == "NCHW" else np.ascontiguousarray(np.moveaxis(x, 1, -1))
    y = ours(xl)
    dx = ours.backward(dy if layout == "NCHW" else np.ascontiguousarray(np.moveaxis(dy, 1, -1)))
    np.testing.assert_allclose(to_nchw(y, layout), yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(to_nchw(dx, layout), xt.grad.numpy(), rtol=1e-10, atol=1e-10)
