"""The loops a CPU with AVX2 never runs by default: the baseline (16-byte
vector) loops and the portable scalar reference loops, each running the
kernel tests in a process with CBN_LOOPS set, and all three loop sets
against the float64 reference on the same random inputs."""
import os
import subprocess
import sys

import pytest

from cbn import _runtime

HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL_TESTS = ["test_forward.py", "test_backward.py", "test_views.py", "test_fused_relu.py",
                "test_float32_accuracy.py", "test_nonfinite.py", "test_out.py",
                "test_virtual_batches.py", "test_half_precision.py", "test_long_rows.py"]


def _run(code_or_args, loops):
    env = dict(os.environ, CBN_LOOPS=loops)
    return subprocess.run([sys.executable, *code_or_args], env=env, cwd=HERE,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(not _runtime.loops_isa().startswith("avx2 (run-time"),
                    reason="the default loops are the only ones this build or CPU runs")
def test_kernel_tests_pass_with_the_baseline_loops():
    isa = _run(["-c", "from cbn import _runtime; print(_runtime.loops_isa())"], "baseline")
    assert isa.stdout.startswith("baseline"), isa.stdout + isa.stderr
    result = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", *KERNEL_TESTS], "baseline")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


def test_kernel_tests_pass_with_the_scalar_loops():
    isa = _run(["-c", "from cbn import _runtime; print(_runtime.loops_isa())"], "scalar")
    assert isa.stdout.startswith("scalar"), isa.stdout + isa.stderr
    result = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", *KERNEL_TESTS], "scalar")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


# forward (training, with a fused ReLU) and backward of random inputs, saved
# for the test process: channels-first and -last, runs/rows with tails
OUTPUTS = """
import sys
import numpy as np
import cbn
rng = np.random.default_rng(7)
out = {}
dtypes = [np.float32, np.float64, np.float16]
try:
    import ml_dtypes
    dtypes.append(ml_dtypes.bfloat16)
except ImportError:
    pass
for dtype in dtypes:
    for layout, shape in (("NCHW", (5, 3, 37)), ("NHWC", (4, 9, 13)), ("NCHW", (2, 67, 3))):
        x = (rng.standard_normal(shape) * 3 + 20).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        C = shape[1] if layout == "NCHW" else shape[-1]
        bn = cbn.BatchNorm1d(C, dtype=dtype, layout=layout, activation="relu")
        key = f"{np.dtype(dtype).name}-{layout}-{shape}"
        out[key + "-x"], out[key + "-dy"] = x.astype(np.float64), dy.astype(np.float64)
        out[key + "-y"] = bn(x).astype(np.float64)
        out[key + "-dx"] = bn.backward(dy).astype(np.float64)
np.savez(sys.argv[1], **out)
"""


def test_every_loop_set_matches_the_float64_reference(tmp_path):
    import numpy as np

    import reference as ref

    results = {}
    for loops in ("scalar", "baseline", "auto"):
        path = tmp_path / f"{loops}.npz"
        run = _run(["-c", OUTPUTS, str(path)], loops)
        assert run.returncode == 0, run.stderr
        results[loops] = np.load(path)
    keys = sorted({k.rsplit("-", 1)[0] for k in results["scalar"].files})
    for key in keys:
        dtype, layout = key.split("-")[:2]
        # float32: its roundings; float16, bfloat16: a unit in the last place at 2
        tol = {"float32": 1e-4, "float64": 1e-10, "float16": 2e-3, "bfloat16": 2e-2}[dtype]
        x = results["scalar"][key + "-x"].astype(np.float64)
        dy = results["scalar"][key + "-dy"].astype(np.float64)
        axis = 1 if layout == "NCHW" else x.ndim - 1
        y_ref = np.maximum(ref.train_forward(x, axis)[0], 0.0)
        dx_ref = ref.train_backward(np.where(y_ref > 0, dy, 0.0), x, axis)[0]
        for loops, arrays in results.items():
            np.testing.assert_allclose(arrays[key + "-y"], y_ref, rtol=tol, atol=tol,
                                       err_msg=f"{loops} {key} y")
            np.testing.assert_allclose(arrays[key + "-dx"], dx_ref, rtol=tol, atol=tol,
                                       err_msg=f"{loops} {key} dx")


def test_unknown_cbn_loops_value_is_an_error():
    result = _run(["-c", "import cbn"], "avx512")
    assert result.returncode != 0
    assert "CBN_LOOPS: expected 'auto', 'baseline' or 'scalar', got 'avx512'" in result.stderr
