"""The baseline (16-byte vector) loops, which CPUs with AVX2 never run by
default: the kernel tests again, in a process with CBN_LOOPS=baseline."""
import os
import subprocess
import sys

import pytest

from cbn import _runtime

HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL_TESTS = ["test_forward.py", "test_backward.py", "test_views.py", "test_fused_relu.py",
                "test_float32_accuracy.py", "test_nonfinite.py", "test_out.py",
                "test_virtual_batches.py"]


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


def test_unknown_cbn_loops_value_is_an_error():
    result = _run(["-c", "import cbn"], "avx512")
    assert result.returncode != 0
    assert "CBN_LOOPS: expected 'auto' or 'baseline', got 'avx512'" in result.stderr
