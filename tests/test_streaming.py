"""The streaming-store kernels (used for outputs larger than half the LLC).

They are forced on for small arrays by running a subprocess with
CBN_STREAM_BYTES=0, so every alignment of runs and rows is exercised cheaply.
"""
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import cbn
    import reference as ref

    rng = np.random.default_rng(7)
    cases = [("NCHW", (3, 5, 67)), ("NCHW", (2, 4, 8, 31)), ("NHWC", (3, 7, 133)),
             ("NHWC", (2, 5, 3, 70)), ("NCHW", (4, 3, 1000)), ("NHWC", (9, 257))]
    for dtype in (np.float32, np.float64):
        tol = 3e-5 if dtype == np.float32 else 1e-10
        for layout, shape in cases:
            axis = 1 if layout == "NCHW" else len(shape) - 1
            C = shape[axis]
            for offset in (0, 1, 3):  # misalign the output by a few elements
                buf = np.empty(int(np.prod(shape)) + offset, dtype)
                out = buf[offset:].reshape(shape)
                dxbuf = np.empty_like(buf)
                dx_out = dxbuf[offset:].reshape(shape)
                x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
                dy = rng.standard_normal(shape).astype(dtype)
                cls = cbn.BatchNorm1d if len(shape) < 4 else cbn.BatchNorm2d
                bn = cls(C, dtype=dtype, layout=layout)
                bn(x, out=out)
                bn.backward(dy, out=dx_out)
                y_ref = ref.train_forward(x, axis)[0]
                dx_ref = ref.train_backward(dy, x, axis)[0]
                assert np.allclose(out, y_ref, rtol=tol, atol=tol), (layout, shape, offset)
                scale = max(1.0, float(np.abs(dx_ref).max()))
                assert np.allclose(dx_out, dx_ref, rtol=0, atol=tol * scale), (layout, shape, offset)
                bn.eval()
                y_eval = bn(x, out=out)
                assert np.allclose(y_eval, ref.normalize(x, axis, bn.running_mean, bn.running_var,
                                                         None, None, 1e-5), rtol=tol, atol=tol)
                # fused ReLU: forward clamps, backward gates dy, also when streaming
                fused = cls(C, dtype=dtype, layout=layout, activation="relu")
                y = fused(x, out=out)
                assert np.allclose(y, np.maximum(y_ref, 0), rtol=tol, atol=tol), (layout, shape)
                fused.backward(dy, out=dx_out)
                g = dy * (y > 0)
                dx_ref = ref.train_backward(g, x, axis)[0]
                scale = max(1.0, float(np.abs(dx_ref).max()))
                assert np.allclose(dx_out, dx_ref, rtol=0, atol=tol * scale), (layout, shape, offset)
    print("ok")
    """
)


@pytest.mark.parametrize("loops", ["auto", "baseline"])
def test_streaming_stores_match_the_reference(loops):
    env = dict(os.environ, CBN_STREAM_BYTES="0", CBN_LOOPS=loops)
    here = os.path.dirname(os.path.abspath(__file__))
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=here,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "ok"


def _threshold(**env):
    script = "from cbn import _runtime; print(_runtime.stream_threshold())"
    environ = {k: v for k, v in os.environ.items() if k != "CBN_STREAM_BYTES"}
    result = subprocess.run([sys.executable, "-c", script], env=dict(environ, **env),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def test_stream_threshold_is_bounded_whatever_cache_the_os_reports():
    # half the reported last-level cache, never more than half of 32 MiB
    # (virtual machines report 320 or 480 MiB: nothing would ever stream)
    threshold = _threshold()
    assert 1 << 19 <= threshold <= 16 << 20
    if hasattr(os, "sysconf") and "SC_LEVEL3_CACHE_SIZE" in os.sysconf_names:
        reported = os.sysconf("SC_LEVEL3_CACHE_SIZE")
        if reported > 1 << 20:
            assert threshold == min(reported, 32 << 20) // 2


def test_stream_threshold_follows_the_environment():
    assert _threshold(CBN_STREAM_BYTES="123") == 123
