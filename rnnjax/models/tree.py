"""The recursive-network application: value mod 10 of arithmetic expression trees.

A Tree-LSTM (`rnnjax.models.treelstm`: Child-Sum or N-ary) reads random trees over the digits,
of heights 1 to ``--train-height``, and is tested on taller trees than it ever saw
(``--test-heights``), batched over trees of different shapes::

    ("+", ("*", 3, 4), ("-", 9, 1))      value (3·4 + (9 − 1)) mod 10 = 0

Inner nodes have 2 children, or 3 with probability ``--three``; their ops are drawn from
``--ops`` (``+`` and ``*`` by default, both commutative; ``-`` is not: ``(- a b c) = a − b − c``).
Every node's value is supervised (Tai et al. put a classifier on every node); the test figure
is the accuracy at the root, and the per-node accuracy on the deeper trees is reported by op
and number of children (``node_accuracy_deeper``), which is where a model's failures show.

Commands::

    rnnjax train --task tree --steps 3000 --out runs/tree                    # Child-Sum, + *
    rnnjax train --task tree --cell n-ary --ops + - '*' --three 0.3 --out runs/tree-nary
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
from rnnjax.models.tree_data import (
    OPS,
    TOKENS,
    TreeBatch,
    batch_trees,
    evaluate_tree,
    level_widths,
    random_tree,
)
from rnnjax.models.treelstm import CELLS, TreeCell, apply

TARGET = {"metric": "accuracy_deeper", "threshold": 0.90}
TRAIN_SEED, TEST_SEED = 1, 2


def make_trees(
    seed: int, n: int, heights: list[int], p_three: float = 0.0, ops=("+", "*")
) -> list[Any]:
    """``n`` random trees, their heights drawn uniformly from ``heights``; inner nodes have
    3 children with probability ``p_three`` (else 2) and an op drawn from ``ops``."""
    rng = np.random.default_rng(seed)
    return [random_tree(rng, int(rng.choice(heights)), p_three, ops) for _ in range(n)]


def predict(
    cell: TreeCell, params, trees: list[Any], chunk: int = 500, every_node: bool = False
) -> list[np.ndarray]:
    """Predicted values of nested trees, one array per chunk of ``chunk`` trees: (n,) at the
    roots, or with ``every_node`` the `TreeBatch` of the chunk and (n, P) per slot."""
    out = []
    max_children = cell.max_children or 3
    run = jax.jit(apply, static_argnums=(0, 3, 4))
    for i in range(0, len(trees), chunk):
        batch = batch_trees(trees[i : i + chunk], max_children)
        jbatch = jax.tree.map(jnp.asarray, batch)
        log_probs = run(cell, params, jbatch, level_widths(batch), every_node)
        guess = np.asarray(jnp.argmax(log_probs, axis=-1))
        out.append((batch, guess) if every_node else guess)
    return out


def node_accuracy(cell: TreeCell, params, trees: list[Any]) -> dict[str, float]:
    """Accuracy of the value at every node, by kind: ``"leaf"`` or ``"<op>/<children>"``."""
    hits: Counter = Counter()
    counts: Counter = Counter()
    for batch, guess in predict(cell, params, trees, every_node=True):
        used = batch.values >= 0  # (n, P)
        arity = (batch.children >= 0).sum(-1)  # (n, P)
        code = batch.tokens * 8 + arity  # (n, P): token and number of children
        for k in np.unique(code[used]):
            where = used & (code == k)
            token, n_kids = TOKENS[k // 8], k % 8
            kind = f"{token}/{n_kids}" if token in OPS else "leaf"
            hits[kind] += int((guess[where] == batch.values[where]).sum())
            counts[kind] += int(where.sum())
    return {k: hits[k] / counts[k] for k in sorted(counts)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, steps=3000, batch_size=64, lr=2e-3, hidden=128)
    parser.add_argument(
        "--cell", choices=list(CELLS), default="child-sum", help="Tree-LSTM variant (child-sum)"
    )
    parser.add_argument("--n", type=int, default=3, help="child positions of the n-ary cell (3)")
    parser.add_argument("--embed", type=int, default=32, help="token vector size (32)")
    parser.add_argument("--forget-bias", type=float, default=-3.0, help="initial b_f (-3)")
    parser.add_argument(
        "--ops", nargs="+", default=["+", "*"], help=f"operators, from {' '.join(OPS)} (+ *)"
    )
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


def check_arguments(args: argparse.Namespace) -> None:
    """ValueError naming the first bad tree flag."""
    if not 0.0 <= args.three <= 1.0:
        raise ValueError(f"--three must be a probability, got {args.three}")
    if args.train_height < 1 or min(args.test_heights) <= args.train_height:
        raise ValueError(
            f"need --train-height ≥ 1 and --test-heights all deeper, got "
            f"{args.train_height} and {args.test_heights}"
        )
    unknown = sorted(set(args.ops) - set(OPS))
    if unknown or len(set(args.ops)) != len(args.ops):
        raise ValueError(f"--ops must be distinct, from {' '.join(OPS)}; got {args.ops}")
    if args.train_size < 1 or args.test_size < 1 or args.embed < 1:
        raise ValueError(
            f"need positive sizes, got {args.train_size=}, {args.test_size=}, {args.embed=}"
        )
    if args.cell == "n-ary" and args.n < (3 if args.three > 0 else 2):
        raise ValueError(
            f"--n {args.n}: the n-ary cell needs a position for every child "
            f"({'3' if args.three > 0 else '2'} with --three {args.three})"
        )


def build_cell(args: argparse.Namespace) -> TreeCell:
    """The cell the flags ask for."""
    if args.cell == "n-ary":
        return CELLS["n-ary"](args.hidden, args.n, args.embed, args.forget_bias)
    return CELLS["child-sum"](args.hidden, args.embed, args.forget_bias)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Trains and evaluates; writes OUT/metrics.jsonl and OUT/result.json."""
    check_common(args)
    check_arguments(args)
    ops = tuple(args.ops)
    cell = build_cell(args)
    max_children = cell.max_children or 3
    heights = list(range(1, args.train_height + 1))
    trees = make_trees(TRAIN_SEED, args.train_size, heights, args.three, ops)
    train = batch_trees(trees, max_children)
    widths = level_widths(train)
    params = cell.init(jax.random.key(args.seed))

    def loss(params, data: TreeBatch, step, key):
        idx = batch_indices(args.seed, step, args.train_size, args.batch_size)  # (B,)
        batch = jax.tree.map(lambda a: a[idx], data)
        log_probs = apply(cell, params, batch, widths, every_node=True)  # (B, P, 10)
        used = batch.values >= 0  # (B, P)
        loss = sequence_cross_entropy(log_probs, jnp.maximum(batch.values, 0), used)
        root = jnp.take_along_axis(log_probs, batch.root[:, None, None], axis=1)[:, 0]
        accuracy = jnp.mean((jnp.argmax(root, -1) == batch.label).astype(jnp.float32))
        return loss, {"accuracy": accuracy}

    params, training = fit(loss, params, jax.tree.map(jnp.asarray, train), args, label="tree")
    evaluation: dict[str, Any] = {
        "cell": cell.name,
        "ops": list(ops),
        "three": args.three,
        "train_heights": heights,
        "test_heights": args.test_heights,
    }
    correct_deeper, deeper_trees = [], []
    for h in [*heights, *args.test_heights]:
        n = args.test_size if h > args.train_height else min(500, args.test_size)
        test = make_trees(TEST_SEED + h, n, [h], args.three, ops)
        labels = np.asarray([evaluate_tree(t) for t in test])
        correct = np.concatenate(predict(cell, params, test)) == labels
        evaluation[f"accuracy_height_{h}"] = float(correct.mean())
        evaluation[f"majority_baseline_height_{h}"] = Counter(labels).most_common(1)[0][1] / n
        if h > args.train_height:
            correct_deeper.append(correct)
            deeper_trees += test
    evaluation["accuracy_deeper"] = float(np.concatenate(correct_deeper).mean())
    evaluation["node_accuracy_deeper"] = node_accuracy(cell, params, deeper_trees)
    return write_result(args, "tree", training, evaluation, TARGET)


__all__ = ["add_arguments", "build_cell", "make_trees", "node_accuracy", "predict", "run"]
