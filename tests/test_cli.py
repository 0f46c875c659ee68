"""python -m cbn info / bench run and report what they measure."""
import json
import os
import subprocess
import sys

import pytest

import cbn
from cbn._bench import OPS


def run(*args):
    return subprocess.run([sys.executable, "-m", "cbn", *args], capture_output=True, text=True,
                          timeout=300)


def refused(*args):
    """The one error line of python -m cbn bench *args: a usage error (exit 2)
    before anything ran (no table, nothing on stdout), not a traceback."""
    result = run("bench", "--no-torch", "--repeats", "1", "--dtypes", "float32", *args)
    assert result.returncode == 2, (args, result.stdout, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr, (args, result.stderr)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr
    return errors[0]


def _cpus():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_info_reports_build_and_threads():
    result = run("info")
    assert result.returncode == 0, result.stderr
    for text in ("cbn ", "OpenMP:", "threads:", "vector loops:", "built with:"):
        assert text in result.stdout


def test_bench_prints_a_table_and_writes_json(tmp_path):
    path = tmp_path / "bench.json"
    result = run("bench", "--shapes", "4x3x5x5", "96x40", "--repeats", "2", "--threads", "1",
                 "--dtypes", "float64", "--no-torch", "--json", str(path))
    assert result.returncode == 0, result.stderr
    assert "cbn/limit" in result.stdout and "train+bwd 4x3x5x5 NHWC float64" in result.stdout
    report = json.loads(path.read_text())
    assert report["threads"] == 1 and report["machine"]["cpus"] >= 1
    cases = {(r["op"], tuple(r["shape"]), r["layout"]) for r in report["results"]}
    assert ("eval", (96, 40), "NCHW") in cases and len(cases) == 9
    for r in report["results"]:
        m = r["median_s"]
        assert m["cbn"] > 0 and m["copy"] > 0 and m["read"] > 0 and m["numpy"] > 0
        copies, reads = r["limit_passes"]
        assert m["limit"] == copies * m["copy"] + reads * m["read"]
        assert r["ratio_to_limit"] == m["cbn"] / m["limit"]
        assert len(r["samples_s"]["cbn"]) == 2


def test_bench_rejects_bad_arguments():
    assert "--threads" in refused("--threads", "0")
    # the floors start exactly this many threads: past the system's limit, a crash
    assert "--threads" in refused("--threads", str(_cpus() + 1))
    assert "--threads" in refused("--threads", "100000")
    assert "--repeats" in refused("--shapes", "4x4", "--repeats", "0")
    assert "--ops" in refused("--ops", "sideways")


def test_a_bad_shape_is_a_usage_error_naming_it():
    for shape in ("foo", "4x0x5x5", "0x4", "4", "1x2x3x4x5x6", "4x-3"):
        line = refused("--shapes", shape)
        assert "--shapes" in line and repr(shape) in line, line


def test_bench_refuses_one_value_per_channel_for_the_ops_with_batch_statistics():
    training = [op for op in OPS if op != "eval"]
    assert training   # every op but eval normalises with the batch's statistics
    for op in training:
        line = refused("--shapes", "8x4x5x5", "1x4x1x1", "--ops", "eval", op)
        assert f"--shapes: 1x4x1x1 with --ops {op}" in line and "per channel" in line, line
    for shape in ("1x4", "1x4x1", "1x4x1x1x1"):   # with every layer
        line = refused("--shapes", shape, "--layouts", "NHWC", "NCHW")
        assert f"--shapes: {shape} with --ops" in line and "per channel" in line, line
    # eval normalises with the running statistics: one value per channel is fine
    result = run("bench", "--shapes", "1x4", "--ops", "eval", "--repeats", "1", "--threads", "1",
                 "--dtypes", "float32", "--no-torch")
    assert result.returncode == 0 and "eval 1x4 float32" in result.stdout, result.stderr


def test_bench_refuses_a_shape_no_layout_runs():
    line = refused("--shapes", "2x4", "--layouts", "NHWC")
    assert "--layouts" in line and "2x4" in line and "NHWC" in line, line


def test_bench_refuses_a_shape_too_large_for_memory():
    for shape in ("1000000x1000000", "99999999999x99999999999x9999999"):
        line = refused("--shapes", shape)
        assert "--shapes" in line and shape in line and "memory" in line, line


def test_bench_refuses_repeated_values():
    assert "--shapes" in refused("--shapes", "4x4", "4X4")
    assert "--ops" in refused("--ops", "eval", "eval")
    assert "--layouts" in refused("--layouts", "NHWC", "NCHW", "NHWC")
    assert "--dtypes" in refused("--dtypes", "float32", "float32")


def test_bench_refuses_a_json_file_it_cannot_write(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for path in (tmp_path / "missing" / "bench.json", tmp_path, a_file / "bench.json", ""):
        line = refused("--shapes", "4x4", "--json", str(path))
        assert "--json" in line and repr(str(path)) in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only directories")
def test_bench_refuses_a_json_file_in_a_read_only_directory(tmp_path):
    tmp_path.chmod(0o500)
    try:
        line = refused("--shapes", "4x4", "--json", str(tmp_path / "bench.json"))
    finally:
        tmp_path.chmod(0o700)
    assert "--json" in line and "Permission denied" in line, line


def test_a_refused_bench_leaves_the_json_file_as_it_was(tmp_path):
    kept = tmp_path / "kept.json"
    kept.write_text("earlier")
    assert "--shapes" in refused("--shapes", "1x4", "--json", str(kept))
    assert "--shapes" in refused("--shapes", "1x4", "--json", str(tmp_path / "new.json"))
    assert kept.read_text() == "earlier" and not (tmp_path / "new.json").exists()


def test_version():
    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"cbn {cbn.__version__}"
