"""Ctrl-C and SIGTERM during `rnnjax train`: exit statuses, crashes and checkpoints.

Starts the run of the settings below again and again, sends SIGINT or SIGTERM (alternately)
at a seeded random moment after training has started, and records how each process ended.
Writes benchmarks/results/signals.json (or the path given as the first argument).

    python benchmarks/signals.py [OUT.json]
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# ---- settings -------------------------------------------------------------------------------
TRIALS = 12
SEED = 1
MAX_DELAY_S = 6.0  # the signal comes uniformly within this long after the first log record
ARGS = [
    *("--task", "adding", "--T", "50", "--hidden", "32", "--steps", "3000"),
    *("--checkpoint-every", "50", "--quiet"),
]
RESULTS = Path(__file__).resolve().parent / "results"


CRASHES = (-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS, -signal.SIGILL)


def _records(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.strip().endswith("}")]


def _trained(out: Path) -> bool:
    return any("loss" in r for r in _records(out))


def trial(out: Path, signum: int, delay: float) -> dict:
    command = [sys.executable, "-X", "faulthandler", "-m", "rnnjax.cli", "train", *ARGS]
    proc = subprocess.Popen(
        [*command, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,  # SIGINT delivered as a terminal would (not inherited as ignored)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    while not _trained(out) and proc.poll() is None:  # the first training record is logged
        time.sleep(0.05)
    time.sleep(delay)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=600)
    folder = out / "checkpoints"
    saved = (
        sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
    )
    logged = [r.get("step", 0) for r in _records(out)]
    return {
        "signal": signal.Signals(signum).name,
        "delay_s": round(delay, 2),
        "exit_status": proc.returncode,
        "crashed": proc.returncode in CRASHES or "Fatal Python error" in stderr,
        "last_logged_step": max(logged, default=0),
        "last_checkpoint": saved[-1] if saved else None,
        "stderr_lines": len(stderr.splitlines()),
    }


def main() -> None:
    rng = random.Random(SEED)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(TRIALS):
            out = Path(tmp) / f"run{i}"
            row = trial(out, (signal.SIGINT, signal.SIGTERM)[i % 2], rng.uniform(0, MAX_DELAY_S))
            print(row, flush=True)
            rows.append(row)
            shutil.rmtree(out, ignore_errors=True)
    summary = {
        "command": "python benchmarks/signals.py",
        "rnnjax train flags": " ".join(ARGS),
        "trials": TRIALS,
        "crashes": sum(r["crashed"] for r in rows),
        "checkpoint_of_the_last_logged_step": sum(
            r["last_checkpoint"] == r["last_logged_step"] for r in rows
        ),
        "rows": rows,
    }
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS / "signals.json"
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{summary['crashes']} crashes in {TRIALS} trials; wrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
