"""Handwriting results: the online recogniser, then the synthesis network read back by it.

Runs, through ``python -m rnnjax.models`` (``rnnjax train`` by another name)::

    rnnjax train --task handwriting_recognition <RECOGNITION> --out runs/handwriting/recognition
    rnnjax train --task handwriting <SYNTHESIS> --recogniser runs/handwriting/recognition \
        --out runs/handwriting/synthesis

and writes ``benchmarks/results/handwriting.json`` (both results, the commands, the CPU and wall
time and the machine's load average), ``handwriting.md`` and the figure ``handwriting.png``::

    .venv/bin/python benchmarks/handwriting.py            # both (recogniser first)
    .venv/bin/python benchmarks/handwriting.py --table    # rewrite handwriting.md from the json

The CPU time of a run is what it takes on an idle machine (the models run one thread's worth
of work at these sizes); on a shared machine the wall time is longer.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "runs" / "handwriting"
SEED = 0
RECOGNITION = ["--steps", "1000", "--hidden", "64", "--cpu-minutes", "4"]
SYNTHESIS = ["--steps", "1600", "--unconditional-steps", "300", "--hidden", "128", "--bias", "1.0"]
SYNTHESIS += ["--cpu-minutes", "8"]  # training only, shared by the two models by their steps


def run(task: str, flags: list[str], out: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)
    argv = ["--task", task, *flags, "--out", str(out.relative_to(ROOT)), "--seed", str(SEED)]
    argv.append("--quiet")
    command = " ".join(["rnnjax", "train", *argv])
    print("$", command, flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before, t0 = os.getloadavg()[0], time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rnnjax.models", *argv], cwd=ROOT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{task}: exit status {proc.returncode}")
    result = json.loads((out / "result.json").read_text())
    result["command"] = command
    result["total_wall_s"] = round(wall, 1)
    result["total_cpu_s"] = round(
        after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1
    )
    result["load_average_1min"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    return result


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def table(results: dict) -> str:
    rec, syn = results["recognition"], results["synthesis"]
    r, s = rec["evaluation"], syn["evaluation"]
    t = syn["training"]
    cpu = rec["total_cpu_s"] + syn["total_cpu_s"]
    wall = rec["total_wall_s"] + syn["total_wall_s"]
    met = lambda result: "met" if result["target"]["met"] else "**missed**"  # noqa: E731
    lines = [
        "# Handwriting: recognition and synthesis",
        "",
        f"Produced by `benchmarks/handwriting.py` on {rec['machine']['device']} "
        f"({rec['machine']['cpu_count']} cores, shared; 1-minute load average "
        f"{rec['load_average_1min'][0]}–{syn['load_average_1min'][1]}), jax "
        f"{rec['machine']['jax']}: {cpu / 60:.1f} CPU minutes in all ({wall / 60:.1f} minutes "
        "of wall time on the shared machine).",
        "",
        "| model | command | training | measured | target |",
        "|---|---|---|---|---|",
        f"| recogniser (BLSTM + CTC) | `{rec['command']}` | "
        f"{rec['training']['steps_done']} steps, {rec['total_cpu_s']:.0f} s CPU, "
        f"{rec['total_wall_s']:.0f} s wall | CER on {r['held_out_samples']} written held-out "
        f"words: greedy {pct(r['cer_greedy'])}, beam {r['beam']} {pct(r['cer_beam'])} | "
        f"≤ 5 %: {met(rec)} |",
        f"| synthesis (Graves 2013) | `{syn['command']}` | synthesis "
        f"{t['synthesis']['steps_done']} + unconditional {t['unconditional']['steps_done']} "
        f"steps, {syn['total_cpu_s']:.0f} s CPU, {syn['total_wall_s']:.0f} s wall | "
        f"recogniser's CER on {s['legibility_words']} synthesised held-out words, bias "
        f"{s['bias']}: {pct(s['cer_synthesis'])} | ≤ 20 %: {met(syn)} |",
        "",
        f"- **recogniser**: by face: cursive {pct(r['cer_cursive'])}, print (futural) "
        f"{pct(r['cer_futural'])}; whole words right {pct(r['word_accuracy_greedy'])}; the "
        f"fonts' own renderings {pct(r['cer_font_renderings'])}; trained on "
        f"{r['train_words']} words, {r['held_out_words']} held out.",
        f"- **synthesis legibility** (CER): cursive {pct(s['cer_synthesis_cursive'])}, print "
        f"{pct(s['cer_synthesis_futural'])}; whole words right "
        f"{pct(s['word_accuracy_synthesis'])}; by bias "
        + ", ".join(f"{b}: {pct(v)}" for b, v in s["cer_synthesis_by_bias"].items())
        + f"; the same words written by the data generator: {pct(s['cer_written_data'])}.",
        f"- **NLL per point** on {s['held_out_words']} held-out words × 2 faces "
        f"({s['val_points']} points): synthesis {s['val_nll_per_point_synthesis']:.3f}, "
        f"unconditional {s['val_nll_per_point_unconditional']:.3f} ({s['units']}).",
        "- synthesised → read: " + ", ".join(f"`{e}`" for e in s["examples"][:10]),
        "",
        "![handwriting](handwriting.png)",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = {"recognition": run("handwriting_recognition", RECOGNITION, RUNS / "recognition")}
    flags = [*SYNTHESIS, "--recogniser", str((RUNS / "recognition").relative_to(ROOT))]
    results["synthesis"] = run("handwriting", flags, RUNS / "synthesis")
    shutil.copyfile(RUNS / "synthesis" / "handwriting_samples.png", RESULTS / "handwriting.png")
    results["synthesis"]["evaluation"]["figure"] = "benchmarks/results/handwriting.png"
    (RESULTS / "handwriting.json").write_text(
        json.dumps(results, indent=2, ensure_ascii=False) + "\n"
    )
    (RESULTS / "handwriting.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    if sys.argv[1:] == ["--table"]:
        saved = json.loads((RESULTS / "handwriting.json").read_text())
        (RESULTS / "handwriting.md").write_text(table(saved))
    else:
        main()
