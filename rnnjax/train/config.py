"""`RunConfig`: every hyper-parameter of a training run, with defaults, checks and JSON I/O.

A run trains either on a synthetic task (``task="adding"``) or on text (``corpus="default"``
or a path). Fields left at None get a default that suits the kind of run (`resolved`); a
field that does not apply to the run (``T`` of a text run, ``window`` of a task run,
``momentum`` with adam, ...) must stay None: setting it is an error, never silently ignored.
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
# fields of one kind of run only: name -> (kind, default)
_KIND_ONLY: dict[str, tuple[str, Any]] = {
    "T": ("task", 100),
    "definition": ("task", None),
    "eval_size": ("task", 1000),
    "window": ("text", 64),
    "val_fraction": ("text", 0.1),
    "embed": ("text", 32),
    "dropout": ("text", 0.0),
}
MOMENTUM_OPTIMIZERS = ("sgd", "rmsprop")
# what config.json files written before the rule above held for fields that did not apply
_LEGACY_DEFAULTS = {
    "T": 100,
    "window": 64,
    "val_fraction": 0.1,
    "embed": 32,
    "dropout": 0.0,
    "eval_size": 1000,
    "momentum": 0.0,
    "omega_decay": 1.0,
}


@dataclass
class RunConfig:
    """Hyper-parameters of a run (see ``rnnjax train --help`` for each one)."""

    task: str | None = None
    T: Any = None  # int, tasks only (default 100)
    definition: str | None = None  # adding task only
    corpus: str | None = None
    cell: str = "lstm"
    hidden: Any = None  # int; None: the default of the run's kind
    layers: int = 1
    init: str | None = None
    forget_bias: float | None = None
    embed: Any = None  # int, text only (default 32)
    dropout: Any = None  # float, text only (default 0)
    input_dropout: float = 0.0  # recurrent regularisation (rnnjax.regularised)
    recurrent_dropout: float = 0.0
    zoneout: float = 0.0
    weight_drop: float = 0.0
    backend: str = "auto"
    optimizer: str = "adam"
    lr: Any = None  # float; None: the default of the run's kind
    momentum: Any = None  # float, sgd / rmsprop only (default 0)
    lr_decay: float = 1.0
    clip: float | None = 1.0
    omega: float = 0.0
    omega_decay: Any = None  # float, only with omega > 0 (default 1)
    batch_size: Any = None  # int; None: the default of the run's kind
    window: Any = None  # int, text only (default 64)
    val_fraction: Any = None  # float, text only (default 0.1)
    steps: Any = None  # int; None: the default of the run's kind
    seed: int = 0
    eval_every: Any = None  # int; None: the default of the run's kind
    eval_size: Any = None  # int, tasks only (default 1000)
    log_every: int = 10
    checkpoint_every: int = 100
    keep: int = 3
    max_bad_steps: int = 10
    corpus_sha256: str | None = None  # written by `train`: the content of the corpus

    @property
    def kind(self) -> str:
        return "task" if self.task is not None else "text"

    def applies(self, name: str) -> bool:
        """Whether field ``name`` means something for this run (see the module docstring)."""
        if name == "definition":
            return self.task == "adding"
        if name in _KIND_ONLY:
            return _KIND_ONLY[name][0] == self.kind
        if name == "momentum":
            return self.optimizer in MOMENTUM_OPTIMIZERS
        if name == "omega_decay":
            return self.omega != 0
        return True

    def resolved(self) -> RunConfig:
        """A copy with the defaults of the run's kind filled in, checked (ValueError if bad)."""
        if (self.task is None) == (self.corpus is None):
            raise ValueError("give exactly one of a task (--task NAME) or a corpus (--corpus PATH)")
        column = 0 if self.kind == "task" else 1
        filled = {k: v[column] for k, v in _KIND_DEFAULTS.items() if getattr(self, k) is None}
        defaults = {name: default for name, (_, default) in _KIND_ONLY.items()}
        defaults.update(momentum=0.0, omega_decay=1.0)
        for name, default in defaults.items():
            if getattr(self, name) is None and self.applies(name):
                filled[name] = default
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
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
            )
        for name in (*_KIND_ONLY, "momentum", "omega_decay"):
            value = getattr(self, name)
            if value is not None and not self.applies(name):
                raise ValueError(f"{name}={value!r} {self._why_not(name)}")
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; choose one of {', '.join(CELLS)}")
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
            if value is None and not self.applies(name):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
        if self.task is not None and self.T < 10:
            raise ValueError(f"T must be at least 10 for the long-range tasks, got T={self.T}")
        rates = ("dropout", "input_dropout", "recurrent_dropout", "zoneout", "weight_drop")
        for name, low, high in (
            *((r, 0.0, 1.0) for r in rates),
            ("val_fraction", 0.0, 1.0),
            ("momentum", 0.0, 1.0),
        ):
            value = getattr(self, name)
            if value is not None and not low <= value < high:
                raise ValueError(f"{name} must be in [{low}, {high}), got {name}={value}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got lr={self.lr}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got lr_decay={self.lr_decay}")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip must be > 0 (or omitted), got clip={self.clip}")
        if self.omega < 0 or not 0 < (self.omega_decay or 1.0) <= 1:
            raise ValueError(
                f"need omega >= 0 and 0 < omega_decay <= 1, got omega={self.omega}, "
                f"omega_decay={self.omega_decay}"
            )

    def _why_not(self, name: str) -> str:
        """Why field ``name`` does not apply to this run (the end of an error message)."""
        if name == "definition":
            return f"applies to the adding task only, not to {self.task or 'a text run'}"
        if name in _KIND_ONLY:
            kind = _KIND_ONLY[name][0]
            this = f"task {self.task}" if self.kind == "task" else f"corpus {self.corpus}"
            return f"applies to {kind} runs only; this run trains on the {this}"
        if name == "momentum":
            return (
                f"applies to the optimizers {' and '.join(MOMENTUM_OPTIMIZERS)} only, not to "
                f"{self.optimizer}"
            )
        return "applies only with Pascanu's regulariser (omega > 0)"

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
            config = cls(**raw)
            legacy: dict[str, Any] = {  # older versions stored defaults that did not apply
                name: None
                for name, value in _LEGACY_DEFAULTS.items()
                if raw.get(name) == value and not config.applies(name)
            }
            return dataclasses.replace(config, **legacy).resolved()
        except TypeError as err:
            raise ValueError(f"config.json has a value of the wrong type: {err}") from None


__all__ = ["RunConfig"]
