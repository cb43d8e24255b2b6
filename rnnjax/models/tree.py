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
The training set holds ``--train-size`` fresh trees, as many of each height, built straight
into node tables (`tree_data.random_batch`). Each height's trees are split by size into
``--layouts`` parts, each laid out for its own widest levels (`tree_data.pack`), and training
step s draws its batch from part s mod K: a batch of small trees does not pay for the slots
of the largest (three parts per height compute about 40 % fewer slots than one layout for
every tree). With 50,000 trees the N-ary model memorised them (99.7 % at the root in
training, 81 % on held-out trees of height 4); with 400,000 a 6000-step run draws each tree
about once, and the 20,000-step run of `benchmarks/applications.py` about three times (99.9 %
in training, 93.6 % at the root of held-out trees of height 5–6).

Commands::

    rnnjax train --task tree --steps 3000 --out runs/tree                    # Child-Sum, + *
    rnnjax train --task tree --steps 20000 --cell n-ary --ops + - '*' --three 0.25 \\
        --out runs/tree-nary
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
    pack,
    random_batch,
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


def _chunks(cell: TreeCell, params, trees: list[Any], every_node: bool, chunk: int = 500):
    """Yields (batch, predicted values) for chunks of trees: (n,) roots or (n, P) slots."""
    run = jax.jit(apply, static_argnums=(0, 3, 4))
    for i in range(0, len(trees), chunk):
        batch = batch_trees(trees[i : i + chunk], cell.max_children or 3)
        log_probs = run(
            cell, params, jax.tree.map(jnp.asarray, batch), level_widths(batch), every_node
        )
        yield batch, np.asarray(jnp.argmax(log_probs, axis=-1))


def predict(cell: TreeCell, params, trees: list[Any]) -> np.ndarray:
    """Predicted values (n,) of nested trees (ValueError for a malformed tree)."""
    return np.concatenate([guess for _, guess in _chunks(cell, params, trees, False)])


def node_accuracy(cell: TreeCell, params, trees: list[Any]) -> dict[str, float]:
    """Accuracy of the value at every node, by kind: ``"leaf"`` or ``"<op>/<children>"``."""
    hits: Counter = Counter()
    counts: Counter = Counter()
    for batch, guess in _chunks(cell, params, trees, True):
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
    parser.add_argument(
        "--layouts",
        type=int,
        default=3,
        help="training layouts per height, by tree size (3): fewer padded slots per step",
    )
    parser.add_argument("--train-height", type=int, default=4, help="train on heights 1..H (4)")
    parser.add_argument(
        "--test-heights",
        type=int,
        nargs="+",
        default=[5, 6],
        help="held-out heights, all deeper than training (5 6)",
    )
    parser.add_argument(
        "--train-size", type=int, default=400_000, help="training trees, as many per height"
    )
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
    if args.train_size < 1 or args.test_size < 1 or args.embed < 1 or args.layouts < 1:
        raise ValueError(
            f"need positive sizes, got {args.train_size=}, {args.test_size=}, {args.embed=}, "
            f"{args.layouts=}"
        )
    if args.train_size < args.train_height * args.layouts:
        raise ValueError(
            f"--train-size {args.train_size} is too small for {args.train_height} heights × "
            f"{args.layouts} layouts"
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
    rng = np.random.default_rng(TRAIN_SEED)
    per_height = max(1, args.train_size // len(heights))
    buckets = []  # per height, --layouts parts of similar size, each packed for its widths
    for h in heights:
        batch = random_batch(rng, per_height, h, args.three, ops, max_children)
        order = np.argsort((batch.values >= 0).sum(1), kind="stable")  # by number of nodes
        buckets += [pack(batch, part) for part in np.array_split(order, args.layouts)]
    widths = [level_widths(b) for b in buckets]
    sizes = [len(b.root) for b in buckets]
    params = cell.init(jax.random.key(args.seed))

    def bucket_loss(k: int):
        def loss(params, data: tuple[TreeBatch, ...], step):
            idx = batch_indices(args.seed, step, sizes[k], args.batch_size)  # (B,)
            batch = jax.tree.map(lambda a: a[idx], data[k])
            log_probs = apply(cell, params, batch, widths[k], every_node=True)  # (B, P, 10)
            used = batch.values >= 0  # (B, P)
            loss = sequence_cross_entropy(log_probs, jnp.maximum(batch.values, 0), used)
            root = jnp.take_along_axis(log_probs, batch.root[:, None, None], axis=1)[:, 0]
            return loss, jnp.mean((jnp.argmax(root, -1) == batch.label).astype(jnp.float32))

        return loss

    def loss(params, data: tuple[TreeBatch, ...], step, key):
        # step s trains on part s mod K (heights low to high, each split by size), each laid
        # out for its own widths: the branches differ in shape, lax.switch runs one per step
        branches = [bucket_loss(k) for k in range(len(buckets))]
        value, accuracy = jax.lax.switch(step % len(buckets), branches, params, data, step)
        return value, {"accuracy": accuracy}

    data = tuple(jax.tree.map(jnp.asarray, b) for b in buckets)
    params, training = fit(loss, params, data, args, label="tree")
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
        correct = predict(cell, params, test) == labels
        evaluation[f"accuracy_height_{h}"] = float(correct.mean())
        evaluation[f"majority_baseline_height_{h}"] = Counter(labels).most_common(1)[0][1] / n
        if h > args.train_height:
            correct_deeper.append(correct)
            deeper_trees += test
    evaluation["accuracy_deeper"] = float(np.concatenate(correct_deeper).mean())
    evaluation["node_accuracy_deeper"] = node_accuracy(cell, params, deeper_trees)
    return write_result(args, "tree", training, evaluation, TARGET)


__all__ = [
    "add_arguments",
    "build_cell",
    "make_trees",
    "node_accuracy",
    "predict",
    "run",
]
