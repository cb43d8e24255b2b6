"""Smoke test of the CPU benchmark: ``bench_speed.py --quick`` runs end to end in seconds and
writes its JSON, markdown table and plot."""

import json
import sys
from pathlib import Path

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
    assert data["memory"]["lstm"]["temp_bytes"]["rnnjax:fused"] > 0
    table = (tmp_path / "smoke_speed.md").read_text()
    assert "best rnnjax" in table and "rnnjax:fused" in table
    assert (tmp_path / "smoke_speed.png").stat().st_size > 1000
    assert report["machine"]["cores"] >= 1
