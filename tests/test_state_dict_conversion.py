"""load_state_dict converts values to the layer's param_dtype as PyTorch's
copy does: floating and integer values rounded to nearest (narrower floats
widened exactly), torch tensors of every real dtype read as they are. It
refuses what that copy would silently break (values that overflow
param_dtype, non-finite values, a negative running_var, a count that is
not an integer in [0, 2**63 - 1]) and then leaves the layer unchanged."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cbn
from fake_mpi import FakeWorld
from helpers import random_input, torch_bfloat16_batchnorm

F32_MAX = float(np.finfo(np.float32).max)
F32_HALF_ULP_AT_MAX = 2.0 ** 103   # half the spacing of float32 at its largest value
VECTOR_KEYS = ("weight", "bias", "running_mean", "running_var")


def trained(rng, dtype=np.float32, cls=cbn.BatchNorm2d):
    bn = cls(3, dtype=dtype)
    for _ in range(3):
        bn(random_input(rng, (4, 3, 5, 5), bn.dtype))
    bn.weight[...] = rng.uniform(0.5, 2.0, 3)
    bn.bias[...] = rng.standard_normal(3)
    return bn


def float64_state(rng):
    """A full state dict of float64 values float32 cannot hold exactly."""
    return {"weight": rng.uniform(0.5, 2.0, 3), "bias": rng.standard_normal(3),
            "running_mean": rng.standard_normal(3), "running_var": rng.uniform(0.5, 2.0, 3),
            "num_batches_tracked": np.array(9)}


def assert_state_equal(state, expected):
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert state[key].dtype == value.dtype, key
        np.testing.assert_array_equal(state[key], value, err_msg=key)


def rounded(state, dtype=np.float32):
    """state's vectors rounded to nearest in dtype (NumPy's cast), its count as int64."""
    return {k: np.asarray(v).astype(np.int64 if k == "num_batches_tracked" else dtype)
            for k, v in state.items()}


# ---------------------------------------------------------------- rounding to nearest


@pytest.mark.parametrize("make", [
    lambda: cbn.BatchNorm2d(3), lambda: cbn.BatchRenorm2d(3),
    lambda: cbn.SyncBatchNorm(3, FakeWorld(1).comm(0))], ids=["BatchNorm", "BatchRenorm", "Sync"])
def test_float64_values_load_rounded_to_nearest(make, rng):
    bn = make()
    state = float64_state(rng)
    bn.load_state_dict(state)
    assert_state_equal(bn.state_dict(), rounded(state))
    for key in VECTOR_KEYS:   # rounded, so not what was given: the old rule refused these
        assert np.all(bn.state_dict()[key] != state[key]), key


def test_rounding_is_to_nearest_even():
    bn = cbn.BatchNorm1d(3)
    values = [1 + 2.0 ** -24,       # halfway between 1 and the next float32: to 1 (even)
              1 + 3 * 2.0 ** -24,   # halfway, the upper neighbour even: up
              1 + 2.0 ** -24 + 2.0 ** -40]   # just above halfway: up
    bn.load_state_dict({"weight": values}, strict=False)
    np.testing.assert_array_equal(bn.weight, [1.0, 1 + 2.0 ** -22, 1 + 2.0 ** -23])
    np.testing.assert_array_equal(bn.weight, [np.float32(v) for v in values])


def test_a_list_of_floats_loads_rounded():
    bn = cbn.BatchNorm2d(3)
    bn.load_state_dict({"weight": [0.1, 0.2, 0.3]}, strict=False)
    np.testing.assert_array_equal(bn.weight, [np.float32(0.1), np.float32(0.2), np.float32(0.3)])
    assert bn.weight.dtype == np.float32


def test_an_npz_saved_from_a_float64_layer_loads_into_a_float32_layer(tmp_path, rng):
    wide = trained(rng, np.float64)
    np.savez(tmp_path / "bn.npz", **wide.state_dict())
    bn = cbn.BatchNorm2d(3)
    with np.load(tmp_path / "bn.npz") as saved:   # an NpzFile: keys() and [key]
        bn.load_state_dict(saved)
    assert_state_equal(bn.state_dict(), rounded(wide.state_dict()))


def test_a_float64_layer_state_dict_loads_into_a_float32_layer(rng):
    wide = trained(rng, np.float64).eval()
    bn = cbn.BatchNorm2d(3).eval()
    bn.load_state_dict(wide.state_dict())
    assert_state_equal(bn.state_dict(), rounded(wide.state_dict()))
    x = random_input(rng, (2, 3, 4, 4), np.float64)
    np.testing.assert_allclose(bn(x.astype(np.float32)), wide(x), rtol=1e-5, atol=1e-5)


def test_a_pytorch_float64_module_loads_into_a_float32_layer(rng):
    torch = pytest.importorskip("torch")
    theirs = torch.nn.BatchNorm2d(3, dtype=torch.float64)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 2.0)
        theirs.bias.normal_()
    theirs(torch.randn(4, 3, 5, 5, dtype=torch.float64) * 2 + 1)
    state = theirs.state_dict()
    bn = cbn.BatchNorm2d(3)
    bn.load_state_dict(state)
    assert_state_equal(bn.state_dict(), rounded({k: v.numpy() for k, v in state.items()}))
    # what PyTorch's own load_state_dict makes of it, bit for bit
    narrow = torch.nn.BatchNorm2d(3)
    narrow.load_state_dict(state)
    for key, value in narrow.state_dict().items():
        np.testing.assert_array_equal(bn.state_dict()[key], value.numpy(), err_msg=key)


def test_integer_values_convert():
    bn = cbn.BatchNorm2d(3)
    bn.load_state_dict({"weight": np.array([1, 2, 3], np.int32),
                        "bias": np.array([0, 7, 255], np.uint8),
                        "running_mean": np.array([-1, 2 ** 24 + 1, 2 ** 40], np.int64),
                        "running_var": [1, 2, 3], "num_batches_tracked": 4})
    state = bn.state_dict()
    np.testing.assert_array_equal(state["weight"], [1, 2, 3])
    np.testing.assert_array_equal(state["bias"], [0, 7, 255])
    # 2**24 + 1 is halfway between two float32 values: to the even one
    np.testing.assert_array_equal(state["running_mean"], [-1, 2 ** 24, 2 ** 40])
    np.testing.assert_array_equal(state["running_var"], [1, 2, 3])
    assert all(state[k].dtype == np.float32 for k in VECTOR_KEYS)


def test_a_float64_layer_keeps_float64_values_as_they_are(rng):
    bn = cbn.BatchNorm2d(3, dtype=np.float64)
    state = float64_state(rng)
    bn.load_state_dict(state)
    assert_state_equal(bn.state_dict(), rounded(state, np.float64))


def test_the_largest_values_that_round_to_a_finite_float32_load():
    below_halfway = F32_MAX + F32_HALF_ULP_AT_MAX * (1 - 2.0 ** -20)
    bn = cbn.BatchNorm1d(3)
    bn.load_state_dict({"running_mean": [below_halfway, -below_halfway, 1.0]}, strict=False)
    np.testing.assert_array_equal(bn.running_mean, [F32_MAX, -F32_MAX, 1.0])


# ---------------------------------------------------------------- refusals, all or nothing


BAD_VALUES = [
    ("weight", np.array([1e39, 1.0, 1.0]), ValueError, r"state_dict\['weight'\].*overflow"),
    ("bias", [1.0, -1e300, 1.0], ValueError, r"state_dict\['bias'\].*overflow"),
    # halfway above the largest float32 rounds (to even) to inf
    ("running_mean", [F32_MAX + F32_HALF_ULP_AT_MAX, 0.0, 0.0], ValueError,
     r"state_dict\['running_mean'\].*overflow"),
    ("running_var", [1.0, 1.0, 1e39], ValueError, r"state_dict\['running_var'\].*overflow"),
    ("weight", [1.0, np.nan, 1.0], ValueError, r"state_dict\['weight'\]: expected finite"),
    ("bias", [np.inf, 1.0, 1.0], ValueError, r"state_dict\['bias'\]: expected finite"),
    ("running_mean", np.array([1, -np.inf, 1], np.float32), ValueError, "expected finite"),
    ("running_var", [1.0, -1.0, 1.0], ValueError, r"running_var'\]: expected values >= 0"),
    # negative though it rounds to -0.0 in float32
    ("running_var", [1.0, -1e-50, 1.0], ValueError, r"running_var'\]: expected values >= 0"),
    ("num_batches_tracked", 1.5, ValueError, "non-negative integer"),
    ("num_batches_tracked", np.float64(2.5), ValueError, "non-negative integer"),
    ("num_batches_tracked", -1, ValueError, "non-negative integer"),
    ("num_batches_tracked", np.int8(-2), ValueError, "non-negative integer"),
    ("num_batches_tracked", 2 ** 63, ValueError, "below 2\\*\\*63"),
    ("num_batches_tracked", np.uint64(2 ** 63), ValueError, "below 2\\*\\*63"),
    ("num_batches_tracked", 1e19, ValueError, "below 2\\*\\*63"),
    ("num_batches_tracked", float("nan"), ValueError, "non-negative integer"),
]


@pytest.mark.parametrize("key,value,exc,message", BAD_VALUES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_VALUES)])
def test_refusals_leave_the_layer_unchanged(key, value, exc, message, rng):
    bn = trained(rng)
    before = bn.state_dict()
    state = float64_state(rng)   # every other value would load, rounded
    state[key] = value
    with pytest.raises(exc, match=message):
        bn.load_state_dict(state)
    assert_state_equal(bn.state_dict(), before)


def test_the_overflow_message_names_the_values_and_the_range():
    with pytest.raises(ValueError) as info:
        cbn.BatchNorm1d(3).load_state_dict({"weight": [1e39, 1.0, 1.0]}, strict=False)
    message = str(info.value)
    assert message.startswith("state_dict['weight']: expected values within float32's range")
    assert "1.e+39" in message and "overflow" in message


def test_setters_take_only_param_dtype_arrays_and_point_to_load_state_dict():
    bn = cbn.BatchNorm2d(3)
    for key in VECTOR_KEYS:
        with pytest.raises(TypeError, match=rf"{key}: expected dtype float32 \(the layer's "
                                            rf"param_dtype.*got float64.*load_state_dict"):
            setattr(bn, key, np.full(3, 0.5))
    with pytest.raises(ValueError, match="running_var: expected values >= 0"):
        bn.running_var = np.array([1, -1, 1], np.float32)


# ---------------------------------------------------------------- torch tensors


def torch_dtypes(*names):
    torch = pytest.importorskip("torch")
    present = [getattr(torch, n) for n in names if hasattr(torch, n)]
    if not present:
        pytest.skip(f"this torch has none of {names}")
    return torch, present


@pytest.mark.parametrize("name", ["bfloat16", "float16", "float32", "float64"])
def test_torch_tensors_of_every_float_dtype_load(name):
    torch, (dtype,) = torch_dtypes(name)
    values = {k: torch.tensor(v, dtype=torch.float64).to(dtype) for k, v in {
        "weight": [0.1, 1.5, -2.7], "bias": [1e-3, -0.3, 300.1],
        "running_mean": [3.3, -4.4, 0.0], "running_var": [0.7, 1.9, 2.2]}.items()}
    bn = cbn.BatchNorm2d(3)
    bn.load_state_dict({**values, "num_batches_tracked": torch.tensor(5)})
    for key, tensor in values.items():   # narrower types widen exactly, float64 rounds
        np.testing.assert_array_equal(getattr(bn, key),
                                      tensor.double().numpy().astype(np.float32), err_msg=key)
    assert int(bn.num_batches_tracked) == 5


def test_tensors_that_require_grad_load():
    torch = pytest.importorskip("torch")
    weight = torch.nn.Parameter(torch.tensor([0.5, 1.5, 2.5]))
    bias = weight * 2   # not a leaf, also requires grad
    bn = cbn.BatchNorm1d(3)
    bn.load_state_dict({"weight": weight, "bias": bias}, strict=False)
    np.testing.assert_array_equal(bn.weight, [0.5, 1.5, 2.5])
    np.testing.assert_array_equal(bn.bias, [1, 3, 5])


def test_a_tensor_with_its_negative_bit_set_loads():
    torch = pytest.importorskip("torch")
    negated = torch.complex(torch.zeros(3), torch.tensor([1.0, 2.0, 3.0])).conj().imag
    assert negated.is_neg()   # a lazily negated view, which Tensor.numpy() refuses
    bn = cbn.BatchNorm1d(3)
    bn.load_state_dict({"running_mean": negated}, strict=False)
    np.testing.assert_array_equal(bn.running_mean, [-1, -2, -3])


def test_a_pytorch_bfloat16_state_dict_loads_into_a_bfloat16_layer_as_it_is():
    torch = pytest.importorskip("torch")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    state = torch_bfloat16_batchnorm(torch, 3).state_dict()
    for bn in (cbn.BatchNorm2d(3, dtype=ml_dtypes.bfloat16), cbn.BatchNorm2d(3)):
        assert bn.load_state_dict(state) == ([], [])
        for key in VECTOR_KEYS:   # widened exactly
            np.testing.assert_array_equal(getattr(bn, key), state[key].float().numpy(),
                                          err_msg=key)


def test_a_pytorch_bfloat16_state_dict_loads_into_a_float32_layer():
    torch = pytest.importorskip("torch")
    bn = cbn.BatchNorm2d(3)
    bn.load_state_dict(torch.nn.BatchNorm2d(3).to(torch.bfloat16).state_dict())
    assert_state_equal(bn.state_dict(), cbn.BatchNorm2d(3).state_dict())


FLOAT8 = ["float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu"]


@pytest.mark.parametrize("name", FLOAT8)
def test_float8_tensors_widen_exactly(name):
    torch, (dtype,) = torch_dtypes(name)
    values = torch.tensor([0.5, 2.0, 4.0]).to(dtype)   # each of these types holds them
    bn = cbn.BatchNorm1d(3)
    bn.load_state_dict({"running_var": values}, strict=False)
    np.testing.assert_array_equal(bn.running_var, [0.5, 2.0, 4.0])


def test_float8_numpy_arrays_widen_exactly():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bn = cbn.BatchNorm1d(3)
    bn.load_state_dict({"bias": np.array([0.5, -2.0, 448.0]).astype(ml_dtypes.float8_e4m3fn)},
                       strict=False)
    np.testing.assert_array_equal(bn.bias, [0.5, -2.0, 448.0])


def test_torch_counts_load():
    torch = pytest.importorskip("torch")
    bn = cbn.BatchNorm1d(3)
    for count, expected in ((torch.tensor(7), 7), (torch.tensor(2 ** 62), 2 ** 62),
                            (torch.tensor(3.0), 3), (torch.tensor([4], dtype=torch.int32), 4)):
        bn.load_state_dict({"num_batches_tracked": count}, strict=False)
        assert int(bn.num_batches_tracked) == expected
    with pytest.raises(ValueError, match="non-negative integer"):
        bn.load_state_dict({"num_batches_tracked": torch.tensor(2.5)}, strict=False)
    assert int(bn.num_batches_tracked) == 4


@pytest.mark.parametrize("case", ["complex", "bool", "meta", "float4"])
def test_tensors_numpy_cannot_hold_are_refused(case):
    torch = pytest.importorskip("torch")
    if case == "float4" and not hasattr(torch, "float4_e2m1fn_x2"):
        pytest.skip("this torch has no packed float4 type")
    value = {"complex": lambda: torch.ones(3, dtype=torch.complex64),
             "bool": lambda: torch.ones(3, dtype=torch.bool),
             "meta": lambda: torch.ones(3, device="meta"),   # no data to read
             "float4": lambda: torch.zeros(3, dtype=torch.float4_e2m1fn_x2)}[case]()
    bn = cbn.BatchNorm1d(3)
    before = bn.state_dict()
    with pytest.raises(TypeError, match=r"state_dict\['weight'\]: expected"):
        bn.load_state_dict({"weight": value}, strict=False)
    assert_state_equal(bn.state_dict(), before)


def test_a_tensor_on_another_device_loads():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    bn = cbn.BatchNorm1d(3)
    bn.load_state_dict({"weight": torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64,
                                               device="cuda", requires_grad=True)}, strict=False)
    np.testing.assert_array_equal(bn.weight, np.float32([0.1, 0.2, 0.3]))


def test_loading_numpy_values_never_imports_torch():
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import cbn
        bn = cbn.BatchNorm2d(3)
        bn.load_state_dict({"weight": [0.1, 0.2, 0.3], "bias": np.zeros(3, np.int64),
                            "running_mean": np.zeros(3), "running_var": np.ones(3, np.float16),
                            "num_batches_tracked": np.array(3)})
        bn.num_batches_tracked = 4
        assert "torch" not in sys.modules, "torch was imported"
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
