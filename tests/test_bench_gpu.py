"""The GPU benchmark script runs end to end on CPU (``--smoke``: tiny shapes, the kernels in
Pallas interpret mode): one invocation writes the whole results file, a resumed one adds
nothing that is done and refuses another commit's file, and the README block is rendered
from the JSON alone."""

import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
LIBS = "rnnjax:pallas,rnnjax:auto,flax.linen:OptimizedLSTMCell,torch"
ARGS = ["--smoke", "--cells", "lstm", "--shapes", "S", "--libs", LIBS]


@pytest.fixture(scope="module")
def bench_gpu():
    sys.path.insert(0, str(BENCH))
    try:
        import bench_gpu
    finally:
        sys.path.remove(str(BENCH))
    return bench_gpu


@pytest.fixture(scope="module")
def smoke_run(bench_gpu, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    results = bench_gpu.main([*ARGS, "--out", str(out)])
    return out, results


def readme_block_matches_its_json(bench_gpu, readme: Path) -> bool:
    """The README's block equals the one rendered from the JSON file it cites."""
    text = readme.read_text()
    block = re.search(r"<!-- bench_gpu:start -->.*?<!-- bench_gpu:end -->", text, flags=re.S)
    assert block is not None
    cited = re.search(r"\]\(([^)]*gpu_[^)]*\.json)\)", block.group(0))
    assert cited is not None, "the block names its results file"
    results = json.loads((readme.parent / cited.group(1)).read_text())
    return block.group(0) == bench_gpu.readme_block(results, cited.group(1))


def test_one_invocation_writes_the_whole_file(bench_gpu, smoke_run):
    out, results = smoke_run
    (json_path,) = out.glob("gpu_*.json")
    saved = json.loads(json_path.read_text())
    assert saved == json.loads(json.dumps(results))
    run = saved["runs"][0]
    assert re.fullmatch(r"[0-9a-f]{40}", run["commit"]) and "bench_gpu.py --smoke" in run["command"]
    assert run["ended"] >= run["started"]
    assert saved["versions"]["jax"] and set(saved["ceilings"]) >= {"copy_tb_s"}
    checked = {c["backend"] for c in saved["checks"]}
    assert {"pallas", "pallas_verified"} <= checked  # every GPU kernel, in interpret mode here
    for c in saved["checks"]:
        assert c["finite"] and max(c["out_rel_err"], c["grad_rel_err"]) <= 1e-5, c
    timed = {(t["lib"], t["mode"]) for t in saved["timings"]}
    assert timed == {(lib, mode) for lib in LIBS.split(",") for mode in ("train", "inference")}
    torch_rows = [t for t in saved["timings"] if t["lib"] == "torch"]
    assert all("error" in t for t in torch_rows)  # no CUDA here: recorded, not fatal
    assert all(t["median_ms"] > 0 for t in saved["timings"] if t["lib"] != "torch")
    assert saved["planned"] and not bench_gpu.missing(saved)
    md = json_path.with_suffix(".md").read_text()
    assert "## Targets" in md and "Planned items missing: 0" in md and run["commit"] in md


def test_resume_adds_nothing_done_and_refuses_another_commit(bench_gpu, smoke_run):
    out, first = smoke_run
    again = bench_gpu.main([*ARGS, "--out", str(out), "--resume"])
    assert len(again["runs"]) == 2
    assert len(again["timings"]) == len(first["timings"])
    assert len(again["checks"]) == len(first["checks"])
    (json_path,) = out.glob("gpu_*.json")
    other = json.loads(json_path.read_text())
    other["runs"][0]["commit"] = "0" * 40
    json_path.write_text(json.dumps(other))
    with pytest.raises(SystemExit, match=r"not .* at "):
        bench_gpu.main([*ARGS, "--out", str(out), "--resume"])


def test_budget_stops_early_and_says_what_is_missing(bench_gpu, tmp_path):
    results = bench_gpu.main([*ARGS, "--out", str(tmp_path), "--budget-s", "0"])
    assert not results["checks"] and not results["timings"]
    assert bench_gpu.missing(results) == results["planned"] and results["planned"]
    md = next(tmp_path.glob("gpu_*.md")).read_text()
    assert f"Planned items missing: {len(results['planned'])}" in md


def test_readme_block_is_rendered_from_the_json(bench_gpu, smoke_run, tmp_path):
    out, _ = smoke_run
    (json_path,) = out.glob("gpu_*.json")
    local = tmp_path / json_path.name
    local.write_text(json_path.read_text())
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- bench_gpu:start -->\nold\n<!-- bench_gpu:end -->\n\nrest\n")
    bench_gpu.main(["--render", str(local), "--readme", str(readme)])
    text = readme.read_text()
    assert "old" not in text and text.endswith("\n\nrest\n") and "LSTM train" in text
    assert readme_block_matches_its_json(bench_gpu, readme)
    # the real README: once its block cites a results file, it must be that file's rendering
    if re.search(r"bench_gpu:start -->[^<]*\]\([^)]*\.json\)", (REPO / "README.md").read_text()):
        assert readme_block_matches_its_json(bench_gpu, REPO / "README.md")
