"""asv benchmarks: train forward, train forward+backward and eval forward over
the shape suite, both layouts and dtypes.

Built for numbers as stable as a machine allows (on a shared VM they are not
stable enough for `asv continuous` at -f 1.15: asv_bench/NOTES.md, section 15):
- inputs are made in setup, and one call runs there (page faults, caches);
- the thread count is pinned: 2 threads, except for the 16x16x8x8 tensor
  (16 KB), which is too small to split (a two-thread figure would measure the
  OpenMP runtime and this machine's neighbours, not cbn); ThreadScaling
  compares 1 and 2 threads on the large shapes;
- time_* take many short samples in several processes (rounds), after a
  warm-up, so that asv's statistics see the spread between processes;
- track_ratio_to_limit is cbn's time over the op's memory-traffic limit
  (parallel copies and reads of the same bytes, cbn._bench.limit_passes),
  the median of interleaved rounds in one process: a busy neighbour slows
  both sides alike.

time_* time cbn writing into preallocated outputs (out=); peakmem_* the
default call that allocates its output.
"""
import cbn
from cbn import _bench

SHAPES = ["32x64x56x56", "64x256x14x14", "16x512x28x28", "8x32x32x32", "256x1024", "16x16x8x8"]
ONE_THREAD_ONLY = {"16x16x8x8"}


def threads_for(shape_text):
    """The pinned thread count of a shape's benchmarks."""
    return 1 if shape_text in ONE_THREAD_ONLY else 2


class _Sampled:
    """Timing settings of every time benchmark: short samples in several
    processes, after a warm-up, so that a median is stable."""
    timeout = 300
    rounds = 3
    warmup_time = 0.1
    sample_time = 0.02
    repeat = (5, 15, 4.0)


class _Op(_Sampled):
    op = None
    params = [SHAPES, ["NCHW", "NHWC"], ["float32", "float64"]]
    param_names = ["shape", "layout", "dtype"]

    def setup(self, shape_text, layout, dtype):
        shape = _bench.parse_shape(shape_text)
        if len(shape) == 2 and layout != "NCHW":
            raise NotImplementedError("(N, C) inputs have a single layout")
        self.case = _bench.Case(self.op, shape, layout, dtype)
        self.threads = threads_for(shape_text)
        cbn.set_num_threads(self.threads)
        x, dy = self.case.arrays()
        self.call = _bench.cbn_call(self.case, x, dy)
        self.call_allocating = _bench.cbn_call(self.case, x, dy, out=False)
        self.call()

    def teardown(self, *params):
        cbn.set_num_threads(None)

    def time_cbn(self, *params):
        self.call()

    def peakmem_cbn(self, *params):
        self.call_allocating()

    def track_ratio_to_limit(self, *params):
        medians, _ = _bench.measure(self.case, self.threads, repeats=15, with_numpy=False,
                                    with_torch=False)
        return medians["cbn"] / medians["limit"]

    track_ratio_to_limit.unit = "cbn time / memory-traffic limit"


class TrainForward(_Op):
    op = "train"


class TrainForwardBackward(_Op):
    op = "train+bwd"


class EvalForward(_Op):
    op = "eval"


class ThreadScaling:
    """Speed-up from 1 to 2 threads, for cbn and for the copy floor itself."""

    params = [["32x64x56x56", "64x256x14x14", "16x512x28x28"], ["NCHW", "NHWC"]]
    param_names = ["shape", "layout"]
    timeout = 300

    def setup(self, shape, layout):
        self.case = _bench.Case("train", _bench.parse_shape(shape), layout, "float32")

    def _speedups(self):
        one, _ = _bench.measure(self.case, 1, repeats=9, with_numpy=False, with_torch=False)
        two, _ = _bench.measure(self.case, 2, repeats=9, with_numpy=False, with_torch=False)
        return one["cbn"] / two["cbn"], one["copy"] / two["copy"]

    def track_train_speedup_1_to_2_threads(self, *params):
        return self._speedups()[0]

    track_train_speedup_1_to_2_threads.unit = "time(1 thread) / time(2 threads)"

    def track_floor_speedup_1_to_2_threads(self, *params):
        return self._speedups()[1]

    track_floor_speedup_1_to_2_threads.unit = "time(1 thread) / time(2 threads)"


class MemoryFloor(_Sampled):
    """The limit's two floors: a parallel copy and a parallel read of the input's bytes."""

    params = [SHAPES, ["float32", "float64"]]
    param_names = ["shape", "dtype"]

    def setup(self, shape_text, dtype):
        threads = threads_for(shape_text)
        case = _bench.Case("train", _bench.parse_shape(shape_text), "NCHW", dtype)
        x, _ = case.arrays()
        self.copy = _bench.copy_call(case, x, threads)
        self.read = _bench.read_call(case, x, threads)
        self.copy()
        self.read()

    def time_copy(self, *params):
        self.copy()

    def time_read(self, *params):
        self.read()


class FusedReLU(_Sampled):
    """activation="relu" against BatchNorm then np.maximum(y, 0, out=y) (and the
    backward pair: dy * (y > 0), then the batch-norm backward); train forward +
    backward, float32, 2 threads."""

    params = [["32x64x56x56", "64x256x14x14", "16x512x28x28"], ["NCHW", "NHWC"]]
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

    def track_speedup(self, *params):
        medians, _ = _bench.time_interleaved({"fused": self.fused, "separate": self.separate}, 11)
        return medians["separate"] / medians["fused"]

    track_speedup.unit = "time(separate) / time(fused)"
