"""Benchmarks: cbn against its memory-traffic limit, plain NumPy and PyTorch.

Two floors are measured in the same process at the same thread count:
``copy`` (read the input's bytes once and write them once) and ``read`` (one
pass that only reads them). Each op has passes no implementation can avoid
(``limit_passes``); its limit is that many copies and reads. Every
implementation of a case is timed in interleaved rounds (the order rotating
each round) and the median is reported, so a noisy neighbour affects all of
them alike.
"""
import json
import math
import os
import platform
import time

import numpy as np

from . import _percall, _runtime
from ._dtypes import check_dtype, is_bfloat16, is_two_byte
from ._layout import channel_axis
from ._threads import available_cpus, get_num_threads, set_num_threads
from ._validation import check_batch_for_statistics
from ._version import __version__
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d

SHAPES = [(32, 64, 56, 56), (64, 256, 14, 14), (16, 512, 28, 28), (8, 32, 32, 32), (256, 1024),
          (16, 16, 8, 8)]
OPS = ("train", "train+bwd", "eval")
LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "float64", "float16", "bfloat16")   # bfloat16: with ml_dtypes
SAMPLE_SECONDS = 2e-3  # each timed sample repeats a call until it lasts about this long

_LAYERS = {2: BatchNorm1d, 3: BatchNorm1d, 4: BatchNorm2d, 5: BatchNorm3d}


def parse_shape(text):
    """An NCHW-ordered shape from "NxCxHxW": 2 to 5 positive integers joined by x."""
    try:
        shape = tuple(int(s) for s in text.lower().split("x"))
    except ValueError:
        shape = ()
    return check_shape(shape, text)


def check_shape(shape, text):
    """shape if it is 2 to 5 positive integers; ValueError naming text otherwise."""
    if not 2 <= len(shape) <= 5 or min(shape) < 1:
        raise ValueError(f"expected 2 to 5 positive integers joined by 'x' (e.g. 32x64x56x56 "
                         f"or 256x1024), got {text!r}")
    return shape


def shape_name(shape):
    return "x".join(map(str, shape))


class Case:
    """One benchmark: op on an input of NCHW-ordered ``shape`` in ``layout``."""

    def __init__(self, op, shape, layout="NCHW", dtype="float32"):
        if op not in OPS:
            raise ValueError(f"op: expected one of {OPS}, got {op!r}")
        if len(shape) == 2 and layout != "NCHW":
            raise ValueError("(N, C) inputs have one layout; use NCHW")
        self.op, self.shape, self.layout = op, tuple(shape), layout
        self.dtype = check_dtype(dtype)

    @property
    def name(self):
        layout = "" if len(self.shape) == 2 else f" {self.layout}"
        return f"{self.op} {shape_name(self.shape)}{layout} {self.dtype.name}"

    @property
    def array_shape(self):
        s = self.shape
        return s if self.layout == "NCHW" else (s[0],) + s[2:] + (s[1],)

    @property
    def axes(self):
        """Axes reduced over (all but the channel axis)."""
        nd = len(self.shape)
        c = 1 if self.layout == "NCHW" else nd - 1
        return tuple(i for i in range(nd) if i != c)

    def arrays(self, seed=0):
        rng = np.random.default_rng(seed)
        x = (rng.standard_normal(self.array_shape) * 2 + 0.5).astype(self.dtype)
        dy = rng.standard_normal(self.array_shape).astype(self.dtype)
        return x, dy


def check_case(case):
    """ValueError, with the layer's own message, where cbn's layer would refuse
    case's input: a batch of one value per channel for the ops that use batch
    statistics (the shape and dtype are the bench's own). Checked on a
    stand-in of the input's shape with no memory of its own (zero strides),
    so that a case is refused before anything is allocated."""
    if case.op != "eval":
        x = np.broadcast_to(np.zeros((), case.dtype), case.array_shape)
        check_batch_for_statistics(x, channel_axis(case.layout, x.ndim))


def cbn_call(case, x, dy, out=True):
    """A callable running case.op with cbn (writing into preallocated outputs if out)."""
    C = case.shape[1]
    bn = _LAYERS[len(case.shape)](C, dtype=case.dtype, layout=case.layout)
    y = np.empty_like(x) if out else None
    dx = np.empty_like(x) if out else None
    if case.op == "eval":
        bn.eval()
        return lambda: bn(x, out=y)
    if case.op == "train":
        return lambda: bn(x, out=y)

    def train_bwd():
        bn(x, out=y)
        bn.backward(dy, out=dx)
    return train_bwd


def relu_pair_call(case, x, dy, fused):
    """Train forward + backward of batch norm followed by ReLU, as one fused layer
    or as batch norm and NumPy's maximum (and its backward), into preallocated
    buffers."""
    C = case.shape[1]
    make = _LAYERS[len(case.shape)]
    y, dx, g = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    if fused:
        bn = make(C, dtype=case.dtype, layout=case.layout, activation="relu")

        def run():
            bn(x, out=y)
            bn.backward(dy, out=dx)
        return run
    bn = make(C, dtype=case.dtype, layout=case.layout)

    def run():
        bn(x, out=y)
        np.maximum(y, 0, out=y)
        np.multiply(dy, y > 0, out=g)
        bn.backward(g, out=dx)
    return run


def copy_call(case, x, threads):
    """Parallel copy of x's bytes into a preallocated buffer."""
    src = x.reshape(-1).view(np.uint8)
    dst = np.empty_like(src)
    return lambda: _runtime.parallel_copy(src, dst, threads)


def read_call(case, x, threads):
    """One parallel pass that only reads x's bytes."""
    src = x.reshape(-1).view(np.uint8)
    return lambda: _runtime.parallel_read(src, threads)


def limit_passes(case):
    """(copies, reads) of the input's bytes that case.op cannot avoid.

    Eval: one copy (read x, write y). Channels-first train forward: one copy,
    a channel's values staying in cache between its statistics and its
    output. Channels-last (and (N, C)) train forward: every row is needed for
    the statistics before any output, so a read, then a copy. The backward
    reads x and dy and writes dx (a copy and a read), channels-first once, a
    channel staying in cache between its sums and its dx; channels-last x and
    dy are read for the sums first (two more reads).
    """
    channels_first = case.layout == "NCHW" and len(case.shape) > 2
    if case.op == "eval":
        return 1, 0
    if case.op == "train":
        return (1, 0) if channels_first else (1, 1)
    return (2, 1) if channels_first else (2, 4)


def limit_model():
    """limit_passes in words, e.g. "eval: NCHW 1 copy, NHWC and (N, C) 1 copy; ..."."""
    def passes(op, layout, shape):
        copies, reads = limit_passes(Case(op, shape, layout))
        return f"{copies} cop{'y' if copies == 1 else 'ies'}" + (
            f" + {reads} read{'s' if reads > 1 else ''}" if reads else "")
    return "; ".join(f"{op}: NCHW {passes(op, 'NCHW', (2, 2, 2))}, NHWC and (N, C) "
                     f"{passes(op, 'NHWC', (2, 2, 2))}" for op in OPS)


def numpy_call(case, x, dy):
    """Batch norm as NumPy array expressions (what a hand-written model does)."""
    axes = case.axes
    shape = [1] * x.ndim
    shape[[i for i in range(x.ndim) if i not in axes][0]] = -1
    w = np.ones(case.shape[1], case.dtype).reshape(shape)
    b = np.zeros(case.shape[1], case.dtype).reshape(shape)
    eps = case.dtype.type(1e-5)
    rm = np.zeros_like(w)
    rv = np.ones_like(w)

    def forward():
        mean = x.mean(axis=axes, keepdims=True)
        var = x.var(axis=axes, keepdims=True)
        inv = 1 / np.sqrt(var + eps)
        return (x - mean) * inv * w + b, mean, inv

    if case.op == "eval":
        return lambda: (x - rm) / np.sqrt(rv + eps) * w + b
    if case.op == "train":
        return forward

    def train_bwd():
        _, mean, inv = forward()
        xhat = (x - mean) * inv
        g = dy * w
        return inv * (g - g.mean(axis=axes, keepdims=True)
                      - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    return train_bwd


def torch_call(case, x, dy, threads):
    """The same op with torch.nn.BatchNorm*d, or None without torch. 2-byte
    data go with float32 parameters, as PyTorch's mixed-type batch norm takes them."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    nd = len(case.shape)
    layer = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
             5: torch.nn.BatchNorm3d}[nd](case.shape[1], dtype=torch.float32 if is_two_byte(
                 case.dtype) else getattr(torch, case.dtype.name))

    def tensor(a):
        a = np.ascontiguousarray(np.moveaxis(a, -1, 1) if case.layout == "NHWC" else a)
        if is_bfloat16(case.dtype):   # no NumPy dtype in torch.from_numpy: the bits
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(a)

    xt, dyt = tensor(x), tensor(dy)
    if case.layout == "NHWC" and nd in (4, 5):
        fmt = torch.channels_last if nd == 4 else torch.channels_last_3d
        xt, dyt = xt.contiguous(memory_format=fmt), dyt.contiguous(memory_format=fmt)
    if case.op == "eval":
        layer.eval()

        def run():
            with torch.no_grad():
                return layer(xt)
        return run
    if case.op == "train":
        def run():
            with torch.no_grad():
                return layer(xt)
        return run
    xg = xt.detach().requires_grad_(True)

    def run():
        xg.grad = None
        layer(xg).backward(dyt)
    return run


def _calibrate(fn):
    """Calls per timed sample so that a sample lasts about SAMPLE_SECONDS."""
    fn()
    t0 = time.perf_counter()
    fn()
    single = time.perf_counter() - t0
    return max(1, min(10000, int(SAMPLE_SECONDS / max(single, 1e-9))))


def time_interleaved(fns, repeats):
    """Median seconds per call of each callable in ``fns`` (name -> fn), interleaved."""
    calls = {name: _calibrate(fn) for name, fn in fns.items()}
    samples = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, k = fns[name], calls[name]
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            samples[name].append((time.perf_counter() - t0) / k)
    return {name: float(np.median(s)) for name, s in samples.items()}, samples


def measure(case, threads=None, repeats=11, with_numpy=True, with_torch=True, seed=0):
    """Median seconds per call: {"cbn", "cbn_alloc", "copy", "read", "numpy", "torch"}
    (absent ones omitted), and "limit" from copy and read (limit_passes)."""
    threads = get_num_threads() if threads is None else threads
    previous = get_num_threads()
    set_num_threads(threads)
    try:
        x, dy = case.arrays(seed)
        fns = {"cbn": cbn_call(case, x, dy), "cbn_alloc": cbn_call(case, x, dy, out=False),
               "copy": copy_call(case, x, threads), "read": read_call(case, x, threads)}
        if with_numpy and not is_two_byte(case.dtype):   # NumPy has no 2-byte arithmetic
            fns["numpy"] = numpy_call(case, x, dy)
        if with_torch:
            t = torch_call(case, x, dy, threads)
            if t is not None:
                fns["torch"] = t
        medians, samples = time_interleaved(fns, repeats)
    finally:
        set_num_threads(previous)
    copies, reads = limit_passes(case)
    medians["limit"] = copies * medians["copy"] + reads * medians["read"]
    return medians, samples


def machine():
    cpus = available_cpus()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpus": cpus, "cpu": model, "python": platform.python_version(),
            "numpy": np.__version__, "cbn": __version__, "isa": _runtime.loops_isa(),
            "openmp": _runtime.openmp_enabled(), "stream_bytes": _runtime.stream_threshold()}


def available_dtypes(dtypes):
    """dtypes without bfloat16 when ml_dtypes is not installed."""
    if "bfloat16" not in dtypes:   # importing ml_dtypes takes a second or two: only when asked
        return list(dtypes)
    try:
        check_dtype("bfloat16")
    except ImportError:
        return [d for d in dtypes if d != "bfloat16"]
    return list(dtypes)


def cases(shapes=None, ops=OPS, layouts=LAYOUTS, dtypes=DTYPES):
    for shape in shapes or SHAPES:
        for dtype in dtypes:
            for layout in layouts:
                if len(shape) == 2 and layout != "NCHW":
                    continue
                for op in ops:
                    yield Case(op, shape, layout, dtype)


def _memory_bytes():
    """The machine's physical memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _repeated(values):
    """The first value that occurs twice in values, or None."""
    seen = []
    for value in values:
        if value in seen:
            return value
        seen.append(value)
    return None


def check_json_path(path):
    """ValueError where path cannot be opened for writing, tried as run() will
    (but appending, so that an existing file is left as it is)."""
    existed = os.path.lexists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        raise ValueError(f"--json: expected a file that can be written, got {path!r} "
                         f"({exc.strerror})") from None
    if not existed:
        os.remove(path)


def check_run(threads=None, shapes=None, ops=OPS, layouts=LAYOUTS, dtypes=DTYPES, repeats=11,
              json_path=None, calls=3000):
    """Refuse, before anything runs, the arguments that run() would fail on part
    way through or that would run nothing: a ValueError naming the command-line
    argument."""
    if threads is not None:
        cpus = available_cpus()
        # the floors run an OpenMP team of exactly this many threads, however
        # small the input: past the CPUs it times the scheduler, not memory,
        # and past the system's thread limit the team cannot start (a crash)
        if not 1 <= threads <= cpus:
            raise ValueError(f"--threads: expected a positive integer at most the {cpus} CPU(s) "
                             f"available, got {threads}")
    if repeats < 1:
        raise ValueError(f"--repeats: expected a positive integer, got {repeats}")
    if calls < 0:
        raise ValueError(f"--calls: expected a non-negative integer, got {calls}")
    if json_path is not None:
        check_json_path(json_path)
    for name, values, show in (("--shapes", shapes or (), shape_name), ("--ops", ops, str),
                               ("--layouts", layouts, str), ("--dtypes", dtypes, str)):
        if not values and name != "--shapes":   # no shapes: the suite
            raise ValueError(f"{name}: expected at least one value, got none")
        twice = _repeated(values)
        if twice is not None:   # a repeated value would time its cases twice
            raise ValueError(f"{name}: expected each value once, got {show(twice)} more than once")
    for shape in shapes or ():   # parsed already on the command line; not from Python
        try:
            check_shape(shape, shape_name(shape))
        except ValueError as exc:
            raise ValueError(f"--shapes: {exc}") from None
    runnable = available_dtypes(dtypes)
    if not runnable:
        raise ValueError(f"--dtypes: expected one this installation can run, got only "
                         f"{' '.join(dtypes)} (bfloat16 needs ml_dtypes: "
                         f"pip install 'cbn[bfloat16]')")
    memory = _memory_bytes() or np.iinfo(np.intp).max
    for shape in shapes or SHAPES:
        planned = list(cases([shape], ops, layouts, runnable))
        if shapes and not planned:   # the suite's (N, C) shape is skipped quietly under NHWC
            raise ValueError(f"--layouts: expected NCHW among them for the 2-D shape "
                             f"{shape_name(shape)} ((N, C) inputs have one layout), got "
                             f"{' '.join(layouts)}")
        for case in planned:
            # at least x, dy, both outputs and the copy floor's buffer are held at once
            need = 5 * math.prod(case.shape) * case.dtype.itemsize
            if need > memory:
                raise ValueError(f"--shapes: expected a shape whose arrays fit in memory "
                                 f"({memory / 2**30:.1f} GiB), got {shape_name(shape)}: "
                                 f"{case.name} needs at least {need / 2**30:.1f} GiB")
            try:
                check_case(case)
            except ValueError as exc:
                raise ValueError(f"--shapes: {shape_name(shape)} with --ops {case.op}: "
                                 f"{str(exc).removeprefix('x: ')}") from None


def half_over_float32(results, dtype_name):
    """cbn's time for dtype_name over its float32 time, per (op, shape, layout) run in both."""
    f32 = {(r["op"], tuple(r["shape"]), r["layout"]): r["median_s"]["cbn"] for r in results
           if r["dtype"] == "float32"}
    return [r["median_s"]["cbn"] / f32[key] for r in results if r["dtype"] == dtype_name
            and (key := (r["op"], tuple(r["shape"]), r["layout"])) in f32]


def _fmt(seconds):
    return "-" if seconds is None else (f"{seconds * 1e6:9.1f}" if seconds < 1 else f"{seconds:9.3f}s")


def run(threads=None, shapes=None, ops=OPS, layouts=LAYOUTS, dtypes=DTYPES, repeats=11,
        json_path=None, with_torch=True, out=print, calls=3000):
    """Print the per-call table (``calls`` calls per op; 0: none), then a row
    per case against the traffic limit; return (and optionally save) all results."""
    check_run(threads, shapes, ops, layouts, dtypes, repeats, json_path, calls)
    threads = get_num_threads() if threads is None else threads
    info = machine()
    try:
        import torch
        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    out(f"cbn {info['cbn']} bench: {threads} thread(s) on {info['cpus']} CPU(s) ({info['cpu']}); "
        f"loops: {info['isa']}; streaming stores from {info['stream_bytes'] / 2**20:.1f} MiB; "
        f"times are medians of {repeats} interleaved runs, in microseconds")
    if with_torch and info["torch"] is None:
        out("PyTorch is not installed: its column is skipped (pip install torch to compare).")
    per_call = _percall.measure(calls) if calls else []
    if per_call:
        _percall.print_table(per_call, calls, out)
    available = available_dtypes(dtypes)
    if len(available) < len(dtypes):
        out("ml_dtypes is not installed: bfloat16 is skipped (pip install 'cbn[bfloat16]').")
        dtypes = available
    out("limit = the passes over the input each op cannot avoid, as parallel copies and reading "
        "passes of the same bytes at the same thread count: " + limit_model() + ". cbn writes "
        "into preallocated outputs (out=), cbn+alloc does not; torch/cbn compares with cbn+alloc")
    header = (f"{'case':34s} {'cbn':>9s} {'limit':>9s} {'cbn/limit':>9s} {'copy':>9s} "
              f"{'read':>9s} {'cbn+alloc':>9s} {'numpy':>9s} {'torch':>9s} {'torch/cbn':>9s}")
    out(header)
    results = []
    for case in cases(shapes, ops, layouts, dtypes):
        medians, samples = measure(case, threads, repeats, with_torch=with_torch)
        ratio = medians["cbn"] / medians["limit"]
        torch_t = medians.get("torch")
        speedup = torch_t / medians["cbn_alloc"] if torch_t else None
        out(f"{case.name:34s} {_fmt(medians['cbn'])} {_fmt(medians['limit'])} {ratio:9.2f} "
            f"{_fmt(medians['copy'])} {_fmt(medians['read'])} {_fmt(medians['cbn_alloc'])} "
            f"{_fmt(medians.get('numpy'))} {_fmt(torch_t)} "
            f"{'-' if speedup is None else f'{speedup:9.2f}':>9s}")
        results.append({"op": case.op, "shape": list(case.shape), "layout": case.layout,
                        "dtype": case.dtype.name, "threads": threads, "median_s": medians,
                        "samples_s": samples, "limit_passes": list(limit_passes(case)),
                        "ratio_to_limit": ratio, "torch_over_cbn": speedup})
    ratios = [r["ratio_to_limit"] for r in results]
    if ratios:
        out(f"cbn time / limit: geometric mean {math.exp(np.mean(np.log(ratios))):.2f}, "
            f"max {max(ratios):.2f} over {len(ratios)} cases")
    speedups = [r["torch_over_cbn"] for r in results if r["torch_over_cbn"]]
    if speedups:
        out(f"PyTorch time / cbn time: geometric mean {math.exp(np.mean(np.log(speedups))):.2f}, "
            f"min {min(speedups):.2f} over {len(speedups)} cases")
    for name in ("float16", "bfloat16"):
        narrow = half_over_float32(results, name)
        if narrow:
            out(f"cbn {name} time / cbn float32 time: geometric mean "
                f"{math.exp(np.mean(np.log(narrow))):.2f}, max {max(narrow):.2f} over "
                f"{len(narrow)} cases")
    report = {"machine": info, "threads": threads, "repeats": repeats, "results": results,
              "per_call": per_call}
    if json_path is not None:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1)
        out(f"wrote {json_path}")
    return report
