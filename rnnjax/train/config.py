"""`RunConfig`: every hyper-parameter of a training run, with defaults, checks and JSON I/O.

A run trains either on a synthetic task (``task="adding"``) or on text (``corpus="default"``
or a path). Fields left at None get a default that suits the kind of run (`resolved`).
The config is stored as ``config.json`` in the run directory: plain JSON, read back with
`json.loads` into known fields only, so loading a run never executes code.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from rnnjax.data.tasks import ADDING_DEFINITIONS, TASKS
from rnnjax.kernels import BACKENDS
from rnnjax.train.model import CELLS
from rnnjax.train.step import OPTIMIZERS

# defaults that depend on the kind of run: (task, text)
_KIND_DEFAULTS: dict[str, tuple[Any, Any]] = {
    "hidden": (64, 128),
    "batch_size": (32, 32),
    "lr": (1e-3, 2e-3),
    "steps": (2000, 2000),
    "eval_every": (250, 250),
}


@dataclass
class RunConfig:
    """Hyper-parameters of a run (see ``rnnjax train --help`` for each one)."""

    task: str | None = None
    T: int = 100
    definition: str | None = None
    corpus: str | None = None
    cell: str = "lstm"
    hidden: Any = None  # int; None: the default of the run's kind
    layers: int = 1
    init: str | None = None
    forget_bias: float | None = None
    embed: int = 32
    dropout: float = 0.0
    input_dropout: float = 0.0  # recurrent regularisation (rnnjax.regularised)
    recurrent_dropout: float = 0.0
    zoneout: float = 0.0
    weight_drop: float = 0.0
    backend: str = "scan"
    optimizer: str = "adam"
    lr: Any = None  # float; None: the default of the run's kind
    momentum: float = 0.0
    lr_decay: float = 1.0
    clip: float | None = 1.0
    omega: float = 0.0
    omega_decay: float = 1.0
    batch_size: Any = None  # int; None: the default of the run's kind
    window: int = 64
    val_fraction: float = 0.1
    steps: Any = None  # int; None: the default of the run's kind
    seed: int = 0
    eval_every: Any = None  # int; None: the default of the run's kind
    eval_size: int = 1000
    log_every: int = 10
    checkpoint_every: int = 100
    keep: int = 3
    max_bad_steps: int = 10

    @property
    def kind(self) -> str:
        return "task" if self.task is not None else "text"

    def resolved(self) -> RunConfig:
        """A copy with the kind-dependent defaults filled in, checked (ValueError if bad)."""
        if (self.task is None) == (self.corpus is None):
            raise ValueError("give exactly one of a task (--task NAME) or a corpus (--corpus PATH)")
        column = 0 if self.kind == "task" else 1
        filled = {k: v[column] for k, v in _KIND_DEFAULTS.items() if getattr(self, k) is None}
        config = dataclasses.replace(self, **filled)
        config.check()
        return config

    def check(self) -> None:
        """Raises ValueError naming the first bad value."""
        if self.task is not None and self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.definition is not None and self.definition not in ADDING_DEFINITIONS:
            raise ValueError(
                f"unknown adding definition {self.definition!r}; choose one of "
                f"{', '.join(ADDING_DEFINITIONS)}"
            )
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; choose one of {', '.join(CELLS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
            )
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose one of {tuple(BACKENDS)}")
        positive = (
            "T",
            "hidden",
            "layers",
            "embed",
            "batch_size",
            "window",
            "steps",
            "eval_every",
            "eval_size",
            "log_every",
            "checkpoint_every",
            "keep",
            "max_bad_steps",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
        if self.task is not None and self.T < 10:
            raise ValueError(f"T must be at least 10 for the long-range tasks, got T={self.T}")
        rates = ("dropout", "input_dropout", "recurrent_dropout", "zoneout", "weight_drop")
        for name, low, high in (*((r, 0.0, 1.0) for r in rates), ("val_fraction", 0.0, 1.0)):
            value = getattr(self, name)
            if not low <= value < high:
                raise ValueError(f"{name} must be in [{low}, {high}), got {name}={value}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got lr={self.lr}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got lr_decay={self.lr_decay}")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip must be > 0 (or omitted), got clip={self.clip}")
        if self.omega < 0 or not 0 < self.omega_decay <= 1:
            raise ValueError(
                f"need omega >= 0 and 0 < omega_decay <= 1, got omega={self.omega}, "
                f"omega_decay={self.omega_decay}"
            )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        """Parses ``config.json``; unknown keys or wrong types raise ValueError."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            msg = f"config.json is not valid JSON ({err.msg} at line {err.lineno})"
            raise ValueError(msg) from None
        if not isinstance(raw, dict):
            raise ValueError("config.json must hold a JSON object")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - fields)
        if unknown:
            raise ValueError(f"config.json has unknown keys {unknown}: written by another version?")
        try:
            return cls(**raw).resolved()
        except TypeError as err:
            raise ValueError(f"config.json has a value of the wrong type: {err}") from None


__all__ = ["RunConfig"]
