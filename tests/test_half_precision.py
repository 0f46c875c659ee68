"""float16 and bfloat16 data (computed in float32, parameters in float32)
against the float64 reference on the widened input.

The contract: each output value within one unit in the last place of the
reference rounded to the data type, plus what float32 arithmetic cannot
avoid where terms cancel (a few float32 roundings of the terms' size);
statistics and parameter gradients as accurate as the float32 layer's on
the same widened input; outputs past the type's range become +-inf with a
RuntimeWarning. bfloat16 cases skip without ml_dtypes (the extra
cbn[bfloat16]); float16 needs nothing.
"""
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cbn
import reference as ref
from cbn import functional as F
from fake_mpi import run_ranks
from helpers import channel_axis, torch_bfloat16_batchnorm
from sync_cases import check_against_single_process

HALF_DTYPES = ["float16", "bfloat16"]
F32_TERMS = 2.0 ** -21   # float32 roundings of a value's terms, a few of them


def half_dtype(name):
    if name == "bfloat16":
        return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    return np.dtype(np.float16)


@pytest.fixture(params=HALF_DTYPES)
def dtype(request):
    return half_dtype(request.param)


def ulp(values):
    """The unit in the last place of each value of a 2-byte float array, in float64."""
    bits = values.view(np.uint16) & 0x7FFF
    here = bits.view(values.dtype).astype(np.float64)
    return (bits + 1).astype(np.uint16).view(values.dtype).astype(np.float64) - here


def assert_within_ulp(result, exact, terms, name):
    """|result - exact| <= 1 ulp of exact rounded to result's type, plus
    F32_TERMS * terms (the size of the float32 terms that cancel in it)."""
    rounded = exact.astype(result.dtype)
    error = np.abs(result.astype(np.float64) - exact)
    bound = ulp(rounded) + F32_TERMS * terms
    worst = np.argmax(error - bound)
    assert np.all(error <= bound), (
        f"{name}: {result.astype(np.float64).ravel()[worst]} vs exact {exact.ravel()[worst]} "
        f"(error {error.ravel()[worst]:.3g}, bound {bound.ravel()[worst]:.3g})")


def widened(a):
    return a.astype(np.float64)


SHAPES = [((4, 3, 5, 7), "NCHW"), ((7, 5, 3, 13), "NHWC"), ((13, 1, 3, 1), "NCHW"),
          ((3, 2, 2, 7), "NHWC"), ((2, 67, 3, 3), "NCHW"), ((9, 1, 1, 33), "NHWC")]


def random_layer(shape, layout, dtype, rng, **options):
    axis = channel_axis(layout, len(shape))
    C = shape[axis]
    bn = cbn.BatchNorm2d(C, dtype=dtype, layout=layout, **options)
    bn.weight[...] = rng.uniform(0.5, 2.0, C) * rng.choice([-1, 1], C)
    bn.bias[...] = rng.standard_normal(C)
    return bn, axis


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape,layout", SHAPES)
def test_training_step_matches_the_float64_reference(shape, layout, relu, dtype, rng):
    bn, axis = random_layer(shape, layout, dtype, rng, activation="relu" if relu else None)
    assert bn.param_dtype == np.float32 and bn.weight.dtype == np.float32
    f32 = cbn.BatchNorm2d(bn.num_features, layout=layout, activation=bn.activation)
    f32.load_state_dict(bn.state_dict())
    x = (rng.standard_normal(shape) * 3 + 5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w, b = widened(bn.weight), widened(bn.bias)
    y = bn(x)
    assert y.dtype == dtype
    exact, mean, var, count = ref.train_forward(widened(x), axis, w, b)
    nd = x.ndim
    xhat = (widened(x) - ref.expand(mean, nd, axis)) / np.sqrt(ref.expand(var, nd, axis) + 1e-5)
    terms = np.abs(xhat * ref.expand(w, nd, axis)) + np.abs(ref.expand(b, nd, axis))
    if relu:
        gate = exact > 0
        exact = np.maximum(exact, 0.0)
    assert_within_ulp(y, exact, terms, "y")

    dx = bn.backward(dy)
    assert dx.dtype == dtype
    g = widened(dy) * gate if relu else widened(dy)
    dx_exact, dw_exact, db_exact = ref.train_backward(g, widened(x), axis, w)
    k = ref.expand(w / np.sqrt(var + 1e-5), nd, axis)
    mean_terms = (np.abs(ref.expand(db_exact, nd, axis)) + np.abs(xhat * ref.expand(dw_exact, nd,
                                                                                    axis))) / count
    assert_within_ulp(dx, dx_exact, np.abs(k) * (np.abs(g) + mean_terms), "dx")

    # statistics and parameter gradients: as the float32 layer's on the widened input
    f32(x.astype(np.float32))
    f32.backward(dy.astype(np.float32))
    unbiased = var * count / (count - 1)
    np.testing.assert_allclose(bn.running_mean, 0.1 * mean, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * unbiased, rtol=2e-6, atol=1e-7)
    for name, exact in (("grad_weight", dw_exact), ("grad_bias", db_exact)):
        half_error = np.abs(widened(getattr(bn, name)) - exact)
        f32_error = np.abs(widened(getattr(f32, name)) - exact)
        scale = np.abs(g).sum(axis=ref.reduce_axes(nd, axis)) * 2.0 ** -20
        assert np.all(half_error <= np.maximum(4 * f32_error, scale)), name


@pytest.mark.parametrize("shape,layout", SHAPES[:3])
def test_eval_step_matches_the_float64_reference(shape, layout, dtype, rng):
    bn, axis = random_layer(shape, layout, dtype, rng)
    C = bn.num_features
    bn.running_mean[...] = rng.standard_normal(C)
    bn.running_var[...] = rng.uniform(0.5, 2.0, C)
    bn.eval()
    x = (rng.standard_normal(shape) * 2).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    rm, rv, w, b = (widened(a) for a in (bn.running_mean, bn.running_var, bn.weight, bn.bias))
    nd = x.ndim
    exact = ref.normalize(widened(x), axis, rm, rv, w, b, 1e-5)
    xhat = (widened(x) - ref.expand(rm, nd, axis)) / np.sqrt(ref.expand(rv, nd, axis) + 1e-5)
    assert_within_ulp(bn(x), exact, np.abs(xhat * ref.expand(w, nd, axis))
                      + np.abs(ref.expand(b, nd, axis)), "y")
    dx_exact, _, _ = ref.eval_backward(widened(dy), widened(x), axis, rm, rv, w)
    assert_within_ulp(bn.backward(dy), dx_exact, np.abs(dx_exact), "dx")


def test_views_and_out(dtype, rng):
    base = (rng.standard_normal((6, 8, 5, 9)) * 2 + 1).astype(dtype)
    for x in (base[::2, 1:7], base[::-1, :, :, ::1], base[:, ::2]):
        bn = cbn.BatchNorm2d(x.shape[1], dtype=dtype)
        exact = ref.train_forward(widened(x), 1)[0]
        assert_within_ulp(bn(x), exact, np.abs(exact) + 1.0, "y of a view")
    x = base.copy()
    out = np.empty_like(x)
    y = cbn.BatchNorm2d(8, dtype=dtype)(x, out=out)
    assert y is out
    cbn.BatchNorm2d(8, dtype=dtype)(x, out=x)   # in place
    np.testing.assert_array_equal(widened(x), widened(out))


def test_statistics_stay_exact_with_a_large_mean(dtype, rng):
    # 2-byte data far from 0 are coarse (float16 at 2000: steps of 2; bfloat16
    # at 1e4: steps of 64), but their statistics are computed as float32's
    center = 2000.0 if dtype == np.float16 else 1e4
    x = (rng.standard_normal((64, 3, 9, 9)) * center / 100 + center).astype(dtype)
    mean, var, count = ref.batch_stats(widened(x), 1)
    for dt in (dtype, np.float32):
        bn = cbn.BatchNorm2d(3, dtype=dt, momentum=1.0)
        bn(x.astype(dt))
        np.testing.assert_allclose(bn.running_mean, mean, rtol=1e-7)
        np.testing.assert_allclose(bn.running_var, var * count / (count - 1), rtol=1e-5)


def test_outputs_past_the_range_become_inf_with_a_warning(dtype, rng):
    x = rng.standard_normal((8, 3, 4, 4)).astype(dtype)
    bn = cbn.BatchNorm2d(3, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # within range: no warning
        bn(x)
    big = 1e5 if dtype == np.float16 else 3e38
    bn.weight[...] = [1.0, big, 1.0]
    before = bn.state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a raise leaves the layer as it was
        with pytest.raises(RuntimeWarning, match=f"beyond {dtype}'s range"):
            bn(x)
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    with pytest.warns(RuntimeWarning, match=f"y: some values were beyond {dtype}'s range") as info:
        y = bn(x)
    assert info[0].filename == __file__   # attributed to the caller
    assert np.any(np.isinf(widened(y[:, 1])))
    assert np.all(np.isfinite(widened(y[:, [0, 2]])))
    bn.eval()
    bn.running_var[...] = 1.0
    with pytest.warns(RuntimeWarning, match=f"y: some values were beyond {dtype}'s range"):
        bn(x)
    with pytest.warns(RuntimeWarning, match=f"dx: some values were beyond {dtype}'s range"):
        bn.backward(np.full_like(x, 10.0))
    bn.weight[...] = 1.0
    x[0, 0, 0, 0] = np.inf   # infinite in, infinite out: not past the range
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isinf(widened(bn(x)[0, 0, 0, 0]))


# In place the loops tell infinite inputs before writing over them: every 7th
# value infinite reaches every position of a run or row (vector lanes, the
# scalar tails; streamed ones in test_streaming_stores_tell_infinite_inputs_too)
IN_PLACE_SHAPES = [((3, 4, 5, 6), "NCHW"), ((3, 5, 7, 19), "NHWC"), ((2, 3, 9, 17), "NCHW"),
                   ((2, 3, 5, 131), "NHWC")]


def with_infinities(a, start=0):
    """a with every 7th value from start +inf or -inf."""
    a = a.copy()
    flat = a.reshape(-1)
    flat[start::7] = np.where(np.arange(flat[start::7].size) % 2, np.inf, -np.inf)
    return a


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape,layout", IN_PLACE_SHAPES)
def test_infinite_inputs_in_place_give_no_range_warning(shape, layout, relu, dtype, rng):
    activation = "relu" if relu else None
    x = with_infinities(rng.standard_normal(shape).astype(dtype))
    # eval: +-inf where x is; training: NaN channels (and no running
    # statistics, whose warning about them is not the one tested)
    for bn in (random_layer(shape, layout, dtype, rng, activation=activation)[0].eval(),
               random_layer(shape, layout, dtype, rng, activation=activation,
                            track_running_stats=False)[0]):
        expected = bn(x)
        data = x.copy()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            y = bn(data, out=data)
        assert y is data
        np.testing.assert_array_equal(widened(y), widened(expected))
        assert np.isinf(widened(y)).any() == (not bn.training)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape,layout", IN_PLACE_SHAPES)
def test_infinite_dy_in_place_gives_no_range_warning(shape, layout, relu, dtype, rng):
    bn, axis = random_layer(shape, layout, dtype, rng, activation="relu" if relu else None)
    C, nd = shape[axis], len(shape)
    # channel 0 of x: its mean (1/3) rounded up to float32 in the shift, so an
    # infinite dy where x = 1 makes dx of finite dy and x +-inf through the sums
    x = rng.standard_normal(shape)
    first = np.take(x, [0], axis)
    first.reshape(-1)[:] = np.resize([0.0, 0.0, 1.0], first.size)
    channels = [slice(None)] * nd
    channels[axis] = slice(0, 1)
    x[tuple(channels)] = first
    x = x.astype(dtype)
    bn.weight[0], bn.bias[0] = 1.0, 0.0   # (ReLU: dy counts where x = 1)
    dy = rng.standard_normal(shape).astype(dtype)
    dy_train = dy.copy()
    where_one = np.flatnonzero((widened(x) == 1) & (np.indices(shape)[axis] == 0))
    dy_train.reshape(-1)[where_one[:3]] = np.inf
    bn.eval()
    bn(x)
    dy_eval = with_infinities(dy, 3)
    expected = bn.backward(dy_eval)
    for mode, grad in (("eval", dy_eval), ("train", dy_train)):
        getattr(bn, mode)()
        bn(x)
        data = grad.copy()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            dx = bn.backward(data, out=data)
        assert dx is data
        if mode == "eval":
            assert np.isinf(widened(dx)).any()
            np.testing.assert_array_equal(widened(dx), widened(expected))
        else:
            inf = np.isinf(widened(dx))
            assert inf.any() and not np.isinf(widened(dy_train)[inf]).all()
            assert np.all(np.isfinite(widened(np.delete(dx, 0, axis))))
    # without parameters (no parameter gradients asked for: the sums still told)
    plain = cbn.BatchNorm2d(C, dtype=dtype, layout=layout, affine=False,
                            activation=bn.activation)
    plain(x)
    data = dy_train.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain.backward(data, out=data)
    assert np.isinf(widened(data)).any()


@pytest.mark.parametrize("shape,layout", IN_PLACE_SHAPES[:2])
def test_values_past_the_range_in_place_still_warn(shape, layout, dtype, rng):
    big = 6e4 if dtype == np.float16 else 3e38   # times 4: past the range
    bn, axis = random_layer(shape, layout, dtype, rng)
    C = shape[axis]
    bn.weight[...] = 4.0
    bn.eval()
    x = with_infinities(rng.standard_normal(shape).astype(dtype))
    data = x.copy()
    data.reshape(-1)[3] = big     # between infinite ones
    with pytest.warns(RuntimeWarning, match=f"y: some values were beyond {dtype}'s range"):
        bn(data, out=data)
    bn(x)   # (one backward can differentiate)
    dy = with_infinities(rng.standard_normal(shape).astype(dtype))
    dy.reshape(-1)[3] = big
    with pytest.warns(RuntimeWarning, match=f"dx: some values were beyond {dtype}'s range"):
        bn.backward(dy, out=dy)
    # training: an infinite dy excuses its own channel only; past the range in another warns
    bn.train()
    bn.weight[...] = 1.0
    bn.weight[C - 1] = 1e5 if dtype == np.float16 else 3e38
    with pytest.warns(RuntimeWarning, match=f"y: some values were beyond {dtype}'s range"):
        bn(rng.standard_normal(shape).astype(dtype))
    dy = rng.standard_normal(shape).astype(dtype)
    dy[(slice(None),) * axis + (0,)] = np.inf
    with pytest.warns(RuntimeWarning, match=f"dx: some values were beyond {dtype}'s range"):
        bn.backward(dy, out=dy)
    assert np.isinf(widened(np.take(dy, C - 1, axis))).any()


def test_streaming_stores_tell_infinite_inputs_too():
    """The in-place tests above with every output long enough streamed
    (CBN_STREAM_BYTES=0; under CBN_LOOPS when set)."""
    import os
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             os.path.basename(__file__), "-k", "in_place"],
                            env=dict(os.environ, CBN_STREAM_BYTES="0"), cwd=here,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


def test_bfloat16_without_ml_dtypes_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)   # import ml_dtypes now fails
    with pytest.raises(ImportError, match=r"cbn\[bfloat16\]"):
        cbn.BatchNorm2d(3, dtype="bfloat16")
    cbn.BatchNorm2d(3, dtype=np.float16)   # float16 needs nothing


def test_state_dict_is_in_param_dtype_and_converts_like_pytorch(dtype, rng):
    bn = cbn.BatchNorm1d(4, dtype=dtype)
    state = bn.state_dict()
    assert all(v.dtype == np.float32 for k, v in state.items() if k != "num_batches_tracked")
    values = rng.standard_normal(4).astype(dtype)   # a checkpoint in the data type
    bn.load_state_dict({"weight": values}, strict=False)
    np.testing.assert_array_equal(bn.weight, values.astype(np.float32))
    bn.load_state_dict({"bias": np.full(4, 0.1)}, strict=False)   # float64 0.1: rounded to nearest
    np.testing.assert_array_equal(bn.bias, np.full(4, np.float32(0.1)))
    with pytest.raises(ValueError, match="overflow"):
        bn.load_state_dict({"bias": np.full(4, 1e39)}, strict=False)
    np.testing.assert_array_equal(bn.bias, np.full(4, np.float32(0.1)))
    with pytest.raises(TypeError, match="param_dtype"):
        bn.weight = values                                             # setters: param_dtype only


def test_functional_takes_float32_parameters(dtype, rng):
    x = (rng.standard_normal((6, 5, 7)) + 2).astype(dtype)
    rm, rv = np.zeros(5, np.float32), np.ones(5, np.float32)
    w, b = rng.uniform(0.5, 2, 5).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    y = F.batch_norm(x, rm, rv, w, b, training=True)
    exact = ref.train_forward(widened(x), 1, widened(w), widened(b))[0]
    assert_within_ulp(y, exact, np.abs(exact) + np.abs(b)[:, None] + 1.0, "y")
    assert rm.dtype == np.float32 and np.all(rm != 0)
    with pytest.raises(TypeError, match="weight: expected dtype float32"):
        F.batch_norm(x, rm, rv, w.astype(dtype), b)


def test_renormalisation_and_virtual_batches(dtype, rng):
    x = (rng.standard_normal((8, 3, 5, 5)) * 2 + 1).astype(dtype)
    for layer in (cbn.BatchRenorm2d(3, dtype=dtype), cbn.BatchNorm2d(3, dtype=dtype,
                                                                     virtual_batch_size=4)):
        f32 = type(layer)(3, **({"virtual_batch_size": 4} if layer.virtual_batch_size else {}))
        y, y32 = layer(x), f32(x.astype(np.float32))
        assert_within_ulp(y, widened(y32), np.abs(widened(y32)) + 1.0, "y")
        dy = rng.standard_normal(x.shape).astype(dtype)
        dx, dx32 = layer.backward(dy), f32.backward(dy.astype(np.float32))
        assert_within_ulp(dx, widened(dx32), np.abs(widened(dx32)) + 1.0, "dx")
        np.testing.assert_allclose(layer.running_var, f32.running_var, rtol=1e-6)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_sync_batch_norm_matches_one_process(layout, dtype):
    run_ranks(3, lambda rank, comm: check_against_single_process(comm, layout, dtype, 0.1),
              rotate=True)


def test_folding_returns_the_parameters_type(dtype, rng):
    bn = cbn.BatchNorm1d(3, dtype=dtype).eval()
    bn.running_var[...] = [0.5, 1.0, 2.0]
    weight = rng.standard_normal((3, 4)).astype(dtype)
    folded_weight, folded_bias = cbn.fold_linear(weight, None, bn)
    assert folded_weight.dtype == folded_bias.dtype == np.float32
    x = rng.standard_normal((5, 4))
    expected = ref.normalize(x @ widened(weight).T, 1, np.zeros(3), [0.5, 1.0, 2.0], None, None,
                             1e-5)
    np.testing.assert_allclose(x @ widened(folded_weight).T + folded_bias, expected, rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(HALF_DTYPES), layout=st.sampled_from(["NCHW", "NHWC"]),
       n=st.integers(2, 9), c=st.integers(1, 13), s=st.integers(1, 17),
       scale=st.floats(1e-3, 1e3), center=st.floats(-100, 100), seed=st.integers(0, 2**16))
def test_any_shape_and_scale_is_within_an_ulp(name, layout, n, c, s, scale, center, seed):
    dtype = half_dtype(name)
    rng = np.random.default_rng(seed)
    shape = (n, c, s) if layout == "NCHW" else (n, s, c)
    axis = 1 if layout == "NCHW" else 2
    x = (rng.standard_normal(shape) * scale + center).astype(dtype)
    y = cbn.BatchNorm1d(c, dtype=dtype, layout=layout)(x)
    exact = ref.train_forward(widened(x), axis)[0]
    if np.all(np.isfinite(exact)):
        assert_within_ulp(y, exact, np.abs(exact) + 1.0, "y")


def test_a_pytorch_bfloat16_model_loads_and_agrees(rng):
    torch = pytest.importorskip("torch")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    tbn = torch_bfloat16_batchnorm(torch, 4)
    state = {k: v.view(torch.int16).numpy().view(ml_dtypes.bfloat16) if v.is_floating_point()
             else v.numpy() for k, v in tbn.state_dict().items()}
    bn = cbn.BatchNorm2d(4, dtype=ml_dtypes.bfloat16)
    bn.load_state_dict(state)
    for key, value in state.items():   # widened exactly
        np.testing.assert_array_equal(bn.state_dict()[key], value.astype(np.float64))
    back = torch.nn.BatchNorm2d(4).to(torch.bfloat16)   # and back into PyTorch, exactly
    back.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in bn.state_dict().items()})
    for key, value in back.state_dict().items():
        assert torch.equal(value, tbn.state_dict()[key]), key
    x = rng.standard_normal((6, 4, 5, 5)).astype(ml_dtypes.bfloat16)
    tx = torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    for mode in ("eval", "train"):
        getattr(bn, mode)()
        getattr(tbn, mode)()
        y = bn(x)
        with torch.no_grad():
            ty = tbn(tx).float().numpy()
        np.testing.assert_allclose(widened(y), ty, rtol=2 ** -7, atol=2 ** -7)


def test_layers_pickle_with_their_dtypes(dtype, rng):
    import pickle

    bn = cbn.BatchNorm2d(3, dtype=dtype)
    x = rng.standard_normal((4, 3, 2, 2)).astype(dtype)
    y = bn(x)
    copy = pickle.loads(pickle.dumps(bn))
    assert (copy.dtype, copy.param_dtype) == (dtype, np.float32)
    np.testing.assert_array_equal(widened(copy.backward(np.ones_like(x))),
                                  widened(bn.backward(np.ones_like(x))))
    np.testing.assert_array_equal(widened(copy.eval()(x)), widened(bn.eval()(x)))
    assert y.dtype == dtype


def test_no_memory_growth_over_many_calls(dtype, rng):
    import tracemalloc

    bn = cbn.BatchNorm2d(8, dtype=dtype)
    x = rng.standard_normal((4, 8, 5, 5)).astype(dtype)
    for _ in range(200):
        bn(x)
        bn.backward(x)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(3000):
            bn(x)
            bn.backward(x)
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert growth < 32 * 1024, f"traced memory grew by {growth} bytes"
