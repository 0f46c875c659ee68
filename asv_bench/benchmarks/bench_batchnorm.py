"""asv benchmarks: train forward, train forward+backward and eval forward over
the shape suite, both layouts and dtypes, 1 and 2 threads.

time_* time cbn writing into preallocated outputs (out=); peakmem_* the
default call that allocates its output; track_ratio_to_limit the cbn time
over the op's memory-traffic limit (parallel copies and reads of the same
bytes at the same thread count), both measured here in interleaved rounds
(cbn._bench, as `python -m cbn bench`).

Tensors too small to split over two threads (16x16x8x8: 16 KB) are timed on
one thread only: a two-thread figure for them measures the OpenMP runtime
and the neighbours of this machine, not cbn.
"""
import cbn
from cbn import _bench

SHAPES = ["32x64x56x56", "64x256x14x14", "16x512x28x28", "8x32x32x32", "256x1024", "16x16x8x8"]
ONE_THREAD_ONLY = {"16x16x8x8"}


class _Op:
    op = None
    params = [SHAPES, ["NCHW", "NHWC"], ["float32", "float64"], [1, 2]]
    param_names = ["shape", "layout", "dtype", "threads"]
    timeout = 300
    # many short samples, after a warm-up, so that a median is stable
    warmup_time = 0.2
    sample_time = 0.02
    repeat = (10, 40, 10.0)

    def setup(self, shape_text, layout, dtype, threads):
        shape = _bench.parse_shape(shape_text)
        if len(shape) == 2 and layout != "NCHW":
            raise NotImplementedError("(N, C) inputs have a single layout")
        if threads > 1 and shape_text in ONE_THREAD_ONLY:
            raise NotImplementedError("too small to split over threads")
        self.case = _bench.Case(self.op, shape, layout, dtype)
        self.threads = threads
        cbn.set_num_threads(threads)
        x, dy = self.case.arrays()
        self.call = _bench.cbn_call(self.case, x, dy)
        self.call_allocating = _bench.cbn_call(self.case, x, dy, out=False)
        self.call()  # first-touch page faults out of the timings

    def teardown(self, *params):
        cbn.set_num_threads(None)

    def time_cbn(self, *params):
        self.call()

    def peakmem_cbn(self, *params):
        self.call_allocating()

    def track_ratio_to_limit(self, *params):
        medians, _ = _bench.measure(self.case, self.threads, repeats=7, with_numpy=False,
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
        one, _ = _bench.measure(self.case, 1, repeats=5, with_numpy=False, with_torch=False)
        two, _ = _bench.measure(self.case, 2, repeats=5, with_numpy=False, with_torch=False)
        return one["cbn"] / two["cbn"], one["copy"] / two["copy"]

    def track_train_speedup_1_to_2_threads(self, *params):
        return self._speedups()[0]

    track_train_speedup_1_to_2_threads.unit = "time(1 thread) / time(2 threads)"

    def track_floor_speedup_1_to_2_threads(self, *params):
        return self._speedups()[1]

    track_floor_speedup_1_to_2_threads.unit = "time(1 thread) / time(2 threads)"


class MemoryFloor:
    """The limit's two floors: a parallel copy and a parallel read of the input's bytes."""

    params = [SHAPES, ["float32", "float64"], [1, 2]]
    param_names = ["shape", "dtype", "threads"]

    def setup(self, shape_text, dtype, threads):
        if threads > 1 and shape_text in ONE_THREAD_ONLY:
            raise NotImplementedError("too small to split over threads")
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


class FusedReLU:
    """activation="relu" against BatchNorm then np.maximum(y, 0, out=y) (and the
    backward pair: dy * (y > 0), then the batch-norm backward); train forward +
    backward, float32, 2 threads."""

    params = [["32x64x56x56", "64x256x14x14", "16x512x28x28"], ["NCHW", "NHWC"]]
    param_names = ["shape", "layout"]
    timeout = 300

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
        medians, _ = _bench.time_interleaved({"fused": self.fused, "separate": self.separate}, 7)
        return medians["separate"] / medians["fused"]

    track_speedup.unit = "time(separate) / time(fused)"
