"""What one layer call costs on the small tensors of NumPy models.

There a call's time is its fixed cost (checks, allocation, state, the
kernels' set-up), not memory traffic, so it is measured as users call the
layers: one thread, allocating outputs, each call timed on its own after one
warm-up call; the minimum is the cost without interference, the median what
a noisy machine gives. The timer's own cost (~0.1 us) is included.
"""
import time

import numpy as np

from ._threads import get_num_threads, set_num_threads
from .batchnorm import BatchNorm1d, BatchNorm2d

# (layer, input shape, layout): the demo's MLP layer, and a small CNN's
PER_CALL_CASES = (
    (BatchNorm1d, (60, 100), "NCHW"),
    (BatchNorm2d, (16, 16, 8, 8), "NCHW"),
    (BatchNorm2d, (16, 8, 8, 16), "NHWC"),
)
PER_CALL_OPS = ("train", "train+bwd", "eval")


def case_name(layer, shape, layout):
    text = "x".join(map(str, shape))
    return f"{layer.__name__} {text}" + ("" if len(shape) == 2 else f" {layout}")


def layer_calls(layer, shape, layout, dtype):
    """The three calls (train, train+bwd, eval) on one layer, as callables."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    channels = shape[1] if layout == "NCHW" else shape[-1]
    train = layer(channels, dtype=dtype, layout=layout)
    frozen = layer(channels, dtype=dtype, layout=layout)
    frozen(x)
    frozen.eval()

    def train_bwd():
        train(x)
        train.backward(dy)
    return {"train": lambda: train(x), "train+bwd": train_bwd, "eval": lambda: frozen(x)}


def time_calls(fn, calls):
    """(min, median) seconds of ``calls`` calls of fn, each timed alone, after a warm-up."""
    fn()
    clock = time.perf_counter_ns
    times = np.empty(calls)
    for i in range(calls):
        start = clock()
        fn()
        times[i] = clock() - start
    return float(times.min()) * 1e-9, float(np.median(times)) * 1e-9


def measure(calls=3000, dtype=np.float32):
    """Per-call min and median seconds of every case and op, on one thread
    (the thread setting is restored after)."""
    before = get_num_threads()
    set_num_threads(1)
    try:
        rows = []
        for layer, shape, layout in PER_CALL_CASES:
            fns = layer_calls(layer, shape, layout, dtype)
            for op in PER_CALL_OPS:
                fastest, median = time_calls(fns[op], calls)
                rows.append({"case": case_name(layer, shape, layout), "op": op,
                             "min_s": fastest, "median_s": median})
        return rows
    finally:
        set_num_threads(before)


def print_table(rows, calls, out=print):
    out(f"per call, float32, one thread (min / median of {calls} allocating calls, us):")
    out(f"{'case':32s} " + " ".join(f"{op:>15s}" for op in PER_CALL_OPS))
    for case in dict.fromkeys(r["case"] for r in rows):
        cells = {r["op"]: r for r in rows if r["case"] == case}
        out(f"{case:32s} " + " ".join(
            f"{cells[op]['min_s'] * 1e6:7.2f} /{cells[op]['median_s'] * 1e6:6.2f}"
            for op in PER_CALL_OPS))
