"""Full-budget runs of the lecture's applications, measured against their targets.

Runs ``rnnjax train --task NAME`` for each application (or the ones named) — through
``python -m rnnjax.models``, the same parser and loop as that command — with the settings
below, each capped at BUDGET_MINUTES of training CPU time (BUDGETS for the entries given
more), and collects the results into
``benchmarks/results/applications.json`` (one entry per application; running one updates only
its entry), a table ``applications.md`` and the figures ``applications_<name>.png``::

    .venv/bin/python benchmarks/applications.py              # all of them, one after another
    .venv/bin/python benchmarks/applications.py caption qa   # some
    .venv/bin/python benchmarks/applications.py vqa vqa-every vqa-state vqa-question-only
    .venv/bin/python benchmarks/applications.py vqa-state-augment vqa-every-augment

Some entries are variants of one application (``TASKS``): the visual question answering runs
differ only in where the image enters the LSTM and whether the training digits are augmented,
the tree runs in the cell, the operators and the share of 3-child nodes; each family also gets
a comparison table.

Run directories (checkpoints, metrics.jsonl) go to ``runs/applications/<name>`` (git-ignored).
Handwriting (recognition and synthesis, two applications that depend on each other) has its
own script, ``benchmarks/handwriting.py``.
"""

from __future__ import annotations

import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "runs" / "applications"
BUDGET_MINUTES = 9.0  # training CPU time (--cpu-minutes); data and evaluation come on top
BUDGETS = {  # entries given more
    **dict.fromkeys(("vqa", "vqa-every", "vqa-state", "vqa-question-only"), 40.0),
    **dict.fromkeys(("vqa-state-augment", "vqa-every-augment"), 40.0),
    "tree-n-ary": 45.0,
    "tree-child-sum-three": 15.0,
}
SEED = 0
SETTINGS = {  # flags beyond --task, --out, --seed, --cpu-minutes (defaults: `rnnjax train -h`)
    "translate": ["--steps", "600"],
    "caption": ["--steps", "3000"],
    "qa": ["--steps", "2500"],
    "tree": ["--steps", "3000"],
    "vqa": ["--steps", "20000", "--image", "first"],
    "vqa-every": ["--steps", "20000", "--image", "every"],
    "vqa-state": ["--steps", "20000", "--image", "state"],
    "vqa-question-only": ["--steps", "20000", "--image", "none"],
    "vqa-state-augment": ["--steps", "20000", "--image", "state", "--augment"],
    "vqa-every-augment": ["--steps", "20000", "--image", "every", "--augment"],
    "tree-n-ary": [
        *("--steps", "20000", "--cell", "n-ary", "--ops", "+", "-", "*", "--three", "0.25"),
    ],
    "tree-child-sum-ordered": [
        *("--steps", "3000", "--cell", "child-sum", "--ops", "+", "-", "*", "--three", "0.25"),
    ],
    "tree-child-sum-three": ["--steps", "6000", "--cell", "child-sum", "--three", "0.25"],
}
TASKS = {  # entry -> application, where they differ
    "vqa-every": "vqa",
    "vqa-state": "vqa",
    "vqa-question-only": "vqa",
    "vqa-state-augment": "vqa",
    "vqa-every-augment": "vqa",
    "tree-n-ary": "tree",
    "tree-child-sum-ordered": "tree",
    "tree-child-sum-three": "tree",
}
FIGURES = {
    "caption": "caption_samples.png",
    "vqa": "vqa_samples.png",
}


def run_one(name: str) -> dict:
    out = RUNS / name
    if out.exists():
        shutil.rmtree(out)
    flags = ["--task", TASKS.get(name, name), *SETTINGS[name], "--out", str(out.relative_to(ROOT))]
    budget = BUDGETS.get(name, BUDGET_MINUTES)
    flags += ["--seed", str(SEED), "--cpu-minutes", str(budget), "--quiet"]
    command = ["rnnjax", "train", *flags]
    print("$", " ".join(command), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    entry = [sys.executable, "-m", "rnnjax.models"]  # = rnnjax train --task ...
    proc = subprocess.run([*entry, *flags], cwd=ROOT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: exit status {proc.returncode}")
    result = json.loads((out / "result.json").read_text())
    result["command"] = " ".join(command)
    result["total_wall_s"] = round(wall, 1)
    result["total_cpu_s"] = round(
        after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1
    )
    if name in FIGURES:
        figure = RESULTS / f"applications_{name}.png"
        shutil.copyfile(out / FIGURES[name], figure)
        result["evaluation"]["figure"] = str(figure.relative_to(ROOT))
    return result


HEADLINE = {  # application -> (figure label, key in the evaluation); variants share theirs
    "translate": ("exact match, held-out numbers (greedy)", "exact_match_greedy"),
    "caption": ("exact caption, held-out compositions", "exact_caption"),
    "qa": ("exact answer, held-out stories", "exact_answer"),
    "tree": ("accuracy on deeper held-out trees", "accuracy_deeper"),
    "vqa": ("exact answer, held-out images", "exact_answer"),
}


def image_label(ev: dict) -> str:
    """Where a VQA model's image enters, and whether its training digits were augmented."""
    return ev["image"] + (", augmented digits" if ev.get("augment") else "")


def details(name: str, ev: dict) -> str:
    """The secondary figures of an application, one line."""
    pct = lambda x: f"{100 * x:.1f} %"  # noqa: E731
    if name == "translate":
        return (
            f"beam {ev['beam_size']}: {pct(ev['exact_match_beam'])} exact; BLEU greedy "
            f"{ev['bleu_greedy']:.4g}, beam {ev['bleu_beam']:.4g}; "
            f"{ev['test_numbers']} held-out "
            f"numbers, by digits {ev['test_numbers_by_digits']}"
        )
    if name == "caption":
        return (
            f"beam {ev['beam_size']}: {pct(ev['exact_caption_beam'])}; digit accuracy "
            f"{pct(ev['digit_accuracy'])}; {ev['test_compositions']} compositions of "
            f"{ev['test_digit_images']} held-out digit images"
        )
    if name == "qa":
        kinds = ", ".join(f"{k} {pct(v)}" for k, v in ev["exact_answer_by_kind"].items())
        return f"{ev['test_stories']} held-out stories; by question: {kinds}"
    if name.startswith("vqa"):
        kinds = ", ".join(f"{k} {pct(v)}" for k, v in ev["exact_answer_by_kind"].items())
        return (
            f"image: {image_label(ev)}; {ev['test_questions']} questions about scenes of "
            f"{ev['test_digit_images']} held-out digit images; by question: {kinds}"
        )
    heights = [int(k.rsplit("_", 1)[1]) for k in ev if k.startswith("accuracy_height_")]
    nodes = ev.get("node_accuracy_deeper", {})
    cell = (
        f"{ev['cell']} cell, ops {' '.join(ev['ops'])}, 3-child share {ev['three']}; "
        if "cell" in ev
        else ""
    )
    by_height = ", ".join(
        f"{h}: {pct(ev[f'accuracy_height_{h}'])} ({pct(ev[f'majority_baseline_height_{h}'])})"
        for h in sorted(heights)
    )
    per_node = ", ".join(f"{k} {pct(v)}" for k, v in nodes.items())
    return (
        f"{cell}by height (majority baseline): {by_height}; "
        f"trained on heights {ev['train_heights']}"
        + (f"; per-node accuracy on the deeper trees: {per_node}" if nodes else "")
    )


def table(results: dict) -> str:
    lines = [
        "| application | command | training | measured | target |",
        "|---|---|---|---|---|",
    ]
    notes, figures = [], []
    for name, r in results.items():
        label, key = HEADLINE[TASKS.get(name, name)]
        value = r["evaluation"][key]
        shown = f"{100 * value:.1f} %"
        target = r["target"]
        goal = (
            f"≥ {100 * target['threshold']:.0f} %: {'met' if target['met'] else '**missed**'}"
            if target
            else "no target (figure)"
        )
        t = r["training"]
        steps = f"{t['steps_done']} steps"
        lines.append(
            f"| {name} | `{r['command']}` | {steps}, {t['train_wall_s']:.0f} s train / "
            f"{r['total_wall_s']:.0f} s total wall, {r['total_cpu_s']:.0f} s CPU | "
            f"{label}: {shown} | {goal} |"
        )
        notes.append(f"- **{name}**: {details(name, r['evaluation'])}")
        if "figure" in r["evaluation"] and name in FIGURES:
            figures.append(f"![{name}]({Path(r['evaluation']['figure']).name})")
    machine = next(iter(results.values()))["machine"] if results else {}
    extra = comparisons(results)
    return (
        "# Applications: full-budget results\n\n"
        f"Produced by `benchmarks/applications.py` on {machine.get('device', '?')} "
        f"({machine.get('cpu_count', '?')} cores, shared), python {platform.python_version()}, "
        f"jax {machine.get('jax', '?')}; training capped at {BUDGET_MINUTES} CPU minutes"
        + "".join(f", {k} {v}" for k, v in BUDGETS.items() if k in results)
        + ".\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(notes)
        + "\n\n"
        + extra
        + "\n\n".join(figures)
        + "\n"
    )


def comparisons(results: dict) -> str:
    """The variants of visual question answering and of the Tree-LSTMs, side by side."""
    pct = lambda x: f"{100 * x:.1f} %"  # noqa: E731
    out = ""
    vqa = {k: r for k, r in results.items() if k.startswith("vqa")}
    if vqa:
        kinds = list(next(iter(vqa.values()))["evaluation"]["exact_answer_by_kind"])
        out += (
            "## Visual question answering: where the image enters the LSTM\n\n"
            f"| entry | image | exact answer | {' | '.join(kinds)} | steps | train CPU s |\n"
            f"|---|---|---|{'---|' * len(kinds)}---|---|\n"
        )
        for name, r in vqa.items():
            ev, t = r["evaluation"], r["training"]
            by_kind = " | ".join(pct(ev["exact_answer_by_kind"][k]) for k in kinds)
            out += (
                f"| {name} | {image_label(ev)} | **{pct(ev['exact_answer'])}** | {by_kind} | "
                f"{t['steps_done']} | {t['train_cpu_s']:.0f} |\n"
            )
        out += "\n"
    trees = {k: r for k, r in results.items() if k.startswith("tree")}
    if trees:
        kinds = sorted(
            {k for r in trees.values() for k in r["evaluation"].get("node_accuracy_deeper", {})}
        )
        out += (
            "## Tree-LSTMs: accuracy at the root, and per node on the deeper trees\n\n"
            f"| entry | cell | ops | 3-child share | height 5 | height 6 | {' | '.join(kinds)} "
            f"| steps | train CPU s |\n|---|---|---|---|---|---|{'---|' * len(kinds)}---|---|\n"
        )
        for name, r in trees.items():
            ev, t = r["evaluation"], r["training"]
            nodes = ev.get("node_accuracy_deeper", {})
            per_node = " | ".join(pct(nodes[k]) if k in nodes else "" for k in kinds)
            out += (
                f"| {name} | {ev.get('cell', 'child-sum')} | {' '.join(ev.get('ops', ['+', '*']))} "
                f"| {ev.get('three', 0.0)} | {pct(ev['accuracy_height_5'])} | "
                f"{pct(ev['accuracy_height_6'])} | {per_node} | {t['steps_done']} | "
                f"{t['train_cpu_s']:.0f} |\n"
            )
        out += "\n"
    return out


def main(names: list[str]) -> None:
    unknown = sorted(set(names) - set(SETTINGS))
    if unknown:
        raise SystemExit(f"unknown application(s) {unknown}; choose from {list(SETTINGS)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "applications.json"
    for name in names or list(SETTINGS):
        result = run_one(name)
        # read again: entries other invocations finished meanwhile stay (runs may go in parallel)
        results = json.loads(path.read_text()) if path.exists() else {}
        results[name] = result
        results = {k: results[k] for k in SETTINGS if k in results}
        path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        (RESULTS / "applications.md").write_text(table(results))
        print(table({name: results[name]}).splitlines()[5], flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--table"]:  # rewrite applications.md from applications.json
        saved = json.loads((RESULTS / "applications.json").read_text())
        (RESULTS / "applications.md").write_text(table(saved))
    else:
        main(sys.argv[1:])
