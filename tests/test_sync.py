"""SyncBatchNorm without MPI: the merge, and the layer over an in-process
communicator (tests/mpi runs the same checks under mpiexec)."""
import sys
import warnings

import numpy as np
import pytest

import cbn
from cbn._moments import Moments, merge_all
from fake_mpi import FakeWorld, Forwarding, run_ranks
from helpers import DTYPES, random_input
from sync_cases import (
    DISAGREEMENTS,
    check_against_single_process,
    check_backward_and_gradient_cases,
    disagreement_message,
    forward_with_disagreeing_option,
)


def test_chan_merge_of_random_partitions_with_empty_parts(rng):
    x = rng.standard_normal((50, 4)) * 3 + 7
    for _ in range(20):
        cuts = np.sort(rng.integers(0, 51, size=rng.integers(1, 6)))
        parts = np.split(x, cuts)
        moments = [Moments(len(p), p.mean(axis=0) if len(p) else np.zeros(4),
                           ((p - p.mean(axis=0)) ** 2).sum(axis=0) if len(p) else np.zeros(4))
                   for p in parts]
        total = merge_all(moments)
        assert total.count == 50
        np.testing.assert_allclose(total.mean, x.mean(axis=0), rtol=1e-13)
        np.testing.assert_allclose(total.m2 / 49, x.var(axis=0, ddof=1), rtol=1e-12)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("virtual_batch_size", [None, 2])
def test_matches_single_process_batch_norm(size, layout, dtype, momentum, virtual_batch_size):
    def rank_fn(rank, comm):
        return check_against_single_process(comm, layout, dtype, momentum, steps=3,
                                            virtual_batch_size=virtual_batch_size)

    # each rank adds the others' buffers in another order, as MPI may
    results, _ = run_ranks(size, rank_fn, rotate=True)
    for state in results[1:]:  # running statistics bitwise equal on every rank
        for key, value in state.items():
            np.testing.assert_array_equal(value, results[0][key])


def test_fused_relu_and_bias_correction_over_ranks(rng, exchange_path):
    x = random_input(rng, (9, 3, 4), np.float64)
    dy = random_input(rng, (9, 3, 4), np.float64)
    single = cbn.BatchNorm1d(3, dtype=np.float64, activation="relu", bias_correction=True)
    y_ref = single(x)
    dx_ref = single.backward(dy)
    sizes = [2, 0, 7]

    def rank_fn(rank, comm):
        rows = slice(sum(sizes[:rank]), sum(sizes[:rank + 1]))
        bn = cbn.SyncBatchNorm(3, comm, dtype=np.float64, activation="relu", bias_correction=True)
        y = bn(x[rows])
        dx = bn.backward(dy[rows])
        np.testing.assert_allclose(y, y_ref[rows], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx, dx_ref[rows], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(bn.running_var, single.running_var, rtol=1e-12)

    run_ranks(3, rank_fn)


def test_one_value_per_channel_overall_raises_on_every_rank(exchange_path):
    def rank_fn(rank, comm):
        bn = cbn.SyncBatchNorm(2, comm)
        x = np.ones((1 if rank == 0 else 0, 2), np.float32)
        with pytest.raises(ValueError, match="more than 1 value per channel over all processes"):
            bn(x)
        return "raised"

    results, _ = run_ranks(3, rank_fn)
    assert results == ["raised"] * 3


def test_virtual_batches_that_would_straddle_shards_raise_on_every_rank(exchange_path):
    def rank_fn(rank, comm):
        bn = cbn.SyncBatchNorm(2, comm, virtual_batch_size=2)
        x = np.arange(2.0 * (3 if rank == 0 else 4), dtype=np.float32).reshape(-1, 2)
        before = bn.state_dict()
        with pytest.raises(ValueError) as info:
            bn(x)
        for key, value in bn.state_dict().items():
            np.testing.assert_array_equal(value, before[key])
        return str(info.value)

    results, _ = run_ranks(2, rank_fn)
    assert "multiple of virtual_batch_size=2, got 3" in results[0]
    assert "rejected on rank 0" in results[1]


def test_bad_out_on_one_rank_raises_on_every_rank(rng, exchange_path):
    x = random_input(rng, (4, 3), np.float32)

    def rank_fn(rank, comm):
        bn = cbn.SyncBatchNorm(3, comm)
        out = np.empty((4, 3), np.float64 if rank == 1 else np.float32)
        with pytest.raises((TypeError, ValueError)) as info:
            bn(x, out=out)
        return str(info.value)

    results, _ = run_ranks(2, rank_fn)
    assert "rejected on rank 1" in results[0]
    assert "out: expected a float32 array" in results[1]


def test_bad_input_on_one_rank_raises_on_every_rank(exchange_path):
    def rank_fn(rank, comm):
        bn = cbn.SyncBatchNorm(2, comm)
        x = np.ones((4, 2), np.float64 if rank == 1 else np.float32)
        with pytest.raises((TypeError, ValueError)) as info:
            bn(x)
        return type(info.value).__name__, str(info.value)

    results, _ = run_ranks(2, rank_fn)
    assert results[1][0] == "TypeError" and "expected dtype float32" in results[1][1]
    assert results[0][0] == "ValueError" and "rejected on rank 1" in results[0][1]


def test_eval_and_single_rank_communicate_nothing(rng):
    class Silent:  # a communicator that must not be used
        def Get_size(self):
            return 1

        def Get_rank(self):
            return 0

        def Allgather(self, *args):
            raise AssertionError("communicated")

        Allreduce = Allgather

    x = random_input(rng, (6, 3, 5), np.float32)
    bn = cbn.SyncBatchNorm(3, Silent())
    ref = cbn.BatchNorm1d(3)
    np.testing.assert_array_equal(bn(x), ref(x))
    np.testing.assert_array_equal(bn.backward(x), ref.backward(x))
    two = FakeWorld(2).comm(0)
    for tracked in (True, False):   # eval: local, no collective (would block), as PyTorch
        evaluator = cbn.SyncBatchNorm(3, two, track_running_stats=tracked).eval()
        local = cbn.BatchNorm1d(3, track_running_stats=tracked).eval()
        np.testing.assert_array_equal(evaluator(x), local(x))
        np.testing.assert_array_equal(evaluator.backward(x), local.backward(x))


def test_from_batchnorm_copies_everything(rng):
    bn = cbn.BatchNorm2d(4, momentum=0.3, layout="NHWC", dtype=np.float64, activation="relu")
    bn(random_input(rng, (3, 2, 2, 4), np.float64))
    bn.eval()
    sync = cbn.SyncBatchNorm.from_batchnorm(bn, FakeWorld(1).comm(0))
    assert (sync.momentum, sync.layout, sync.dtype, sync.activation, sync.training) == \
        (0.3, "NHWC", np.float64, "relu", False)
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(sync.state_dict()[key], value)
    assert sync.running_mean is not bn.running_mean
    with pytest.raises(TypeError, match="expected a cbn BatchNorm1d/2d/3d"):
        cbn.SyncBatchNorm.from_batchnorm(cbn.BatchRenorm1d(2), FakeWorld(1).comm(0))
    ghost = cbn.SyncBatchNorm.from_batchnorm(cbn.BatchNorm1d(4, virtual_batch_size=3),
                                             FakeWorld(1).comm(0))
    assert ghost.virtual_batch_size == 3


def test_allreduce_gradients_sums_or_averages_in_place():
    def rank_fn(rank, comm):
        bn = cbn.BatchNorm1d(2, dtype=np.float64)
        bn(np.arange(8.0).reshape(4, 2) * (rank + 1))
        bn.backward(np.ones((4, 2)) * (rank + 1))
        w = np.full((2, 3), rank + 1.0, np.float32)
        before = bn.grad_bias.copy()
        out = cbn.allreduce_gradients([bn, w], comm, average=False)
        assert out[2] is w
        return before, bn.grad_bias.copy(), w.copy()

    results, _ = run_ranks(2, rank_fn)
    total = results[0][0] + results[1][0]
    for _, grad_bias, w in results:
        np.testing.assert_allclose(grad_bias, total)
        np.testing.assert_array_equal(w, np.full((2, 3), 3.0, np.float32))

    def averaged(rank, comm):
        a = np.array([rank * 2.0])
        cbn.allreduce_gradients([a], comm)
        return a[0]

    assert run_ranks(2, averaged)[0] == [1.0, 1.0]


def test_bad_arguments():
    comm = FakeWorld(1).comm(0)
    with pytest.raises(TypeError, match="comm: expected a communicator"):
        cbn.SyncBatchNorm(3, comm=object())
    with pytest.raises(ValueError, match="virtual_batch_size: expected a positive int"):
        cbn.SyncBatchNorm(3, comm, virtual_batch_size=0)
    with pytest.raises(TypeError, match="expected cbn layers or float numpy arrays"):
        cbn.allreduce_gradients(["w"], comm)


def test_without_mpi4py_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ImportError, match=r'pip install "cbn\[mpi\]"'):
        cbn.SyncBatchNorm(3)


@pytest.mark.parametrize("virtual_batch_size", [None, 2])
def test_precise_statistics_collect_every_process_in_training_mode(rng, virtual_batch_size, exchange_path):
    batches = [random_input(rng, (n, 3, 4), np.float64) for n in (8, 12, 4)]
    whole = np.concatenate([b.transpose(1, 0, 2).reshape(3, -1) for b in batches], axis=1)

    def rank_fn(rank, comm):
        bn = cbn.SyncBatchNorm(3, comm, dtype=np.float64, virtual_batch_size=virtual_batch_size)
        with cbn.precise_statistics(bn):
            for b in batches:
                half = len(b) // 2
                bn(b[:half] if rank == 0 else b[half:])
        trained = bn.running_var.copy()
        bn.eval()
        with cbn.precise_statistics(bn):
            for b in batches:
                bn(b[:2] if rank == 0 else b[2:])
        own = np.concatenate([(b[:2] if rank == 0 else b[2:]).transpose(1, 0, 2).reshape(3, -1)
                              for b in batches], axis=1)
        np.testing.assert_allclose(bn.running_var, own.var(axis=1, ddof=1), rtol=1e-12)
        return trained

    results, _ = run_ranks(2, rank_fn)
    for var in results:
        np.testing.assert_array_equal(var, results[0])   # the same bits on every rank
        np.testing.assert_allclose(var, whole.var(axis=1, ddof=1), rtol=1e-12)


def _every_rank(size, fn):
    results, _ = run_ranks(size, lambda rank, comm: fn(comm))
    return results


@pytest.mark.parametrize("size", [2, 3, 5])
@pytest.mark.parametrize("option,first,others", DISAGREEMENTS)
def test_ranks_that_disagree_on_an_option_all_raise_the_same_error(size, option, first, others,
                                                                   exchange_path):
    messages = _every_rank(size, lambda comm: forward_with_disagreeing_option(comm, option,
                                                                               first, others))
    assert messages == [disagreement_message(option, [first] + [others] * (size - 1))] * size


def test_the_issue_s_message(exchange_path):
    messages = _every_rank(2, lambda comm: forward_with_disagreeing_option(
        comm, "virtual_batch_size", 2, 4))
    assert messages == ["virtual_batch_size: ranks disagree: 2 on rank 0, 4 on rank 1"] * 2


@pytest.mark.parametrize("size", [2, 3, 5])
def test_backward_operation_and_gradients_disagreements_raise_on_every_rank(size, exchange_path):
    check_backward_and_gradient_cases(lambda fn: _every_rank(size, fn), size)


@pytest.mark.parametrize("size", [2, 3, 5])
def test_a_forwarding_communicator_works_at_every_process_count(size):
    results, _ = run_ranks(size, lambda rank, comm: check_against_single_process(
        Forwarding(comm), "NCHW", np.float64, 0.1, steps=2))
    for state in results[1:]:
        for key, value in state.items():
            np.testing.assert_array_equal(value, results[0][key])


def test_the_ops_follow_mpi4py_being_imported_not_the_communicator_s_class(monkeypatch):
    from cbn import _collectives

    class FakeMPI:
        SUM, MAX = object(), object()

    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    assert _collectives.reduction_ops() == (np.add, np.maximum)
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", FakeMPI)
    assert _collectives.reduction_ops() == (FakeMPI.SUM, FakeMPI.MAX)


@pytest.mark.parametrize("size", [2, 5])
def test_a_warning_turned_error_before_the_exchange_makes_every_rank_raise(size, exchange_path):
    """Virtual batches are normalised before the exchange: a float16 output
    past the range on rank 0, under a filter set to "error", must not leave
    the other ranks waiting."""
    def rank_fn(rank, comm):
        bn = cbn.SyncBatchNorm(2, comm, dtype=np.float16, virtual_batch_size=2)
        x = np.random.default_rng(rank).standard_normal((4, 2)).astype(np.float16)
        if rank == 0:   # virtual batches of 2 rows: xhat = +-1, and y = 1e4 past 65504
            bn.weight = np.full(2, 1e4, np.float32)
            bn.bias = np.full(2, 6e4, np.float32)
        try:
            bn(x)
        except (RuntimeWarning, ValueError) as exc:
            return type(exc).__name__, str(exc)
        return None

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results, _ = run_ranks(size, rank_fn)
    assert results[0][0] == "RuntimeWarning" and "beyond float16's range" in results[0][1]
    assert all(r == ("ValueError", "x: expected valid inputs on every rank, got one rejected "
                     "on rank 0; nothing was computed") for r in results[1:])
