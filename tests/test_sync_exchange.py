"""SyncBatchNorm's forward exchange (cbn._exchange): one Allreduce of a size
independent of the process count in the steady state, statistics as exact as
one process's, the same bits on every rank, and the rounds that recover
when a frame does not fit."""
import copy

import numpy as np
import pytest

import cbn
from cbn import _fixed_point
from fake_mpi import CountingComm, FakeWorld, run_ranks

C = 5


def shards(x, size):
    return np.array_split(x, size)


def exact_statistics(x):
    """Per-channel mean and unbiased variance of NCHW x, in extended precision."""
    flat = x.astype(np.longdouble).transpose(1, 0, 2, 3).reshape(x.shape[1], -1)
    mean = flat.mean(axis=1)
    return mean, ((flat - mean[:, None]) ** 2).sum(axis=1) / (flat.shape[1] - 1)


def run_steps(size, batches, dtype=np.float64, rotate=True, replace_on=None, **options):
    """Train a SyncBatchNorm on every rank over batches; per rank: outputs,
    running statistics and the bytes of each forward's Allreduces.
    replace_on=(step, rank, how): before that step, that rank's layer is
    replaced by a new one ("new") or by a copy taken after the first step
    ("stale"), whose frame is not the others'."""
    def rank_fn(rank, comm):
        counting = CountingComm(comm)
        bn = cbn.SyncBatchNorm(C, counting, dtype=dtype, momentum=1.0, **options)
        outputs, sent = [], []
        for step, x in enumerate(batches):
            if replace_on is not None and replace_on[:2] == (step, rank):
                bn = (cbn.SyncBatchNorm(C, counting, dtype=dtype, momentum=1.0, **options)
                      if replace_on[2] == "new" else stale)
            before = len(counting.sent)
            outputs.append(bn(shards(x, size)[rank]))
            sent.append(counting.sent[before:])
            if step == 0:
                stale = copy.copy(bn)
                stale._exchange_frame = bn._exchange_frame
        return outputs, bn.running_mean.copy(), bn.running_var.copy(), sent

    results, _ = run_ranks(size, rank_fn, rotate=rotate)
    return results


def assert_same_bits_on_every_rank(results):
    for _, mean, var, _ in results[1:]:
        np.testing.assert_array_equal(mean, results[0][1])
        np.testing.assert_array_equal(var, results[0][2])


@pytest.mark.parametrize("virtual_batch_size", [None, 2])
def test_steady_state_is_one_allreduce_whose_size_does_not_depend_on_the_process_count(
        rng, virtual_batch_size):
    sizes = set()
    for size in range(2, 9):
        batches = [rng.standard_normal((4 * size, C, 3, 3)) * 2 + 3 for _ in range(4)]
        results = run_steps(size, batches, virtual_batch_size=virtual_batch_size)
        for _, _, _, sent in results:
            assert len(sent[0]) > 1        # the first forward finds a frame
            for step in sent[1:]:
                assert len(step) == 1      # then one collective per forward
                sizes.add(step[0])
    fields = 3 if virtual_batch_size else 2
    assert sizes == {(10 + 2 * fields * C) * 8}   # header + two int64 limbs per value


@pytest.mark.parametrize("size", [2, 3, 5, 8])
def test_large_mean_float64_within_1e_12_of_the_exact_statistics(rng, size):
    batches = [rng.standard_normal((24, C, 3, 3)) * 0.5 + 1e4 for _ in range(2)]
    results = run_steps(size, batches)
    mean, var = exact_statistics(batches[-1])
    assert_same_bits_on_every_rank(results)
    assert np.max(np.abs(results[0][2] - var) / var) < 1e-12
    assert np.max(np.abs(results[0][1] - mean) / np.sqrt(var)) < 1e-10   # ulp(1e4) / 0.5


def test_large_mean_float32_as_accurate_as_one_process(rng):
    batches = [(rng.standard_normal((24, C, 3, 3)) + 1e4).astype(np.float32) for _ in range(2)]
    results = run_steps(4, batches, dtype=np.float32)
    single = cbn.BatchNorm2d(C, momentum=1.0)
    for x in batches:
        y = single(x)
    _, var = exact_statistics(batches[-1])
    assert_same_bits_on_every_rank(results)
    single_error = np.abs(single.running_var - var) / var
    sync_error = np.abs(results[0][2] - var) / var
    assert np.all(sync_error <= np.maximum(single_error, 2.0 ** -24))
    np.testing.assert_allclose(np.concatenate([r[0][-1] for r in results]), y, atol=1e-4)


def test_a_jump_of_the_mean_and_the_scale_takes_more_rounds_and_stays_exact(rng):
    base = rng.standard_normal((3, 16, C, 3, 3))
    batches = [base[0], base[1] * 1e-3 + 1e7, base[2] * 1e20]
    results = run_steps(3, batches)
    assert_same_bits_on_every_rank(results)
    assert all(len(step) > 1 for step in results[0][3])
    mean, var = exact_statistics(batches[-1])
    assert np.max(np.abs(results[0][2] - var) / var) < 1e-12


@pytest.mark.parametrize("how", ["new", "stale"])
def test_a_rank_without_the_others_frame_makes_every_rank_find_one_again(rng, how):
    batches = [rng.standard_normal((12, C, 3, 3)) + 2 for _ in range(4)]
    results = run_steps(3, batches, replace_on=(2, 2, how))
    for _, _, _, sent in results:
        assert [len(step) for step in sent] == [3, 1, 3, 1]
    single = cbn.BatchNorm2d(C, dtype=np.float64, momentum=1.0)
    for x in batches:
        y = single(x)
    np.testing.assert_allclose(np.concatenate([r[0][-1] for r in results]), y, rtol=1e-12,
                               atol=1e-12)
    assert_same_bits_on_every_rank(results)


def test_the_frame_travels_with_a_copy_and_a_pickle(rng):
    import pickle
    batches = [rng.standard_normal((8, C, 3, 3)) for _ in range(2)]

    def rank_fn(rank, comm):
        counting = CountingComm(comm)
        bn = cbn.SyncBatchNorm(C, counting, dtype=np.float64)
        bn(shards(batches[0], 2)[rank])
        twin = pickle.loads(pickle.dumps(copy.deepcopy(bn)))
        twin.comm = counting
        before = len(counting.sent)
        twin(shards(batches[1], 2)[rank])
        return len(counting.sent) - before

    assert run_ranks(2, rank_fn)[0] == [1, 1]


def test_more_processes_than_the_fixed_point_holds_are_refused():
    class Huge:
        def Get_size(self):
            return _fixed_point.MAX_PROCESSES + 1

        def Get_rank(self):
            return 0

        def Allreduce(self, sendbuf, recvbuf, op=np.add):
            raise AssertionError("communicated")

    bn = cbn.SyncBatchNorm(2, Huge())
    before = bn.state_dict()
    with pytest.raises(ValueError, match=r"comm: expected at most 524288 processes, got 524289"):
        bn(np.ones((3, 2), np.float32))
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_every_rank_gets_the_same_bits_where_float_sums_would_differ(rng):
    # the premise of the fixed point: summing these float64s in each rank's
    # order gives different bits on different ranks
    values = rng.standard_normal((7, 64)) * 10.0 ** rng.integers(-8, 8, (7, 1))
    world = FakeWorld(7, rotate=True)
    sums, _ = run_ranks(7, lambda rank, comm: _float_sum(world.comm(rank), values[rank]))
    assert any(not np.array_equal(s, sums[0]) for s in sums[1:])
    batches = [values.reshape(7, 64)[None].repeat(2, 0).reshape(14, 64)[:, :C * 9]
               .reshape(14, C, 3, 3) * 10.0 ** rng.integers(-8, 8, (14, 1, 1, 1))]
    assert_same_bits_on_every_rank(run_steps(7, batches * 3))


def _float_sum(comm, row):
    total = np.empty_like(row)
    comm.Allreduce(row, total)
    return total
