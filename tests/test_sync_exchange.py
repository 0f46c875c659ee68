"""SyncBatchNorm's forward exchange (cbn._exchange): by fixed-point sums, one
Allreduce of a size independent of the process count in the steady state;
by Allgather up to GATHER_MAX_PROCESSES processes. Statistics as exact as
one process's, the same bits on every rank, and the rounds that recover
when a frame does not fit."""
import copy
import pickle

import numpy as np
import pytest

import cbn
from cbn import _collectives, _exchange, _sums
from fake_mpi import CountingComm, run_ranks

C = 5


@pytest.fixture
def by_sums(monkeypatch):
    monkeypatch.setattr(_collectives, "GATHER_MAX_PROCESSES", 0)


def shards(x, size):
    return np.array_split(x, size)


def exact_statistics(x):
    """Per-channel mean and unbiased variance of NCHW x, in extended precision."""
    flat = x.astype(np.longdouble).transpose(1, 0, 2, 3).reshape(x.shape[1], -1)
    mean = flat.mean(axis=1)
    return mean, ((flat - mean[:, None]) ** 2).sum(axis=1) / (flat.shape[1] - 1)


def run_steps(size, batches, dtype=np.float64, rotate=True, replace_on=None, **options):
    """Train a SyncBatchNorm on every rank over batches; per rank: outputs,
    running statistics and each forward's collectives (name, bytes sent).
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
def test_the_forward_exchange_sends_the_same_bytes_whatever_the_process_count(
        rng, virtual_batch_size):
    virtual = virtual_batch_size is not None
    opening = _collectives.OPENING_VALUES * 8   # C = 5: every row fits the opening
    for size in range(2, 9):
        batches = [rng.standard_normal((4 * size, C, 3, 3)) * 2 + 3 for _ in range(4)]
        results = run_steps(size, batches, virtual_batch_size=virtual_batch_size)
        for _, _, _, sent in results:
            if size <= _collectives.GATHER_MAX_PROCESSES:   # one row each, P received
                assert sent == [[("Allgather", opening)]] * 4
                continue
            # the first forward finds a frame (sums, maxima, sums), then one collective
            assert sent[0] == [("Allreduce", opening),
                               ("Allreduce", _exchange.max_layout(C, virtual).size * 8),
                               ("Allreduce", _exchange.sum_layout(C, virtual).size * 8)]
            assert sent[1:] == [[("Allreduce", opening)]] * 3


@pytest.mark.parametrize("virtual_batch_size", [None, 2])
@pytest.mark.parametrize("size", [2, 5])
def test_a_payload_longer_than_the_opening_follows_in_one_more_collective(
        rng, size, virtual_batch_size):
    wide = 300   # beyond the opening both ways (2C + 11 and 4C + 20 values)
    layout = (_exchange.gather_layout(wide, virtual_batch_size is not None) if size <= 4
              else _exchange.sum_layout(wide, virtual_batch_size is not None))
    rest = (layout.size - _collectives.OPENING_VALUES) * 8
    name = "Allgather" if size <= 4 else "Allreduce"

    def rank_fn(rank, comm):
        counting = CountingComm(comm)
        bn = cbn.SyncBatchNorm(wide, counting, dtype=np.float64,
                               virtual_batch_size=virtual_batch_size)
        single = cbn.BatchNorm1d(wide, dtype=np.float64, virtual_batch_size=virtual_batch_size)
        for _ in range(2):
            before = len(counting.sent)
            y = bn(np.array_split(x, size)[rank])
            single(x)
        np.testing.assert_allclose(bn.running_var, single.running_var, rtol=1e-12)
        return counting.sent[before:], y

    x = rng.standard_normal((4 * size, wide)) + 5
    results, _ = run_ranks(size, rank_fn)
    for sent, _ in results:
        assert sent == [(name, _collectives.OPENING_VALUES * 8), (name, rest)]


@pytest.mark.parametrize("size", [2, 3, 5, 8])
def test_large_mean_float64_within_1e_12_of_the_exact_statistics(rng, size, exchange_path):
    batches = [rng.standard_normal((24, C, 3, 3)) * 0.5 + 1e4 for _ in range(2)]
    results = run_steps(size, batches)
    mean, var = exact_statistics(batches[-1])
    assert_same_bits_on_every_rank(results)
    assert np.max(np.abs(results[0][2] - var) / var) < 1e-12
    assert np.max(np.abs(results[0][1] - mean) / np.sqrt(var)) < 1e-10   # ulp(1e4) / 0.5


def test_large_mean_float32_as_accurate_as_one_process(rng, exchange_path):
    batches = [(rng.standard_normal((24, C, 3, 3)) + 1e4).astype(np.float32) for _ in range(2)]
    results = run_steps(4, batches, dtype=np.float32)
    single = cbn.BatchNorm2d(C, momentum=1.0)
    for x in batches:
        y = single(x)
    _, var = exact_statistics(batches[-1])
    assert_same_bits_on_every_rank(results)
    # both within a few float32 roundings (the kernels sum blocks of float32
    # data in float32, shifted), where a variance that collapsed with the
    # large mean would be off by far more
    for running_var in (single.running_var, results[0][2]):
        assert np.all(np.abs(running_var - var) / var < 2.0 ** -21)
    np.testing.assert_allclose(np.concatenate([r[0][-1] for r in results]), y, atol=1e-4)


def test_a_jump_of_the_mean_and_the_scale_takes_more_rounds_and_stays_exact(rng, by_sums):
    base = rng.standard_normal((3, 16, C, 3, 3))
    batches = [base[0], base[1] * 1e-3 + 1e7, base[2] * 1e20]
    results = run_steps(3, batches)
    assert_same_bits_on_every_rank(results)
    # each jump: sums outside the previous windows, maxima, sums again
    assert [len(step) for step in results[0][3]] == [3, 3, 3]
    mean, var = exact_statistics(batches[-1])
    assert np.max(np.abs(results[0][2] - var) / var) < 1e-12


@pytest.mark.parametrize("how", ["new", "stale"])
def test_a_rank_without_the_others_frame_makes_every_rank_find_one_again(rng, how, by_sums):
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


def test_the_frame_travels_with_a_copy_and_a_pickle(rng, by_sums):
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
            return _sums.MAX_PROCESSES + 1

        def Get_rank(self):
            return 0

        def Allreduce(self, sendbuf, recvbuf, op=np.add):
            raise AssertionError("communicated")

        Allgather = Allreduce

    bn = cbn.SyncBatchNorm(2, Huge())
    before = bn.state_dict()
    with pytest.raises(ValueError, match=r"comm: expected at most 524288 processes, got 524289"):
        bn(np.ones((3, 2), np.float32))
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_every_rank_gets_the_same_bits_where_float_sums_would_differ(rng, exchange_path):
    # the premise: these float64s summed in each rank's order give different
    # bits on different ranks (as an Allreduce of floats may)
    values = rng.standard_normal((7, C * 9)) * 10.0 ** rng.integers(-8, 8, (7, 1))

    def float_sum(rank, comm):
        total = np.empty_like(values[rank])
        comm.Allreduce(values[rank], total)
        return total

    sums, _ = run_ranks(7, float_sum, rotate=True)
    assert any(not np.array_equal(s, sums[0]) for s in sums[1:])
    batch = np.repeat(values.reshape(7, C, 3, 3), 2, axis=0)
    assert_same_bits_on_every_rank(run_steps(7, [batch * 10.0 ** k for k in (0, 3, -3)]))


def test_a_channel_not_finite_on_one_rank_is_not_finite_on_every_rank(rng, exchange_path):
    batches = [rng.standard_normal((10, C, 3, 3)) for _ in range(3)]
    batches[1][7, 2, 1, 1] = np.nan   # on the last rank's shard, channel 2, second step
    batches[1][0, 4, 0, 0] = np.inf   # on the first rank's, channel 4
    batches[1][2, 4, 0, 0] = -np.inf

    def rank_fn(rank, comm):
        bn = cbn.SyncBatchNorm(C, comm, dtype=np.float64, momentum=0.5)
        ys = [bn(shards(x, 5)[rank]) for x in batches]
        return ys, bn.running_mean.copy(), bn.running_var.copy()

    with pytest.warns(RuntimeWarning, match=r"channel\(s\) \[2, 4\]"):
        results, _ = run_ranks(5, rank_fn, rotate=True)
    single = cbn.BatchNorm2d(C, dtype=np.float64, momentum=0.5)
    with pytest.warns(RuntimeWarning, match=r"channel\(s\) \[2, 4\]"):
        ys = [single(x) for x in batches]
    for step, y in enumerate(ys):
        synced = np.concatenate([r[0][step] for r in results])
        np.testing.assert_allclose(synced, y, rtol=1e-12, atol=1e-12)   # NaN where y is
    for _, mean, var in results:
        np.testing.assert_array_equal(mean, results[0][1])
        np.testing.assert_allclose(var, single.running_var, rtol=1e-12)


@pytest.mark.parametrize("scale", [0.0, 1e-150, 1e150])
def test_zero_tiny_and_huge_channels_are_exact_in_one_allreduce_per_forward(rng, scale, by_sums):
    batches = [rng.standard_normal((15, C, 3, 3)) for _ in range(4)]
    for x in batches:
        x[:, 1] *= scale   # one channel all zeros, or of tiny or huge values
    results = run_steps(5, batches)
    assert_same_bits_on_every_rank(results)
    assert [len(step) for step in results[0][3]] == [3, 1, 1, 1]
    mean, var = exact_statistics(batches[-1])
    if scale:
        assert np.max(np.abs(results[0][2] - var) / var) < 1e-12
    else:
        assert results[0][1][1] == 0 and results[0][2][1] == 0


def test_changing_virtual_batch_size_between_forwards_needs_a_new_frame(rng, by_sums):
    batches = [rng.standard_normal((20, C, 3, 3)) for _ in range(3)]

    def rank_fn(rank, comm):
        bn = cbn.SyncBatchNorm(C, comm, dtype=np.float64, momentum=1.0)
        bn(shards(batches[0], 5)[rank])
        bn.virtual_batch_size = 2
        bn(shards(batches[1], 5)[rank])
        bn.virtual_batch_size = None
        bn(shards(batches[2], 5)[rank])
        return bn.running_var.copy()

    results, _ = run_ranks(5, rank_fn)
    single = cbn.BatchNorm2d(C, dtype=np.float64, momentum=1.0)
    for x in batches:
        single(x)
    for var in results:
        np.testing.assert_allclose(var, single.running_var, rtol=1e-12)


def test_a_rank_that_raises_after_the_exchange_is_caught_up_at_the_next_forward(rng, by_sums):
    batches = [rng.standard_normal((15, C, 3, 3)) for _ in range(4)]

    def rank_fn(rank, comm):
        counting = CountingComm(comm)
        bn = cbn.SyncBatchNorm(C, counting, dtype=np.float64, momentum=1.0)
        collectives = []
        for step, x in enumerate(batches):
            before = len(counting.sent)
            if step == 1 and rank == 3:   # e.g. a warning turned into an error, on this rank
                bn._stage_running_update = _raise
                with pytest.raises(RuntimeError, match="after the exchange"):
                    bn(shards(x, 5)[rank])
                del bn._stage_running_update
            else:
                bn(shards(x, 5)[rank])
            collectives.append(len(counting.sent) - before)
        return collectives, bn.running_var.copy()

    results, _ = run_ranks(5, rank_fn)
    # rank 3 kept its old frame: the fingerprints differ, every rank finds one again
    assert [r[0] for r in results] == [[3, 1, 3, 1]] * 5
    for _, var in results[1:]:
        np.testing.assert_array_equal(var, results[0][1])


def _raise(*args):
    raise RuntimeError("after the exchange")


def test_shards_of_every_scale_find_a_frame_and_agree(rng, by_sums):
    """Shards far apart in mean and scale, empty ones among them: the frame
    from the maxima holds every value (no rank is left outside), and the
    result is one process's, with the same bits on every rank."""
    for _ in range(12):
        sizes = rng.integers(0, 4, 6)
        sizes[rng.integers(6)] += 2
        rows = [rng.standard_normal((n, C, 2)) * 10.0 ** rng.integers(-150, 150, (1, C, 1))
                + 10.0 ** rng.integers(-150, 150, (1, C, 1)) * rng.choice([-1, 1], (1, C, 1))
                for n in sizes]
        x = np.concatenate(rows)

        def rank_fn(rank, comm):
            bn = cbn.SyncBatchNorm(C, comm, dtype=np.float64, momentum=1.0)
            bn(rows[rank])
            return bn.running_mean.copy(), bn.running_var.copy()

        results, _ = run_ranks(6, rank_fn, rotate=True)
        single = cbn.BatchNorm1d(C, dtype=np.float64, momentum=1.0)
        single(x)
        for mean, var in results:
            np.testing.assert_array_equal(mean, results[0][0])
            np.testing.assert_array_equal(var, results[0][1])
        np.testing.assert_allclose(results[0][1], single.running_var, rtol=1e-12)
        error = np.abs(results[0][0] - single.running_mean)
        assert np.all(error <= 1e-12 * (np.abs(single.running_mean)
                                        + np.sqrt(single.running_var)))
