"""Edge cases a hostile user found, one test each (numbered as in the
hardening report), and the edges of the dtype's range."""
import warnings

import numpy as np
import pytest

import cbn
import cbn.functional as F
from helpers import random_input


def rng_for(seed):
    return np.random.default_rng(seed)


# 1. out= from np.empty_like(x) works for any input memory order

@pytest.mark.parametrize("order", ["fortran", "swapped-spatial", "reversed-channels-last"])
@pytest.mark.parametrize("training", [True, False])
def test_out_from_empty_like_is_accepted_for_any_memory_order(order, training):
    rng = rng_for(1)
    a = random_input(rng, (3, 4, 5, 6), np.float32)
    x = {"fortran": np.asfortranarray(a), "swapped-spatial": a.transpose(0, 1, 3, 2),
         "reversed-channels-last": np.ascontiguousarray(a.transpose(3, 2, 0, 1)).transpose(2, 3, 1, 0)
         }[order]
    dy = np.empty_like(x)
    dy[...] = random_input(rng, x.shape, np.float32)
    plain = cbn.BatchNorm2d(x.shape[1]).train(training)
    into = cbn.BatchNorm2d(x.shape[1]).train(training)
    y_expected, dx_expected = plain(np.ascontiguousarray(x)), plain.backward(np.ascontiguousarray(dy))
    out = np.empty_like(x)
    assert into(x, out=out) is out
    np.testing.assert_array_equal(out, y_expected)
    dx = np.empty_like(dy)
    assert into.backward(dy, out=dx) is dx
    np.testing.assert_array_equal(dx, dx_expected)
    assert into.backward(dy, out=dy) is dy                      # in place, as the README says
    np.testing.assert_array_equal(dy, dx_expected)


def test_out_with_another_memory_order_than_the_input_is_still_refused():
    x = random_input(rng_for(2), (2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="out: expected the memory order of the input"):
        cbn.BatchNorm2d(3)(x, out=np.empty(x.shape, np.float32, order="F"))


# 2. virtual batches are a training device

def test_eval_mode_without_running_statistics_ignores_virtual_batches():
    x = random_input(rng_for(3), (16, 3), np.float32)
    ghost = cbn.BatchNorm1d(3, track_running_stats=False, virtual_batch_size=4).eval()
    plain = cbn.BatchNorm1d(3, track_running_stats=False).eval()
    np.testing.assert_array_equal(ghost(x), plain(x))
    np.testing.assert_array_equal(ghost(x[:6]), plain(x[:6]))   # not a multiple of 4
    np.testing.assert_array_equal(ghost.backward(x[:6]), plain.backward(x[:6]))


# 3. counts outside int64's range are refused before anything changes

@pytest.mark.parametrize("count", [1e20, 2 ** 64, np.float32(1e30), 2 ** 63, np.uint64(2 ** 63),
                                   float("inf")])
def test_a_count_beyond_int64_is_refused_by_load_and_setter(count):
    bn = cbn.BatchNorm1d(3)
    bn(random_input(rng_for(4), (5, 3), np.float32))
    before = bn.state_dict()
    state = {k: v + 1 for k, v in before.items()}
    state["num_batches_tracked"] = count
    with pytest.raises(ValueError, match=r"state_dict\['num_batches_tracked'\]: expected a non-neg"):
        bn.load_state_dict(state)
    with pytest.raises(ValueError, match="num_batches_tracked: expected a non-negative"):
        bn.num_batches_tracked = count
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_the_largest_int64_count_round_trips():
    bn = cbn.BatchNorm1d(3)
    bn.num_batches_tracked = 2 ** 63 - 1
    assert int(bn.state_dict()["num_batches_tracked"]) == 2 ** 63 - 1
    bn.load_state_dict(bn.state_dict())


# 5. precise_statistics: a NaN batch does not become permanent

@pytest.mark.parametrize("training", [True, False])
def test_precise_statistics_keeps_the_entry_statistics_of_a_nan_channel(training):
    rng = rng_for(5)
    bn = cbn.BatchNorm2d(3).train(training)
    bn(random_input(rng, (4, 3, 3, 3), np.float32))
    entry = bn.state_dict()
    good = random_input(rng, (4, 3, 3, 3), np.float32)
    bad = random_input(rng, (4, 3, 3, 3), np.float32)
    bad[0, 1, 0, 0] = np.nan
    with pytest.warns(RuntimeWarning, match=r"channel\(s\) \[1\] saw NaN"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="BatchNorm2d: channel")  # the forward's own
            with cbn.precise_statistics(bn):
                bn(good)
                bn(bad)
    assert bn.running_mean[1] == entry["running_mean"][1]
    assert bn.running_var[1] == entry["running_var"][1]
    both = np.concatenate([good, bad]).astype(np.float64)
    np.testing.assert_allclose(bn.running_mean[[0, 2]], both.mean(axis=(0, 2, 3))[[0, 2]], rtol=1e-6)
    assert np.isfinite(bn.running_var).all()
    cbn.BatchNorm2d(3).load_state_dict(bn.state_dict())          # its own state reloads


# 7. unaligned parameters are refused at assignment, naming the problem

@pytest.mark.parametrize("name", ["weight", "bias", "running_mean", "running_var"])
def test_an_unaligned_parameter_is_refused_at_assignment(name):
    bn = cbn.BatchNorm1d(3)
    raw = np.zeros(3 * 4 + 1, np.uint8)[1:].view(np.float32)
    raw[...] = 1.0
    assert not raw.flags.aligned
    with pytest.raises(ValueError, match=f"{name}: expected data aligned"):
        setattr(bn, name, raw)
    bn(random_input(rng_for(7), (5, 3), np.float32))             # the layer still works


# 8. eps must be positive (at least the dtype's smallest normal number); a constant
#    channel gives exactly bias for any eps accepted

@pytest.mark.parametrize("call", [
    lambda: cbn.BatchNorm2d(3, eps=0.0),
    lambda: setattr(cbn.BatchNorm2d(3), "eps", 0.0),
    lambda: F.batch_norm(np.ones((2, 3), np.float32), None, None, training=True, eps=0.0),
    lambda: F.batch_norm_forward(np.ones((2, 3), np.float32), eps=0.0),
])
def test_eps_zero_is_refused(call):
    with pytest.raises(ValueError, match=r"eps: expected a finite float >= 1.18e-38 \(float32's "
                                          r"smallest normal number\), got 0.0"):
        call()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eps_below_the_smallest_normal_number_is_refused(dtype):
    tiny = float(np.finfo(dtype).tiny)
    cbn.BatchNorm1d(2, eps=tiny, dtype=dtype)
    with pytest.raises(ValueError, match="eps: expected a finite float >="):
        cbn.BatchNorm1d(2, eps=tiny / 2, dtype=dtype)
    with pytest.raises(ValueError, match="eps: expected a finite float >="):
        F.batch_norm_forward(np.ones((3, 2), dtype), eps=tiny / 2)


def test_denormal_data_with_the_smallest_eps_is_normalised_exactly():
    """The smallest eps accepted keeps 1/sqrt(var + eps) within float32."""
    rng = rng_for(12)
    tiny = float(np.finfo(np.float32).tiny)
    for scale in (1e-40, 1e-44):
        x = (rng.standard_normal((64, 3, 5)) * scale).astype(np.float32)
        wide = x.astype(np.float64)
        mean, var = wide.mean(axis=(0, 2), keepdims=True), wide.var(axis=(0, 2), keepdims=True)
        y = cbn.BatchNorm1d(3, eps=tiny)(x)
        np.testing.assert_allclose(y, (wide - mean) / np.sqrt(var + tiny), rtol=1e-5,
                                   atol=1e-6 * np.abs((wide - mean) / np.sqrt(var + tiny)).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eps", [1e-5, 1e-30, "tiny"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_a_constant_channel_gives_exactly_bias_for_any_eps(dtype, eps, layout):
    """README: "a constant channel gives exactly `bias`"."""
    eps = float(np.finfo(dtype).tiny) if eps == "tiny" else eps
    bn = cbn.BatchNorm2d(2, eps=eps, dtype=dtype, layout=layout)
    bn.bias[...] = [0.25, -3.0]
    shape = (3, 2, 2, 2)
    x = np.full(shape, 7.3, dtype)
    y = bn(x)
    axis = 1 if layout == "NCHW" else 3
    np.testing.assert_array_equal(np.moveaxis(y, axis, -1), np.broadcast_to(bn.bias, shape))
    dx = bn.backward(np.ones(shape, dtype))
    np.testing.assert_array_equal(dx, 0)


# 9. large finite values: the statistics stay finite and right

@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("scale", [1e19, 1.5e19])
def test_statistics_of_huge_float32_values_are_exact(layout, scale):
    rng = rng_for(9)
    shape = (6, 3, 5, 5) if layout == "NCHW" else (6, 5, 5, 3)
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    axes = (0, 2, 3) if layout == "NCHW" else (0, 1, 2)
    wide = x.astype(np.float64)
    bn = cbn.BatchNorm2d(3, layout=layout)
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # a representable variance warns about nothing
        y = bn(x)
    mean, var = wide.mean(axis=axes), wide.var(axis=axes)
    shape_c = [1, 3, 1, 1] if layout == "NCHW" else [1, 1, 1, 3]
    expected = (wide - mean.reshape(shape_c)) / np.sqrt(var.reshape(shape_c) + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * var * x.size / 3 / (x.size / 3 - 1),
                               rtol=1e-5)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_values_near_float32_max_normalise_and_say_why_the_running_var_is_kept(layout):
    rng = rng_for(10)
    shape = (4, 3, 3, 3)
    x = rng.choice(np.array([-3e38, 3e38], np.float32), size=shape)
    bn = cbn.BatchNorm2d(3, layout=layout)
    with pytest.warns(RuntimeWarning, match="would overflow float32"):
        y = bn(x)
    axes = (0, 2, 3) if layout == "NCHW" else (0, 1, 2)
    wide = x.astype(np.float64)
    mean, std = wide.mean(axis=axes, keepdims=True), wide.std(axis=axes, keepdims=True)
    np.testing.assert_allclose(y, (wide - mean) / std, rtol=1e-5)
    np.testing.assert_array_equal(bn.running_var, 1.0)      # 9e76 does not fit: kept
    assert int(bn.num_batches_tracked) == 1
    mean, invstd = F.batch_norm_forward(x, layout=layout)[1:]
    assert np.isfinite(mean).all() and np.isfinite(invstd).all()


def test_denormal_float32_inputs_match_the_float64_reference():
    rng = rng_for(11)
    x = (rng.standard_normal((8, 3, 4)) * 1e-40).astype(np.float32)
    assert np.any(np.abs(x[x != 0]) < np.finfo(np.float32).tiny)
    y = cbn.BatchNorm1d(3)(x)
    wide = x.astype(np.float64)
    mean, var = wide.mean(axis=(0, 2), keepdims=True), wide.var(axis=(0, 2), keepdims=True)
    np.testing.assert_allclose(y, (wide - mean) / np.sqrt(var + 1e-5), atol=1e-6)


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eval_backward_does_not_read_x_except_to_gate_the_relu(activation, layout, dtype):
    """Eval mode: dx = dy * weight / sqrt(running_var + eps), as PyTorch; a NaN
    or Inf in x used to reach dx through (x - mean) * 0. With the fused ReLU
    a non-finite pre-activation stops the gradient (NaN > 0 is false)."""
    rng = rng_for(13)
    shape = (6, 3, 40) if layout == "NCHW" else (6, 40, 3)
    x = random_input(rng, shape, dtype)
    x[0, 0, 0], x[1, 1, 1] = np.nan, np.inf
    dy = random_input(rng, shape, dtype)
    bn = cbn.BatchNorm1d(3, dtype=dtype, layout=layout, activation=activation).eval()
    bn.weight[...] = [0.5, -2.0, 1.5]
    bn.running_var[...] = [0.25, 4.0, 2.0]
    y = bn(x)
    dx = bn.backward(dy)
    axis = 1 if layout == "NCHW" else 2
    scale = np.expand_dims(bn.weight / np.sqrt(bn.running_var.astype(np.float64) + 1e-5),
                           (0, 2) if layout == "NCHW" else (0, 1))
    expected = dy * scale
    if activation == "relu":
        expected = np.where(y > 0, expected, 0)
    np.testing.assert_allclose(dx, expected, rtol=1e-6 if dtype == np.float32 else 1e-12)
    assert axis in (1, 2)


def test_a_training_step_at_the_largest_count_is_refused_and_changes_nothing():
    bn = cbn.BatchNorm1d(3)
    bn.num_batches_tracked = 2 ** 63 - 1
    before = bn.state_dict()
    with pytest.raises(ValueError, match="num_batches_tracked: expected a count below 2\\*\\*63 - 1"):
        bn(random_input(rng_for(14), (5, 3), np.float32))
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    bn.load_state_dict(bn.state_dict())


@pytest.mark.parametrize("name", ["running_mean", "weight"])
@pytest.mark.parametrize("training", [True, False])
def test_functional_takes_unaligned_vectors(name, training):
    x = random_input(rng_for(15), (6, 5), np.float64)
    vectors = {"running_mean": np.zeros(5), "running_var": np.ones(5), "weight": np.full(5, 2.0)}
    expected = F.batch_norm(x, *(v.copy() for v in vectors.values()), training=training)
    unaligned = np.ndarray((5,), np.float64, buffer=bytearray(41), offset=1)
    unaligned[...] = vectors[name]
    assert not unaligned.flags.aligned
    vectors[name] = unaligned
    np.testing.assert_array_equal(F.batch_norm(x, *vectors.values(), training=training), expected)
    if training and name == "running_mean":
        assert unaligned.any()                                 # updated in place


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_skewed_values_near_float32_max_normalise(layout):
    """x - mean overflows float32 here (mean 2.94e38, one value -3e38): the
    kernels then normalise x * scale + offset instead."""
    x = np.full((100, 2), 3e38, np.float32)
    x[0] = -3e38
    with pytest.warns(RuntimeWarning, match="would overflow float32"):
        y = cbn.BatchNorm1d(2, layout=layout)(x)
    wide = x.astype(np.float64)
    np.testing.assert_allclose(y, (wide - wide.mean(0)) / wide.std(0), rtol=1e-5)


def test_a_refused_training_step_does_not_write_out():
    bn = cbn.BatchNorm1d(3)
    bn.num_batches_tracked = 2 ** 63 - 1
    x = random_input(rng_for(16), (5, 3), np.float32)
    before = x.copy()
    with pytest.raises(ValueError, match="num_batches_tracked"):
        bn(x, out=x)
    np.testing.assert_array_equal(x, before)


def test_precise_statistics_over_layers_sharing_a_lock_does_not_deadlock():
    """A shallow copy of a SyncBatchNorm shares its arrays and its lock."""
    import copy
    import threading
    from fake_mpi import FakeWorld
    a = cbn.SyncBatchNorm(3, FakeWorld(1).comm(0))
    b = copy.copy(a)
    done = threading.Event()

    def run():
        with cbn.precise_statistics(a, b):
            a(random_input(rng_for(17), (4, 3), np.float32))
            b(random_input(rng_for(18), (4, 3), np.float32))
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert done.wait(30), "precise_statistics deadlocked on a shared lock"
