"""Each documented behaviour of README.md, checked: every test quotes the
README sentence it backs, and the quote must still be in the README (so a
reworded promise cannot silently lose its test)."""
import copy
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import cbn
import cbn.functional as F
from helpers import random_input

README = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text().split())


def forward_once(seed, shape=(6, 3)):
    """A BatchNorm1d after one training forward of random x; (bn, x, dy)."""
    rng = np.random.default_rng(seed)
    x, dy = random_input(rng, shape, np.float32), random_input(rng, shape, np.float32)
    bn = cbn.BatchNorm1d(shape[1])
    bn(x)
    return bn, x, dy


def claim(sentence):
    """Mark a test as backing ``sentence`` of the README (whitespace-normalised)."""
    def mark(fn):
        fn.readme_sentence = sentence
        return fn
    return mark


@claim("a batch with fewer than two values per channel (an empty one included) raises `ValueError` there")
def check_one_value_per_channel():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        cbn.BatchNorm1d(3)(np.ones((1, 3), np.float32))


@claim("eval mode with running statistics, which needs no batch statistics, returns an empty output for an empty input")
def check_empty_eval():
    assert cbn.BatchNorm1d(3).eval()(np.ones((0, 3), np.float32)).shape == (0, 3)


@claim("`out=x` normalises in place, after which `backward` refuses (the input is gone), and `backward(dy, out=dy)` works in place.")
def check_in_place():
    rng = np.random.default_rng(0)
    x = random_input(rng, (4, 3), np.float32)
    bn = cbn.BatchNorm1d(3)
    expected = copy.deepcopy(bn)(x)
    assert bn(x, out=x) is x
    np.testing.assert_array_equal(x, expected)
    with pytest.raises(ValueError, match="out=x"):
        bn.backward(np.ones_like(x))
    dy = random_input(rng, (4, 3), np.float32)
    bn(random_input(rng, (4, 3), np.float32))
    assert bn.backward(dy, out=dy) is dy


@claim("`out=` takes an array of the input's shape, dtype and memory order (`np.empty_like(x)`, whatever x's strides)")
def check_out_empty_like():
    x = np.asfortranarray(random_input(np.random.default_rng(1), (4, 3, 5), np.float32))
    out = np.empty_like(x)
    assert cbn.BatchNorm1d(3)(x, out=out) is out


@claim("A raise at any point (a bad argument, a warning filter set to `\"error\"` as under `pytest -W error`, a `KeyboardInterrupt`) leaves the layer exactly as it was.")
def check_error_filter():
    bn = cbn.BatchNorm1d(3)
    x = random_input(np.random.default_rng(2), (4, 3), np.float32)
    bn(x)
    before = bn.state_dict()
    x[0, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning):
            bn(x)
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


@claim("updating `bn.weight` in place, rebinding it or loading a state dict between the two does not change the gradient")
def check_backward_after_update():
    bn, _, dy = forward_once(3)
    dx = bn.backward(dy)
    bn.weight -= 0.5 * bn.grad_weight
    np.testing.assert_array_equal(bn.backward(dy), dx)


@claim("Concurrent **training forwards** on one layer are serialised by that lock, so no running-statistics update and no `num_batches_tracked` increment is lost.")
def check_training_lock():
    from test_atomic_state import train_concurrently
    bn = cbn.BatchNorm1d(3)
    steps = train_concurrently(bn, random_input(np.random.default_rng(4), (8, 3), np.float32))
    assert int(bn.num_batches_tracked) == steps


@claim("each sees a concurrent `load_state_dict` or training step whole or not at all, as `state_dict()` does")
def check_consistent_snapshots():
    from test_atomic_state import test_a_commit_is_seen_whole_by_concurrent_readers
    test_a_commit_is_seen_whole_by_concurrent_readers()


@claim("a constant channel gives exactly `bias`, for any `eps` the layer accepts")
def check_constant_channel():
    bn = cbn.BatchNorm1d(2, eps=float(np.finfo(np.float32).tiny))
    bn.bias[...] = [0.5, -2.0]
    np.testing.assert_array_equal(bn(np.full((3, 2), 4.0, np.float32)), np.broadcast_to(bn.bias, (3, 2)))
    with pytest.raises(ValueError, match="eps"):
        cbn.BatchNorm1d(2, eps=0)


@claim("a block whose float32 lanes would overflow (values beyond ~1.8e19) is redone in float64")
def check_overflow():
    x = (np.random.default_rng(5).standard_normal((50, 3)) * 1e19).astype(np.float32)
    bn = cbn.BatchNorm1d(3)
    y = bn(x)
    wide = x.astype(np.float64)
    np.testing.assert_allclose(y, (wide - wide.mean(0)) / wide.std(0), rtol=1e-5, atol=1e-5)


@claim("eval mode ignores `virtual_batch_size`, also without running statistics")
def check_ghost_eval():
    x = random_input(np.random.default_rng(6), (6, 3), np.float32)
    ghost = cbn.BatchNorm1d(3, track_running_stats=False, virtual_batch_size=4).eval()
    np.testing.assert_array_equal(ghost(x), cbn.BatchNorm1d(3, track_running_stats=False).eval()(x))


@claim("a state dict without `num_batches_tracked` (checkpoints from before PyTorch 0.4.1) loads, also with `strict=True`, and the count keeps its value")
def check_missing_count():
    bn = cbn.BatchNorm1d(3)
    bn.num_batches_tracked = 7
    state = bn.state_dict()
    del state["num_batches_tracked"]
    assert bn.load_state_dict(state).missing_keys == ["num_batches_tracked"]
    assert int(bn.num_batches_tracked) == 7


@claim("`load_state_dict` converts floating and integer values to `param_dtype`, rounding to nearest as PyTorch's copy does; it refuses values that would overflow it, non-finite values, a negative `running_var` and a `num_batches_tracked` that is not a non-negative integer within int64.")
def check_state_dict_conversion():
    bn = cbn.BatchNorm1d(3)
    bn.load_state_dict({"weight": [0.1, 0.2, 0.3], "running_mean": np.array([1, 2, 2 ** 24 + 1])},
                       strict=False)
    np.testing.assert_array_equal(bn.weight, np.float32([0.1, 0.2, 0.3]))
    np.testing.assert_array_equal(bn.running_mean, np.float32([1, 2, 2 ** 24]))
    before = bn.state_dict()
    for key, value in [("bias", [1e39, 0, 0]), ("bias", [np.nan, 0, 0]),
                       ("running_var", [-1.0, 1, 1]), ("num_batches_tracked", -1),
                       ("num_batches_tracked", 2 ** 63), ("num_batches_tracked", 2.5)]:
        with pytest.raises(ValueError, match=re.escape(f"state_dict[{key!r}]")):
            bn.load_state_dict({key: value}, strict=False)
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


@claim("A shallow copy shares weight, bias, running statistics, the count and the lock; its mode, saved forward and gradients are its own.")
def check_shallow_copy():
    bn = cbn.BatchNorm1d(3)
    twin = copy.copy(bn)
    x = np.random.default_rng(9).standard_normal((4, 3)).astype(np.float32)
    bn(x)
    bn.backward(x)
    twin.eval()
    assert bn.training and twin._last_forward is None and twin.grad_weight is None
    twin.train()(x + 1)
    assert int(bn.num_batches_tracked) == 2 and bn._state_lock is twin._state_lock
    assert all(getattr(bn, k) is getattr(twin, k)
               for k in ("weight", "bias", "running_mean", "running_var"))


@claim("The ops follow one rule, whatever the communicator's class: cbn passes `mpi4py.MPI.SUM` and `mpi4py.MPI.MAX` when `mpi4py.MPI` has been imported in the process, else `np.add` and `np.maximum`.")
def check_communicator_ops():
    import sys

    from fake_mpi import FakeWorld, Forwarding

    class Recording(Forwarding):   # not an mpi4py communicator: the ops must not depend on that
        def __init__(self):
            super().__init__(FakeWorld(1).comm(0))
            self.ops = []

        def Get_size(self):   # beyond 4, where the opening is an Allreduce
            return 5

        def Allreduce(self, sendbuf, recvbuf, op):
            self.ops.append(op)
            recvbuf[...] = sendbuf

    class FakeMPI:
        SUM, MAX = object(), object()

    saved = sys.modules.pop("mpi4py.MPI", None)
    try:
        for module, expected in ((None, np.add), (FakeMPI, FakeMPI.SUM)):
            if module is not None:
                sys.modules["mpi4py.MPI"] = module
            comm = Recording()
            cbn.allreduce_gradients([np.ones(3)], comm)
            assert comm.ops == [expected] * 2   # the opening, then the float64 values
    finally:
        sys.modules.pop("mpi4py.MPI", None)
        if saved is not None:
            sys.modules["mpi4py.MPI"] = saved


@claim("Every operation opens with a message of one size and type whatever the options, so ranks that disagree on `num_features`, `virtual_batch_size`, dtype, `param_dtype`, layout, `affine`, `track_running_stats`, `momentum`, `eps`, `bias_correction` or `activation` all raise the same `ValueError`, with nothing changed on any rank.")
def check_disagreeing_ranks():
    from fake_mpi import run_ranks
    from sync_cases import disagreement_message, forward_with_disagreeing_option

    for option, first, others in [("num_features", 3, 4), ("virtual_batch_size", None, 2),
                                  ("eps", 1e-5, 1e-3)]:
        messages, _ = run_ranks(3, lambda rank, comm: forward_with_disagreeing_option(
            comm, option, first, others))   # each checks its layer did not change
        assert messages == [disagreement_message(option, [first, others, others])] * 3


@claim("infinite inputs give infinite outputs without it, also in place (`bn(x, out=x)`, `bn.backward(dy, out=dy)`): the kernels tell the two apart before they write over the input.")
def check_infinite_inputs_in_place():
    x = np.array([[np.inf, 1], [2, 2], [-np.inf, 3]], np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bn = cbn.BatchNorm1d(2, dtype=np.float16).eval()
        kept = x.copy()
        assert np.isposinf(bn(x, out=x)[0, 0]) and np.isneginf(x[2, 0])
        bn(kept)   # a forward that keeps its input, for the backward
        dy = np.array([[np.inf, 1], [2, 2], [3, 3]], np.float16)
        assert np.isposinf(bn.backward(dy, out=dy)[0, 0])
    with pytest.warns(RuntimeWarning, match="beyond float16's range"):
        bn.weight = np.full(2, 4.0, np.float32)
        bn(np.full((2, 2), 6e4, np.float16))


@claim("like PyTorch, `functional.batch_norm` ignores it in eval mode")
def check_momentum_eval():
    x = np.ones((2, 3), np.float32)
    F.batch_norm(x, np.zeros(3, np.float32), np.ones(3, np.float32), momentum=5.0)


@claim("**σ ← σ + α(σ_B − σ)**")
def check_renorm_sigma():
    x = random_input(np.random.default_rng(8), (4, 3), np.float64)
    bn = cbn.BatchRenorm1d(3, dtype=np.float64, momentum=0.5)
    bn(x)
    sigma = 0.5 * np.sqrt(1 + 1e-5) + 0.5 * np.sqrt(x.var(0) + 1e-5)
    np.testing.assert_allclose(bn.running_var, sigma ** 2 - 1e-5, rtol=1e-12)


@claim("training statistics come from each run of k consecutive rows (x[i·k:(i+1)·k])")
def check_ghost_rows():
    x = random_input(np.random.default_rng(9), (8, 2), np.float64)
    y = cbn.BatchNorm1d(2, dtype=np.float64, virtual_batch_size=4)(x)
    first = x[:4]
    np.testing.assert_allclose(y[:4], (first - first.mean(0)) / np.sqrt(first.var(0) + 1e-5), rtol=1e-12)


@claim("Statistics of finite data stay finite and right wherever the variance fits the dtype")
def check_finite_statistics():
    x = (np.random.default_rng(10).standard_normal((40, 4, 3)) * 1.5e19).astype(np.float32)
    _, mean, invstd = F.batch_norm_forward(x)
    assert np.isfinite(mean).all() and np.isfinite(invstd).all()


@claim("Training mode normalises with the batch mean and biased variance and stores the unbiased variance in `running_var`")
def check_training_statistics():
    x = random_input(np.random.default_rng(11), (5, 3), np.float64)
    bn = cbn.BatchNorm1d(3, dtype=np.float64, momentum=1.0)
    np.testing.assert_allclose(bn(x), (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, x.var(0, ddof=1), rtol=1e-12)


@claim("its backward is the diagonal `dx = dy * weight / sqrt(running_var + eps)`")
def check_eval_backward():
    rng = np.random.default_rng(12)
    bn = cbn.BatchNorm1d(3, dtype=np.float64).eval()
    bn.weight[...] = [0.5, 2.0, -1.0]
    bn.running_var[...] = [0.25, 4.0, 1.0]
    x, dy = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    bn(x)
    np.testing.assert_allclose(bn.backward(dy), dy * bn.weight / np.sqrt(bn.running_var + 1e-5),
                               rtol=1e-12)


@claim("an NCHW array stored channels-last (PyTorch's `channels_last`) is normalised without a copy, and the output has the input's memory order")
def check_channels_last_storage():
    x = np.ascontiguousarray(random_input(np.random.default_rng(13), (2, 4, 3, 5), np.float32)
                             .transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    y = cbn.BatchNorm2d(4)(x)
    assert y.strides == x.strides
    np.testing.assert_allclose(y, cbn.BatchNorm2d(4)(np.ascontiguousarray(x)), rtol=1e-5, atol=1e-6)


@claim("Strided views (e.g. `x[::2]`, negative strides) are read in place")
def check_strided_views():
    base = random_input(np.random.default_rng(14), (8, 3, 4, 4), np.float64)
    for view in (base[::2], base[:, :, ::-1]):
        np.testing.assert_array_equal(cbn.BatchNorm2d(3, dtype=np.float64)(view),
                                      cbn.BatchNorm2d(3, dtype=np.float64)(view.copy()))


@claim("Inputs must have the layer's dtype (float32, float64, float16 or bfloat16): nothing is cast silently.")
def check_no_cast():
    with pytest.raises(TypeError, match="x: expected dtype float32, got float64"):
        cbn.BatchNorm1d(3)(np.ones((4, 3)))
    with pytest.raises(TypeError, match="x: expected dtype float16, got float32"):
        cbn.BatchNorm1d(3, dtype=np.float16)(np.ones((4, 3), np.float32))


@claim("Results are bitwise identical for any thread count")
def check_threads_bitwise():
    x = random_input(np.random.default_rng(15), (8, 16, 32, 32), np.float32)  # > 64k values
    results = []
    for n in (1, 2):
        cbn.set_num_threads(n)
        try:
            bn = cbn.BatchNorm2d(16)
            results.append((bn(x), bn.backward(x), bn.running_var.copy()))
        finally:
            cbn.set_num_threads(None)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@claim("one pickled between a forward and its backward carries the input that backward needs")
def check_pickle_between():
    import pickle
    bn, _, dy = forward_once(16, (5, 3))
    clone = pickle.loads(pickle.dumps(bn))
    np.testing.assert_array_equal(clone.backward(dy), bn.backward(dy))


@claim("print(bn.running_mean) # after one step: exactly this batch's mean")
def check_debiased_first_step():
    x = random_input(np.random.default_rng(17), (10, 4), np.float32) + 5
    bn = cbn.BatchNorm1d(4, bias_correction=True)
    bn(x)
    np.testing.assert_array_equal(bn.running_mean, F.batch_norm_forward(x)[1].astype(np.float32))


@claim("and `num_batches_tracked` is restored to its value on entry. If the block raises (or a layer saw no batch), every layer is left exactly as it was.")
def check_precise_entry():
    rng = np.random.default_rng(18)
    bn = cbn.BatchNorm1d(3)
    bn(random_input(rng, (4, 3), np.float32))
    with cbn.precise_statistics(bn):
        bn(random_input(rng, (4, 3), np.float32))
    assert int(bn.num_batches_tracked) == 1
    before = bn.state_dict()
    with pytest.raises(KeyError):
        with cbn.precise_statistics(bn):
            bn(random_input(rng, (4, 3), np.float32))
            raise KeyError
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


@claim("return new (weight, bias) such that the layer followed by `bn` in eval mode equals the folded layer")
def check_folding():
    rng = np.random.default_rng(19)
    bn = cbn.BatchNorm1d(4, dtype=np.float64).eval()
    bn.running_mean[...], bn.running_var[...] = rng.standard_normal(4), rng.uniform(0.5, 2, 4)
    w, b, x = rng.standard_normal((4, 6)), rng.standard_normal(4), rng.standard_normal((5, 6))
    w2, b2 = cbn.fold_linear(w, b, bn)
    np.testing.assert_allclose(x @ w2.T + b2, bn(x @ w.T + b), rtol=1e-12, atol=1e-12)


@claim("NaN passes through the forward (as `torch.relu`) and stops the gradient.")
def check_relu_nan():
    x = random_input(np.random.default_rng(20), (4, 2, 3), np.float32)
    x[0, 0, 0] = np.nan
    bn = cbn.BatchNorm1d(2, activation="relu").eval()
    y = bn(x)
    assert np.isnan(y[0, 0, 0])
    assert bn.backward(np.ones_like(x))[0, 0, 0] == 0


@claim("their output is NaN as in PyTorch, other channels are unaffected, `num_batches_tracked` still counts, and a `RuntimeWarning` names the channels.")
def check_nan_batch():
    x = random_input(np.random.default_rng(21), (6, 3), np.float32)
    x[2, 1] = np.nan
    bn = cbn.BatchNorm1d(3)
    with pytest.warns(RuntimeWarning, match=r"channel\(s\) \[1\]"):
        y = bn(x)
    assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, [0, 2]]).all()
    assert int(bn.num_batches_tracked) == 1 and bn.running_mean[1] == 0


@claim("`state_dict()` returns copies, not views of the live arrays.")
def check_state_dict_copies():
    bn = cbn.BatchNorm1d(3)
    bn.state_dict()["running_mean"][...] = 7
    np.testing.assert_array_equal(bn.running_mean, 0)


@claim("The layer keeps a reference to the last input for `backward`; modifying that array in place before `backward` changes the gradient.")
def check_input_reference():
    bn, x, dy = forward_once(22)
    before = bn.backward(dy)
    x *= 2
    assert not np.array_equal(bn.backward(dy), before)


@claim("With one process, or in eval mode (also with `track_running_stats=False`, as in PyTorch: each process then normalises with its own shard's statistics), it is `BatchNorm` and communicates nothing.")
def check_sync_one_process():
    from fake_mpi import FakeWorld
    x = random_input(np.random.default_rng(23), (4, 3, 2, 2), np.float32)
    sync = cbn.SyncBatchNorm(3, FakeWorld(1).comm(0))
    np.testing.assert_array_equal(sync(x), cbn.BatchNorm2d(3)(x))


CLAIMS = [v for k, v in sorted(globals().items()) if k.startswith("check_")]


@pytest.mark.parametrize("check", CLAIMS, ids=[c.__name__[6:] for c in CLAIMS])
def test_readme_claim(check):
    sentence = " ".join(check.readme_sentence.split())
    assert sentence in README, f"the README no longer says: {sentence!r}"
    check()


def test_every_claim_is_distinct():
    sentences = [c.readme_sentence for c in CLAIMS]
    assert len(set(sentences)) == len(sentences) and not any(re.search(r"\s{2,}", s) for s in sentences)
