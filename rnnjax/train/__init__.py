"""Training: models, the jitted train step, the loop, checkpoints, evaluation and sampling.

::

    from rnnjax.train import RunConfig, train
    summary = train(RunConfig(task="adding", T=100, cell="lstm", steps=2000), "runs/adding")

or from the shell: ``rnnjax train --task adding --T 100 --cell lstm --out runs/adding``.
"""

from rnnjax.train.checkpoint import Checkpointer, RunDir
from rnnjax.train.config import RunConfig
from rnnjax.train.evaluate import task_evaluator, text_evaluator
from rnnjax.train.interrupt import StopRequest, graceful_stop
from rnnjax.train.loop import (
    LoopSettings,
    RunInterruptedError,
    Setup,
    TrainingHaltedError,
    TrainingInterruptedError,
    corpus_digest,
    count_params,
    restore_run,
    run_loop,
    setup,
    train,
)
from rnnjax.train.metrics import MetricsLog, Progress, read_metrics, reduce_steps
from rnnjax.train.model import (
    CELLS,
    Model,
    ModelParams,
    build_cells,
    char_model,
    task_model,
    task_outputs,
)
from rnnjax.train.parallel import initialize_distributed, make_mesh
from rnnjax.train.sampling import sample
from rnnjax.train.step import (
    OPTIMIZERS,
    Objective,
    TrainState,
    init_state,
    make_optimizer,
    make_train_step,
    task_objective,
    text_objective,
)

__all__ = [
    "CELLS",
    "OPTIMIZERS",
    "Checkpointer",
    "LoopSettings",
    "MetricsLog",
    "Model",
    "ModelParams",
    "Objective",
    "Progress",
    "RunConfig",
    "RunDir",
    "RunInterruptedError",
    "Setup",
    "StopRequest",
    "TrainState",
    "TrainingHaltedError",
    "TrainingInterruptedError",
    "build_cells",
    "char_model",
    "corpus_digest",
    "count_params",
    "graceful_stop",
    "init_state",
    "initialize_distributed",
    "make_mesh",
    "make_optimizer",
    "make_train_step",
    "read_metrics",
    "reduce_steps",
    "restore_run",
    "run_loop",
    "sample",
    "setup",
    "task_evaluator",
    "task_model",
    "task_objective",
    "task_outputs",
    "text_evaluator",
    "text_objective",
    "train",
]
