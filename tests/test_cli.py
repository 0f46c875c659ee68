"""python -m cbn info / bench run and report what they measure."""
import json
import subprocess
import sys

import cbn


def run(*args):
    return subprocess.run([sys.executable, "-m", "cbn", *args], capture_output=True, text=True,
                          timeout=300)


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
    assert run("bench", "--threads", "0").returncode == 2
    assert run("bench", "--ops", "sideways").returncode == 2


def test_a_bad_shape_is_a_usage_error_naming_it():
    for shape in ("foo", "4x0x5x5", "4", "1x2x3x4x5x6", "4x-3"):
        result = run("bench", "--shapes", shape)
        assert result.returncode == 2, (shape, result.stderr)
        assert "--shapes" in result.stderr and repr(shape) in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_version():
    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"cbn {cbn.__version__}"
