"""asv benchmarks: train forward, train forward+backward and eval forward over
the shape suite, both layouts and every dtype (bfloat16 where ml_dtypes is
installed, skipped otherwise); the two memory floors; one thread
against two; the fused ReLU against its two-step equivalent.

Built so that `asv continuous` reports changes in cbn and not the machine's
noise (asv_bench/NOTES.md, section 17, measured on a shared 2-core VM):
- inputs are made in setup, and one call runs there (page faults, caches);
- the thread count is pinned: 2 threads, except for the 16x16x8x8 tensor
  (16 384 values), which is too small to split (a two-thread figure would measure the
  OpenMP runtime and this machine's neighbours, not cbn);
- every process gives asv ONE sample, the mean over about 0.1 s of calls, and
  each benchmark runs in 7 processes per commit. The spread that matters lies
  between processes (memory placement, a neighbour's busy minute), not
  between the calls of one process; many samples from a few processes would
  make asv's test count that spread as a difference between commits. With 7
  samples a side, asv's Mann-Whitney test at p < 0.002 needs the two commits'
  processes (nearly) separated, which noise alone rarely does.

PerCall times one layer call on the small tensors of `python -m cbn
bench`'s per-call table (one thread, allocating, as users call the layers):
there a call's fixed cost, not memory traffic, is what counts.

time_* time cbn writing into preallocated outputs (out=); peakmem_* the
default call that allocates its output. cbn's time over its memory-traffic
limit (the README's model) is `python -m cbn bench`'s job: it measures the
floors in the same process, interleaved; here MemoryFloor times them.
"""
import sys

import numpy as np

import cbn
from cbn import _bench, _percall

SHAPES = ["32x64x56x56", "64x256x14x14", "16x512x28x28", "8x32x32x32", "256x1024", "16x16x8x8"]
LARGE_SHAPES = SHAPES[:3]
ONE_THREAD_ONLY = {"16x16x8x8"}
DTYPES = ["float32", "float64", "float16", "bfloat16"]


def threads_for(shape_text):
    """The pinned thread count of a shape's benchmarks."""
    return 1 if shape_text in ONE_THREAD_ONLY else 2


class _OneSamplePerProcess:
    """Timing settings of every time benchmark (see the module docstring)."""
    timeout = 300
    rounds = 7
    repeat = 1
    warmup_time = 0.1
    sample_time = 0.1


def _case(op, shape, layout, dtype):
    """A _bench.Case; skipped (asv's NotImplementedError) for bfloat16 without ml_dtypes."""
    try:
        return _bench.Case(op, shape, layout, dtype)
    except ImportError as exc:
        raise NotImplementedError(str(exc)) from None


def _case_call(op, shape_text, layout, dtype, threads, out=True):
    shape = _bench.parse_shape(shape_text)
    if len(shape) == 2 and layout != "NCHW":
        raise NotImplementedError("(N, C) inputs have a single layout")
    case = _case(op, shape, layout, dtype)
    cbn.set_num_threads(threads)
    x, dy = case.arrays()
    call = _bench.cbn_call(case, x, dy, out=out)
    call()
    return call


class _TimedCall(_OneSamplePerProcess):
    """time_cbn times self.call, which setup makes with _case_call."""

    def teardown(self, *params):
        cbn.set_num_threads(None)

    def time_cbn(self, *params):
        self.call()


class _Op(_TimedCall):
    op = None
    params = [SHAPES, ["NCHW", "NHWC"], DTYPES]
    param_names = ["shape", "layout", "dtype"]

    def setup(self, shape_text, layout, dtype):
        self.call = _case_call(self.op, shape_text, layout, dtype, threads_for(shape_text))


class TrainForward(_Op):
    op = "train"


class TrainForwardBackward(_Op):
    op = "train+bwd"


class EvalForward(_Op):
    op = "eval"


class TrainForwardOneThread(_TimedCall):
    """The large shapes' train forward on one thread (TrainForward has two):
    the pair shows thread scaling."""

    params = [LARGE_SHAPES, ["NCHW", "NHWC"]]
    param_names = ["shape", "layout"]

    def setup(self, shape_text, layout):
        self.call = _case_call("train", shape_text, layout, "float32", 1)


class PeakMemory:
    """Peak memory of the default call, which allocates its output (and, for
    the backward, dx): a silent copy of the input shows here. Deterministic,
    so one process each."""

    params = [["train", "train+bwd", "eval"], ["32x64x56x56", "256x1024"], ["NCHW", "NHWC"],
              ["float32", "float64"]]
    param_names = ["op", "shape", "layout", "dtype"]

    def setup(self, op, shape_text, layout, dtype):
        self.call = _case_call(op, shape_text, layout, dtype, threads_for(shape_text), out=False)

    def teardown(self, *params):
        cbn.set_num_threads(None)

    def peakmem_cbn(self, *params):
        self.call()


class MemoryFloor(_OneSamplePerProcess):
    """The limit's two floors: a parallel copy and a parallel read of the input's bytes."""

    params = [SHAPES, DTYPES]
    param_names = ["shape", "dtype"]

    def setup(self, shape_text, dtype):
        threads = threads_for(shape_text)
        case = _case("train", _bench.parse_shape(shape_text), "NCHW", dtype)
        x, _ = case.arrays()
        self.copy = _bench.copy_call(case, x, threads)
        self.read = _bench.read_call(case, x, threads)
        self.copy()
        self.read()

    def time_copy(self, *params):
        self.copy()

    def time_read(self, *params):
        self.read()


class FusedReLU(_OneSamplePerProcess):
    """activation="relu" against BatchNorm then np.maximum(y, 0, out=y) (and the
    backward pair: dy * (y > 0), then the batch-norm backward); train forward +
    backward, float32, 2 threads."""

    params = [LARGE_SHAPES, ["NCHW", "NHWC"]]
    param_names = ["shape", "layout"]

    def setup(self, shape, layout):
        cbn.set_num_threads(2)
        case = _bench.Case("train+bwd", _bench.parse_shape(shape), layout, "float32")
        x, dy = case.arrays()
        self.fused = _bench.relu_pair_call(case, x, dy, fused=True)
        self.separate = _bench.relu_pair_call(case, x, dy, fused=False)
        self.fused()
        self.separate()

    def teardown(self, *params):
        cbn.set_num_threads(None)

    def time_fused(self, *params):
        self.fused()

    def time_separate(self, *params):
        self.separate()


class _IdenticalRanks:
    """A stand-in for P processes whose shards are this one's: what SyncBatchNorm
    exchanges costs here minus the transfer (a sum: P times the row; a
    maximum: the row; either kind of op cbn's communicator protocol names)."""

    def __init__(self, processes):
        self.processes = processes

    def Get_size(self):
        return self.processes

    def Get_rank(self):
        return 0

    def Allgather(self, sendbuf, recvbuf):
        recvbuf[...] = sendbuf

    def Allreduce(self, sendbuf, recvbuf, op):
        mpi = sys.modules.get("mpi4py.MPI")
        summing = op is np.add or (mpi is not None and op is mpi.SUM)
        recvbuf[...] = sendbuf * self.processes if summing else sendbuf


class SyncForward(_OneSamplePerProcess):
    """SyncBatchNorm's training forward on a 4-row shard of C channels (float32,
    1 thread), with the exchange's own work and no transfer: by Allgather (2
    processes) and by fixed-point sums (8 processes, steady state: one
    Allreduce); time_local is BatchNorm1d on the same shard."""

    params = [[2, 8], [64, 2048]]
    param_names = ["processes", "channels"]

    def setup(self, processes, channels):
        cbn.set_num_threads(1)
        self.x = np.random.default_rng(0).standard_normal((4, channels)).astype(np.float32) + 3
        self.sync = cbn.SyncBatchNorm(channels, _IdenticalRanks(processes))
        self.local = cbn.BatchNorm1d(channels)
        self.sync(self.x)
        self.local(self.x)

    def teardown(self, *params):
        cbn.set_num_threads(None)

    def time_sync(self, *params):
        self.sync(self.x)

    def time_local(self, *params):
        self.local(self.x)


class PerCall(_OneSamplePerProcess):
    """One allocating layer call, one thread: the per-call table's cases."""
    params = ([_percall.case_name(*case) for case in _percall.PER_CALL_CASES],
              list(_percall.PER_CALL_OPS))
    param_names = ["case", "op"]

    def setup(self, name, op):
        spec = {_percall.case_name(*case): case for case in _percall.PER_CALL_CASES}[name]
        cbn.set_num_threads(1)
        self.call = _percall.layer_calls(*spec, np.float32)[op]
        self.call()

    def teardown(self, *params):
        cbn.set_num_threads(None)

    def time_call(self, name, op):
        self.call()
