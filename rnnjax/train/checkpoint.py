"""Run directories and checkpoints (orbax-checkpoint).

A run directory holds::

    config.json      the `RunConfig` (plain JSON)
    vocab.json       the character vocabulary of a text run (a JSON string)
    metrics.jsonl    one JSON object per log line / evaluation
    checkpoints/<step>/   orbax checkpoints of the `TrainState`, the last ``keep`` of them

Saving is atomic: orbax writes into a temporary directory and renames it when complete, so a
run killed at any moment leaves only whole checkpoints behind. Restoring reads arrays and
JSON metadata only (no pickle), into the structure of a freshly initialised state, so a
checkpoint can never execute code, and one of another model fails with a ValueError.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jax

from rnnjax.data.text import Vocab
from rnnjax.train.config import RunConfig

CONFIG, VOCAB, METRICS, CHECKPOINTS = "config.json", "vocab.json", "metrics.jsonl", "checkpoints"

# orbax logs every save and restore at INFO; a training run prints its own progress
logging.getLogger("absl").setLevel(logging.WARNING)


class Checkpointer:
    """Keep-last-N, atomic, synchronous checkpoints of a pytree in ``directory``."""

    def __init__(self, directory: str | Path, keep: int = 3):
        import orbax.checkpoint as ocp  # imported here: it is slow to import

        self._ocp = ocp
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False
        )
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any) -> None:
        """Writes ``state`` as checkpoint ``step`` and drops the oldest beyond ``keep``."""
        self._manager.save(step, args=self._ocp.args.StandardSave(state))
        self._manager.wait_until_finished()

    def restore(self, like: Any, step: int | None = None) -> Any:
        """Restores checkpoint ``step`` (default: the latest) into the structure of ``like``.

        Args:
            like: a pytree with the expected structure, shapes, dtypes and shardings.
            step: which checkpoint.

        Raises:
            ValueError: no checkpoint, or one that is corrupted or belongs to another model.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise ValueError(f"no checkpoint in {self.directory}")
        target = jax.tree.map(self._ocp.utils.to_shape_dtype_struct, like)
        try:
            restored = self._manager.restore(step, args=self._ocp.args.StandardRestore(target))
        except Exception as err:  # orbax / tensorstore raise many types for bad files
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(
                f"checkpoint {self.directory / str(step)} is corrupted or does not match this "
                f"model: {first[:200]}"
            ) from None
        for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target), strict=True):
            if got.shape != want.shape or got.dtype != want.dtype:
                raise ValueError(
                    f"checkpoint {self.directory / str(step)} does not match this model: an "
                    f"array has shape {got.shape} {got.dtype}, expected {want.shape} {want.dtype}"
                )
        return restored

    def close(self) -> None:
        self._manager.close()


class RunDir:
    """The files of one run directory (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    def exists(self) -> bool:
        return (self.path / CONFIG).is_file()

    def check_new(self) -> None:
        """ValueError if starting a new run here would overwrite another run."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"--out {self.path} exists and is not a directory")
        if self.path.is_dir() and any(self.path.iterdir()):
            raise ValueError(
                f"run directory {self.path} already exists and is not empty; pass --resume to "
                f"continue that run or choose another --out"
            )

    def check_existing(self) -> None:
        """ValueError unless this is the directory of a run (for --resume, sample, grads)."""
        if not self.path.is_dir():
            raise ValueError(f"run directory {self.path} does not exist")
        if not self.exists():
            raise ValueError(f"{self.path} is not a run directory (no {CONFIG} in it)")

    def write_config(self, config: RunConfig, vocab: Vocab | None) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / CONFIG).write_text(config.to_json() + "\n")
        if vocab is not None:
            (self.path / VOCAB).write_text(json.dumps(vocab.chars) + "\n")

    def read_config(self) -> RunConfig:
        self.check_existing()
        return RunConfig.from_json((self.path / CONFIG).read_text())

    def read_vocab(self) -> Vocab:
        try:
            chars = json.loads((self.path / VOCAB).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read the vocabulary of run {self.path}: {err}") from None
        if not isinstance(chars, str) or not chars:
            raise ValueError(f"{self.path / VOCAB} does not hold a vocabulary string")
        return Vocab(chars)

    def checkpointer(self, keep: int) -> Checkpointer:
        return Checkpointer(self.path / CHECKPOINTS, keep)


__all__ = ["CHECKPOINTS", "CONFIG", "METRICS", "VOCAB", "Checkpointer", "RunDir"]
