"""Smoke tests of the CPU benchmark (``bench_speed.py --quick`` runs end to end in seconds and
writes its JSON, markdown table and plot) and of the probes the README quotes."""

import json
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def test_bench_speed_quick(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        import bench_speed
    finally:
        sys.path.remove(str(BENCH))
    report = bench_speed.main(["--quick", "--out", str(tmp_path), "--prefix", "smoke"])
    data = json.loads((tmp_path / "smoke_speed.json").read_text())
    assert data["gemm_gflops"] > 0
    cases = data["cases"]
    assert {c["mode"] for c in cases} == {"train", "inference"}
    for case in cases:
        assert "rnnjax:fused" in case["median_s"]
        assert all(t > 0 for t in case["median_s"].values())
        assert case["floor_s"] > 0
        assert case["ratio"] > 0  # best rnnjax / fastest peer
    memory = data["memory"]["lstm"]["temp_bytes"]
    assert memory["rnnjax:fused"] > 0
    assert memory["rnnjax:fused:chunk=100"] > 0 and memory["rnnjax:fused:chunk=100:remat=1"] > 0
    table = (tmp_path / "smoke_speed.md").read_text()
    assert "best rnnjax" in table and "rnnjax:fused" in table
    assert (tmp_path / "smoke_speed.png").stat().st_size > 1000
    assert report["machine"]["cores"] >= 1


def test_merge_replaces_the_rerun_shapes_only():
    sys.path.insert(0, str(BENCH))
    try:
        import bench_speed
    finally:
        sys.path.remove(str(BENCH))
    machine = {"load_average_start": [0.5], "load_average_end": [1.5]}
    first = {
        "machine": machine,
        "gemm_gflops": 100.0,
        "cases": [{"shape": "S", "tag": "first"}, {"shape": "latency", "tag": "first"}],
    }
    rerun = {"machine": machine, "gemm_gflops": 90.0, "cases": [{"shape": "latency", "tag": "re"}]}
    merged = bench_speed.merge(first, rerun)
    assert {(c["shape"], c["tag"]) for c in merged["cases"]} == {("S", "first"), ("latency", "re")}
    assert merged["reruns"] == [{"shapes": ["latency"], "machine": machine, "gemm_gflops": 90.0}]
    again = bench_speed.merge(merged, rerun)  # re-running the same shape replaces its record
    assert len(again["reruns"]) == 1 and len(again["cases"]) == 2


@pytest.mark.skipif(shutil.which("g++") is None, reason="the probe and fused_cpu build with g++")
def test_gemm_ceiling_probe_runs_at_a_tiny_shape():
    """The probe behind the README's statement on the LSTM's L step runs end to end: every
    piece timed, the FMA peak and the matmul sum positive."""
    sys.path.insert(0, str(BENCH))
    try:
        import gemm_ceiling_probe
    finally:
        sys.path.remove(str(BENCH))
    report = gemm_ceiling_probe.main(["--shape", "2,3,4,16", "--rounds", "1"])
    assert report["peak"] > 0
    pieces = 7 + ("PyTorch step" in report["times"])  # PyTorch where the bench extra is
    assert len(report["times"]) == pieces and all(t[0] > 0 for t in report["times"].values())
    assert report["matmuls_at_xla"] > 0


def test_peer_company_probe_runs_at_a_tiny_shape():
    pytest.importorskip("torch")  # the bench extra: the probe times PyTorch
    sys.path.insert(0, str(BENCH))
    try:
        import peer_company_probe
    finally:
        sys.path.remove(str(BENCH))
    report = peer_company_probe.main(["--shape", "2,3,4,8", "--cycles", "1", "--calls", "1"])
    assert set(report) == {"alone", "rnnjax", "all"}
    assert report["alone"][0] > 0 and report["alone"][1] is None
    assert report["all"][1] > 0  # rnnjax / PyTorch
