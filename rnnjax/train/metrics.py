"""Metrics of a run: aggregation of step metrics, the JSONL log and the progress display.

Every ``log_every`` steps the per-step metrics (kept on the device until then, so the host
does not wait for every step) are fetched once and reduced to one log record::

    {"step": 200, "loss": 1.93, "bpc": 2.78, "grad_norm": 0.61, "grad_norm_max": 1.4,
     "clip_rate": 0.1, "skipped": 0, "steps_per_s": 41.2, "time": 12.3}

Evaluations add records with ``"split": "val"`` (text: loss, bpc) or ``"split": "test"``
(tasks: loss, accuracy = the share of fresh test sequences meeting the task's criterion).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import jax
import numpy as np


def reduce_steps(step_metrics: list[dict[str, Any]]) -> dict[str, float]:
    """Reduces a list of per-step metric dicts (device arrays) to one record of means.

    Means are over the finite (not skipped) steps; ``clip_rate`` is the share of steps where
    clipping fired, ``skipped`` the number of non-finite steps.
    """
    host = jax.device_get(step_metrics)
    stacked = {k: np.asarray([m[k] for m in host], np.float64) for k in host[0]}
    finite = stacked["finite"] > 0
    record: dict[str, float] = {}
    for name, values in stacked.items():
        if name in ("finite", "clipped"):
            continue
        kept = values[finite]
        record[name] = float(kept.mean()) if kept.size else math.nan
    kept_norms = stacked["grad_norm"][finite]
    record["grad_norm_max"] = float(kept_norms.max()) if kept_norms.size else math.nan
    record["clip_rate"] = float(stacked["clipped"][finite].mean()) if finite.any() else math.nan
    record["skipped"] = int((~finite).sum())
    return record


class MetricsLog:
    """Appends JSON records, one per line, to ``path`` (only on process 0 of a multi-host run).

    A resumed run first calls `truncate` with the step of the checkpoint it resumes from, so
    the steps it replays are not logged twice.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.enabled = jax.process_index() == 0

    def truncate(self, step: int) -> int:
        """Drops the records after ``step`` (and a torn last line); returns how many went.

        The file is rewritten through a temporary file and a rename, so a crash leaves either
        the old or the new log.
        """
        if not self.enabled or not self.path.exists():
            return 0
        lines = self.path.read_text().splitlines()
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict) or int(record.get("step", 0)) <= step:
                kept.append(line)
        if len(kept) < len(lines):
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
        return len(lines) - len(kept)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()
        }
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (a torn last line, from a killed run, is skipped)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class Progress:
    """Training progress: a `rich.progress` bar on a terminal, periodic plain lines otherwise.

    On a terminal the bar shows the step (or, with a time budget, the time spent), the last
    loss / bpc / accuracy and clipping rate, steps/s and the time left; when ``stream`` is not
    a terminal (a log file, a captured test) about ten plain lines per run carry the same
    figures, so logs stay readable.

    Args:
        total: the last step of the run.
        label: shown before the bar (e.g. "lstm").
        stream: where to write (default stderr); None silences it.
        start: the step the run starts from (a resumed run).
        time_limit: the run's time budget in seconds, if any (the bar then shows time).
        clock: the clock of the budget (read once here, once per update).
    """

    def __init__(
        self,
        total: int,
        label: str = "",
        stream: TextIO | None = sys.stderr,
        start: int = 0,
        time_limit: float | None = None,
        clock=time.perf_counter,
    ):
        self.total, self.label, self.stream, self.start = total, label, stream, start
        self.time_limit, self.clock = time_limit, clock
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.t0 = clock()
        self._last_line = -1
        self._bar: Any = None
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[where]} | {task.fields[shown]} | {task.fields[rate]}"),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=Console(file=stream),
            )
            width = time_limit if time_limit is not None else total
            self._task = self._bar.add_task(label, total=width, where="", shown="", rate="")
            self._bar.start()

    def update(self, step: int, record: dict[str, Any]) -> None:
        if self.stream is None:
            return
        elapsed = self.clock() - self.t0
        frac = min(1.0, step / max(self.total, 1))
        if self.time_limit is not None:
            frac = max(frac, min(1.0, elapsed / self.time_limit))
        shown = [f"{k} {record[k]:.3g}" for k in ("loss", "bpc", "accuracy") if k in record]
        shown += [f"clip {record['clip_rate']:.0%}"] if "clip_rate" in record else []
        rate = f"{(step - self.start) / elapsed:.1f} steps/s" if elapsed > 0 else "- steps/s"
        where = f"{step}/{self.total}"
        if self.time_limit is not None:
            where = f"step {step}, {elapsed:.0f}/{self.time_limit:.0f} s"
        if self._bar is not None:
            done = elapsed if self.time_limit is not None else step
            fields = dict(where=where, shown=" ".join(shown), rate=rate)
            self._bar.update(self._task, completed=done, **fields)
            return
        if int(10 * frac) > self._last_line:  # about ten lines per run
            self._last_line = int(10 * frac)
            eta = elapsed * (1 - frac) / frac if frac > 0 else 0.0
            text = f"{self.label} {where} | {' '.join(shown)} | {rate} | eta {eta:.0f}s"
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


__all__ = ["MetricsLog", "Progress", "read_metrics", "reduce_steps"]
