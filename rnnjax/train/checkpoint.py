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

Every filesystem failure (an ``--out`` under a file, a directory that cannot be written, a
file that cannot be read) is a ValueError with one line that names the path.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rnnjax.data.text import Vocab
from rnnjax.train.config import RunConfig

CONFIG, VOCAB, METRICS, CHECKPOINTS = "config.json", "vocab.json", "metrics.jsonl", "checkpoints"

# orbax logs every save and restore at INFO; a training run prints its own progress
logging.getLogger("absl").setLevel(logging.WARNING)


class Checkpointer:
    """Keep-last-N, atomic, synchronous checkpoints of a pytree in ``directory``.

    Use it as a context manager (or call `close`): orbax keeps worker threads that must be
    shut down before the interpreter exits.

    Args:
        directory: where the numbered checkpoint folders live.
        keep: how many to keep.
        create: create ``directory`` if missing (False: reading only; a missing directory
            then simply holds no checkpoint).
    """

    def __init__(self, directory: str | Path, keep: int = 3, *, create: bool = True):
        import orbax.checkpoint as ocp  # imported here: it is slow to import

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        self._manager = None
        if not create and not self.directory.is_dir():
            return
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=create, enable_async_checkpointing=False
        )
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        except OSError as err:
            msg = f"cannot open checkpoints in {self.directory}: {_reason(err)}"
            raise ValueError(msg) from None

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def latest_step(self) -> int | None:
        return None if self._manager is None else self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return [] if self._manager is None else list(self._manager.all_steps())

    def save(self, step: int, state: Any) -> None:
        """Writes ``state`` as checkpoint ``step`` and drops the oldest beyond ``keep``."""
        if self._manager is None:
            raise ValueError(f"checkpoints in {self.directory} were opened for reading only")
        try:
            self._manager.save(step, args=self._ocp.args.StandardSave(state))
            self._manager.wait_until_finished()
        except OSError as err:
            msg = f"cannot write checkpoint {step} in {self.directory}: {_reason(err)}"
            raise ValueError(msg) from None

    def restore(self, like: Any, step: int | None = None) -> Any:
        """Restores checkpoint ``step`` (default: the latest) into the structure of ``like``.

        Args:
            like: a pytree with the expected structure, shapes, dtypes and shardings.
            step: which checkpoint.

        Raises:
            ValueError: no checkpoint, or one that is corrupted or belongs to another model.
        """
        step = self.latest_step() if step is None else step
        if step is None or self._manager is None:
            raise ValueError(f"no checkpoint in {self.directory}")
        where = self.directory / str(step)
        target = jax.tree.map(self._ocp.utils.to_shape_dtype_struct, like)
        _quiet_abandoned_reads()  # installed first: they are reported while orbax fails
        self._check_metadata(step, target)  # a mismatch found before any array is read
        failure = None
        try:
            restored = self._manager.restore(step, args=self._ocp.args.StandardRestore(target))
        except Exception as err:  # orbax / tensorstore raise many types for bad files
            text = str(err).strip()
            failure = text.splitlines()[0][:200] if text else type(err).__name__
        if failure is not None:  # raised outside the except block: no orbax frames kept alive
            self._discard_failed_reads()
            raise ValueError(
                f"checkpoint {where} is corrupted or does not match this model: {failure}"
            )
        for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target), strict=True):
            if got.shape != want.shape or got.dtype != want.dtype:
                raise ValueError(
                    f"checkpoint {where} does not match this model: an array has shape "
                    f"{got.shape} {got.dtype}, expected {want.shape} {want.dtype}"
                )
        return restored

    def _check_metadata(self, step: int, target: Any) -> None:
        """ValueError if the stored arrays' names, shapes or dtypes differ from ``target``'s.

        Reads only the checkpoint's metadata; an unreadable one is left to `restore`.
        """
        try:
            handler = self._ocp.StandardCheckpointHandler()
            tree = handler.metadata(self.directory / str(step) / "default")
            stored = {
                _name(path): (tuple(m.shape), np.dtype(m.dtype))
                for path, m in jax.tree_util.tree_flatten_with_path(tree)[0]
            }
        except Exception:  # no or unreadable metadata: restoring will say what is wrong
            return
        wanted = {
            _name(path): (tuple(a.shape), np.dtype(a.dtype))
            for path, a in jax.tree_util.tree_flatten_with_path(target)[0]
        }
        where = self.directory / str(step)
        params_first = sorted(set(wanted) | set(stored), key=lambda n: (n[:7] != "params.", n))
        for name in params_first:
            if name not in stored:
                raise ValueError(f"checkpoint {where} does not match this model: it has no {name}")
            if name not in wanted:
                raise ValueError(
                    f"checkpoint {where} does not match this model: it has {name}, which the "
                    f"model does not"
                )
            if stored[name] != wanted[name]:
                (s_shape, s_dtype), (w_shape, w_dtype) = stored[name], wanted[name]
                raise ValueError(
                    f"checkpoint {where} does not match this model: {name} is {s_shape} "
                    f"{s_dtype} in the checkpoint, {w_shape} {w_dtype} in the model"
                )

    def _discard_failed_reads(self) -> None:
        """Closes orbax and silences the reads a failed restore left behind.

        When one array cannot be read, orbax abandons the reads still in flight; as they
        complete (in tensorstore's threads, after orbax's event loop has closed) or are
        garbage-collected they would report "Event loop is closed" and their own errors, dozens
        of lines after the one-line error. `_quiet_abandoned_reads` drops exactly those.
        """
        self.close()
        with warnings.catch_warnings():  # "coroutine ... was never awaited" from those reads
            warnings.simplefilter("ignore", RuntimeWarning)
            gc.collect()

    def close(self) -> None:
        """Stops orbax's worker threads (idempotent)."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None


_previous_hook: Any = None


def _is_abandoned_read(unraisable: Any) -> bool:
    """Whether an unraisable error is the leftover of a failed orbax restore."""
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return True
    code = getattr(unraisable.object, "cr_code", None)  # an abandoned orbax coroutine
    return code is not None and "orbax" in code.co_filename


def _not_orbax_task(record: logging.LogRecord) -> bool:
    """A logging filter: False for asyncio's report of an abandoned orbax task."""
    message = record.getMessage()
    return not ("exception was never retrieved" in message and "orbax" in message)


def _quiet_abandoned_reads() -> None:
    """Installs (once) filters that drop the leftovers of failed orbax reads, and only them.

    They reach `sys.unraisablehook` (abandoned coroutines, "Event loop is closed" from
    tensorstore's callbacks) and the ``asyncio`` logger ("Task exception was never
    retrieved"); every other report goes through unchanged.
    """
    global _previous_hook
    if _previous_hook is not None:
        return
    _previous_hook = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not _is_abandoned_read(unraisable):
            _previous_hook(unraisable)

    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_not_orbax_task)


def _name(path: tuple) -> str:
    """A pytree path as a dotted name ("params.rnn.0.W"), the form orbax stores."""
    parts = []
    for key in path:
        for attr in ("name", "key", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return ".".join(parts)


def _reason(err: OSError) -> str:
    """The short reason of an OSError ("Permission denied"), without the repeated path."""
    return err.strerror or str(err) or type(err).__name__


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (``.`` for a relative path)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


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
        """ValueError if a new run cannot be written here or would overwrite another run.

        Checks, without writing anything, that the directory is new or empty and that it can
        be created: no ancestor is a file and the nearest existing one is writable.
        """
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"--out {self.path} exists and is not a directory")
        if self.path.is_dir():
            if any(self.path.iterdir()):
                raise ValueError(
                    f"run directory {self.path} already exists and is not empty; pass --resume "
                    f"to continue that run or choose another --out"
                )
            base = self.path
        else:
            base = _first_existing(self.path)
            if not base.is_dir():
                raise ValueError(f"cannot create run directory {self.path}: {base} is a file")
        if not os.access(base, os.W_OK | os.X_OK):
            raise ValueError(f"cannot create run directory {self.path}: {base} is not writable")

    def check_existing(self) -> None:
        """ValueError unless this is the directory of a run (for --resume, sample, grads)."""
        if not self.path.is_dir():
            raise ValueError(f"run directory {self.path} does not exist")
        if not self.exists():
            raise ValueError(f"{self.path} is not a run directory (no {CONFIG} in it)")

    def write_config(self, config: RunConfig, vocab: Vocab | None) -> None:
        """Creates the directory (if new) and writes config.json (and vocab.json).

        A failure removes the directories it created, so a failed start leaves nothing.
        """
        made = [p for p in (self.path, *self.path.parents) if not p.exists()]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path / CONFIG, config.to_json() + "\n")
            if vocab is not None:
                write_atomic(self.path / VOCAB, json.dumps(vocab.chars) + "\n")
        except OSError as err:
            for folder in made:  # the deepest first; only the empty ones we made
                try:
                    folder.rmdir()
                except OSError:
                    break
            raise ValueError(f"cannot write run directory {self.path}: {_reason(err)}") from None

    def read_config(self) -> RunConfig:
        self.check_existing()
        try:
            text = (self.path / CONFIG).read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"cannot read {self.path / CONFIG}: {err}") from None
        return RunConfig.from_json(text)

    def read_vocab(self) -> Vocab:
        try:
            chars = json.loads((self.path / VOCAB).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read the vocabulary of run {self.path}: {err}") from None
        if not isinstance(chars, str) or not chars:
            raise ValueError(f"{self.path / VOCAB} does not hold a vocabulary string")
        return Vocab(chars)

    def checkpointer(self, keep: int, *, create: bool = True) -> Checkpointer:
        return Checkpointer(self.path / CHECKPOINTS, keep, create=create)


def write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename (never half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["CHECKPOINTS", "CONFIG", "METRICS", "VOCAB", "Checkpointer", "RunDir", "write_atomic"]
