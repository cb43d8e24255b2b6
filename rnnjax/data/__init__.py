"""Data for training: the synthetic long-range tasks and character-level text.

- `rnnjax.data.tasks`: adding (two definitions), multiplication, temporal order (2 and 3
  bits), random permutation, noiseless memorisation and copy, generated with `jax.random`.
- `rnnjax.data.text`: the embedded corpus (Python's help text), vocabularies, the
  train/validation split and contiguous streams for truncated BPTT.
"""

from rnnjax.data.tasks import (
    ADDING_DEFINITIONS,
    SOLVED_ACCURACY,
    TASKS,
    Task,
    TaskBatch,
    make_task,
)
from rnnjax.data.text import (
    DEFAULT_CORPUS,
    TextData,
    Vocab,
    bptt_window,
    build_vocab,
    default_corpus,
    load_corpus,
    num_windows,
    prepare_text,
    split_text,
)

__all__ = [
    "ADDING_DEFINITIONS",
    "DEFAULT_CORPUS",
    "SOLVED_ACCURACY",
    "TASKS",
    "Task",
    "TaskBatch",
    "TextData",
    "Vocab",
    "bptt_window",
    "build_vocab",
    "default_corpus",
    "load_corpus",
    "make_task",
    "num_windows",
    "prepare_text",
    "split_text",
]
