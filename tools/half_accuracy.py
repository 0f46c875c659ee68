"""Accuracy of cbn's float16 and bfloat16 outputs against the float64
reference on the widened input: how far each value is from the reference
rounded to the data type (the correctly rounded result), in units in its
last place (ulp).

For each op and layout: the largest distance over all values, the largest
over values whose float32 terms do not cancel (|exact| >= terms / 16, where
terms is the size of what is added: |gamma * xhat| + |beta| for y), and the
share of values equal to the correctly rounded result. Where terms cancel, float32
arithmetic (the type computed in, as PyTorch's) leaves an absolute error of
a few float32 roundings of the terms, which can be many ulp of a tiny
result. Run: python tools/half_accuracy.py (bfloat16 needs ml_dtypes).
"""
import numpy as np

import cbn


def ulp(values):
    bits = values.view(np.uint16) & 0x7FFF
    here = bits.view(values.dtype).astype(np.float64)
    return (bits + 1).astype(np.uint16).view(values.dtype).astype(np.float64) - here


def expand(v, nd, axis):
    shape = [1] * nd
    shape[axis] = -1
    return np.asarray(v, np.float64).reshape(shape)


def measure(result, exact, terms):
    rounded = exact.astype(result.dtype)
    errors = np.abs(result.astype(np.float64) - rounded.astype(np.float64)) / ulp(rounded)
    clear = np.abs(exact) >= terms / 16
    same = np.mean(result.view(np.uint16) == rounded.view(np.uint16))
    return errors.max(), errors[clear].max(), same


def cases(dtype, layout, seeds=4):
    """(op, result, exact, terms) over random batches, weights and biases."""
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        shape = (16, 24, 13, 13) if layout == "NCHW" else (16, 13, 13, 24)
        axis = 1 if layout == "NCHW" else 3
        reduce = tuple(i for i in range(4) if i != axis)
        nd, C = 4, 24
        x = (rng.standard_normal(shape) * rng.uniform(0.1, 10) + rng.uniform(-20, 20)).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        bn = cbn.BatchNorm2d(C, dtype=dtype, layout=layout)
        bn.weight[...] = rng.uniform(0.5, 2, C)
        bn.bias[...] = rng.standard_normal(C)
        w, b = bn.weight.astype(np.float64), bn.bias.astype(np.float64)
        xd, dyd = x.astype(np.float64), dy.astype(np.float64)
        mean, var = xd.mean(axis=reduce), xd.var(axis=reduce)
        M = xd.size // C
        invstd = 1 / np.sqrt(var + 1e-5)
        xhat = (xd - expand(mean, nd, axis)) * expand(invstd, nd, axis)
        y = bn(x)
        exact = xhat * expand(w, nd, axis) + expand(b, nd, axis)
        yield "train y", y, exact, np.abs(xhat * expand(w, nd, axis)) + np.abs(expand(b, nd, axis))
        dx = bn.backward(dy)
        sum_g, sum_gx = dyd.sum(axis=reduce), (dyd * xhat).sum(axis=reduce)
        k = expand(w * invstd, nd, axis)
        parts = (dyd, expand(sum_g / M, nd, axis), xhat * expand(sum_gx / M, nd, axis))
        yield ("train dx", dx, k * (parts[0] - parts[1] - parts[2]),
               np.abs(k) * sum(np.abs(p) for p in parts))
        bn.eval()
        rm, rv = bn.running_mean.astype(np.float64), bn.running_var.astype(np.float64)
        xhat_eval = (xd - expand(rm, nd, axis)) / np.sqrt(expand(rv, nd, axis) + 1e-5)
        exact = xhat_eval * expand(w, nd, axis) + expand(b, nd, axis)
        yield ("eval y", bn(x), exact,
               np.abs(xhat_eval * expand(w, nd, axis)) + np.abs(expand(b, nd, axis)))
        exact = dyd * expand(w / np.sqrt(rv + 1e-5), nd, axis)
        yield "eval dx", bn.backward(dy), exact, np.abs(exact)


def main():
    dtypes = [np.dtype(np.float16)]
    try:
        import ml_dtypes
        dtypes.append(np.dtype(ml_dtypes.bfloat16))
    except ImportError:
        print("(ml_dtypes is not installed: bfloat16 is skipped)")
    print(f"{'dtype':9s} {'layout':6s} {'op':9s} {'max ulp':>8s} {'no cancel':>9s} "
          f"{'rounded correctly':>17s}")
    for dtype in dtypes:
        for layout in ("NCHW", "NHWC"):
            worst = {}
            for op, result, exact, terms in cases(dtype, layout):
                a, b, same = measure(result, exact, terms)
                prev = worst.get(op, (0.0, 0.0, 1.0))
                worst[op] = (max(prev[0], a), max(prev[1], b), min(prev[2], same))
            for op, (a, b, same) in worst.items():
                print(f"{dtype.name:9s} {layout:6s} {op:9s} {a:8.0f} {b:9.0f} {same:17.3%}")


if __name__ == "__main__":
    main()
