"""The recursive-network application: value mod 10 of arithmetic expression trees.

A Child-Sum Tree-LSTM (`rnnjax.models.treelstm`) reads random trees of ``+`` and ``*`` over
digits, of heights 1 to ``--train-height``, and is tested on taller trees than it ever saw
(``--test-heights``), batched over trees of different shapes::

    ("+", ("*", 3, 4), ("+", 9, 1))      value (3·4 + 9 + 1) mod 10 = 2

Every node's value is supervised (Tai et al. put a classifier on every node); the test
figure is the accuracy at the root. Inner nodes have 2 children unless ``--three`` > 0: with a
quarter of 3-child nodes the same budget reached only about 52 % on the deeper trees (a sum of
three children's states is much harder to decode than a sum of two).

Command::

    rnnjax train --task tree --steps 3000 --out runs/tree
"""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.losses import sequence_cross_entropy
from rnnjax.models.training import (
    add_common_arguments,
    batch_indices,
    check_common,
    fit,
    write_result,
)
from rnnjax.models.treelstm import (
    TreeBatch,
    apply,
    batch_trees,
    evaluate_tree,
    init_params,
    level_widths,
    random_tree,
)

TARGET = {"metric": "accuracy_deeper", "threshold": 0.90}
TRAIN_SEED, TEST_SEED = 1, 2


def make_trees(seed: int, n: int, heights: list[int], p_three: float = 0.0) -> list[Any]:
    """``n`` random trees, their heights drawn uniformly from ``heights``; inner nodes have
    3 children with probability ``p_three`` (else 2)."""
    rng = np.random.default_rng(seed)
    return [random_tree(rng, int(rng.choice(heights)), p_three) for _ in range(n)]


def predict(params, trees: list[Any], chunk: int = 500) -> np.ndarray:
    """Predicted values (n,) of nested trees (ValueError for a malformed tree)."""
    out = []
    for i in range(0, len(trees), chunk):
        batch = batch_trees(trees[i : i + chunk])
        log_probs = jax.jit(apply, static_argnums=2)(
            params, jax.tree.map(jnp.asarray, batch), level_widths(batch)
        )
        out.append(np.asarray(jnp.argmax(log_probs, axis=-1)))
    return np.concatenate(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, steps=3000, batch_size=64, lr=2e-3, hidden=128)
    parser.add_argument("--embed", type=int, default=32, help="token vector size (32)")
    parser.add_argument("--forget-bias", type=float, default=-3.0, help="initial b_f (-3)")
    parser.add_argument(
        "--three", type=float, default=0.0, help="share of inner nodes with 3 children (0)"
    )
    parser.add_argument("--train-height", type=int, default=4, help="train on heights 1..H (4)")
    parser.add_argument(
        "--test-heights",
        type=int,
        nargs="+",
        default=[5, 6],
        help="held-out heights, all deeper than training (5 6)",
    )
    parser.add_argument("--train-size", type=int, default=50_000, help="training trees")
    parser.add_argument(
        "--test-size",
        type=int,
        default=2000,
        help="test trees per deeper height (2000; 500 per seen height)",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Trains and evaluates; writes OUT/metrics.jsonl and OUT/result.json."""
    check_common(args)
    if not 0.0 <= args.three <= 1.0:
        raise ValueError(f"--three must be a probability, got {args.three}")
    if args.train_height < 1 or min(args.test_heights) <= args.train_height:
        raise ValueError(
            f"need --train-height ≥ 1 and --test-heights all deeper, got "
            f"{args.train_height} and {args.test_heights}"
        )
    heights = list(range(1, args.train_height + 1))
    train = batch_trees(make_trees(TRAIN_SEED, args.train_size, heights, args.three))
    widths = level_widths(train)
    params = init_params(jax.random.key(args.seed), args.hidden, args.embed, args.forget_bias)

    def loss(params, data: TreeBatch, step, key):
        idx = batch_indices(args.seed, step, args.train_size, args.batch_size)  # (B,)
        batch = jax.tree.map(lambda a: a[idx], data)
        log_probs = apply(params, batch, widths, every_node=True)  # (B, P, 10)
        used = batch.values >= 0  # (B, P)
        loss = sequence_cross_entropy(log_probs, jnp.maximum(batch.values, 0), used)
        root = jnp.take_along_axis(log_probs, batch.root[:, None, None], axis=1)[:, 0]
        accuracy = jnp.mean((jnp.argmax(root, -1) == batch.label).astype(jnp.float32))
        return loss, {"accuracy": accuracy}

    params, training = fit(loss, params, jax.tree.map(jnp.asarray, train), args, label="tree")
    evaluation: dict[str, Any] = {"train_heights": heights, "test_heights": args.test_heights}
    correct_deeper = []
    for h in [*heights, *args.test_heights]:
        n = args.test_size if h > args.train_height else min(500, args.test_size)
        trees = make_trees(TEST_SEED + h, n, [h], args.three)
        labels = np.asarray([evaluate_tree(t) for t in trees])
        correct = predict(params, trees) == labels
        evaluation[f"accuracy_height_{h}"] = float(correct.mean())
        evaluation[f"majority_baseline_height_{h}"] = Counter(labels).most_common(1)[0][1] / len(
            labels
        )
        if h > args.train_height:
            correct_deeper.append(correct)
    evaluation["accuracy_deeper"] = float(np.concatenate(correct_deeper).mean())
    return write_result(args, "tree", training, evaluation, TARGET)


__all__ = ["add_arguments", "make_trees", "predict", "run"]
