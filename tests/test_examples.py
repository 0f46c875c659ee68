"""The demo and every example run, with reduced budgets."""
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_prints_measured_table_and_writes_figure(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from cbn import _demo

    lines = []
    out = tmp_path / "demo.png"
    runs = _demo.run(steps=150, seed=1, out=str(out), show_progress=False, print_=lines.append)
    assert out.stat().st_size > 10_000
    text = "\n".join(lines)
    assert "1797 8x8 images" in text and "1437 to train, 360 to test" in text
    assert len(runs) == 4 and {lr for _, lr in runs} == {0.1, 0.5}
    for (bn, lr), rec in runs.items():
        name = f"{'with' if bn else 'without'} BN, lr {lr:g}"
        row = next(line for line in lines if line.startswith(name))
        assert f"{rec['accuracy'][-1]:.3f}" in row  # the table shows what was measured
        assert rec["steps"][-1] == 150 and len(rec["percentiles"]) == len(rec["steps"])
    # batch norm learns faster in the same number of steps
    assert runs[(True, 0.1)]["accuracy"][-1] > runs[(False, 0.1)]["accuracy"][-1]


def test_demo_command_line(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    pytest.importorskip("tqdm")
    out = tmp_path / "cli.png"
    result = subprocess.run([sys.executable, "-m", "cbn", "demo", "--steps", "50", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "steps to 90%" in result.stdout and out.exists()
    bad = subprocess.run([sys.executable, "-m", "cbn", "demo", "--steps", "0"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "--steps" in bad.stderr


def test_cnn_example_learns_in_both_layouts():
    pytest.importorskip("sklearn")
    accuracies = load("cnn_digits").main(epochs=1, print_=lambda *a: None)
    assert set(accuracies) == {"NCHW", "NHWC"}
    assert min(accuracies.values()) > 0.7
    assert abs(accuracies["NCHW"] - accuracies["NHWC"]) < 0.02


def test_torch_example():
    pytest.importorskip("torch")
    differences = load("torch_to_cbn").main(print_=lambda *a: None)
    assert max(differences.values()) < 1e-5


def run_on_two_ranks(script, *args):
    pytest.importorskip("mpi4py")
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([mpiexec, "-n", "2", sys.executable, str(EXAMPLES / script), *args],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_mpi_example_matches_one_process():
    pytest.importorskip("sklearn")
    stdout = run_on_two_ranks("mpi_data_parallel.py", "--steps", "10")
    assert "largest difference over 10 steps" in stdout


def test_sync_cost_example_measures_both_exchanges_and_projects_them():
    pytest.importorskip("mpi4py")
    if shutil.which("mpiexec") is None:
        pytest.skip("no mpiexec")
    result = subprocess.run([sys.executable, str(EXAMPLES / "sync_bn_cost.py"), "--processes",
                             "1,2,3", "--channels", "64", "--rounds", "3", "--transport", "shm"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    measured = [line.split() for line in lines[2:8]]
    assert [(row[0], row[2]) for row in measured] == [
        (P, path) for path in ("allgather", "allreduce") for P in ("1", "2", "3")]
    buffers = {(row[0], row[2]): float(row[4].removesuffix("kB")) for row in measured}
    assert buffers["1", "allreduce"] == buffers["2", "allreduce"] == buffers["3", "allreduce"]
    assert buffers["1", "allgather"] < buffers["2", "allgather"] < buffers["3", "allgather"]
    assert any(line.startswith("-- 10 Gb/s") for line in lines)
    assert any(line.startswith("-- 100 Gb/s") for line in lines)
