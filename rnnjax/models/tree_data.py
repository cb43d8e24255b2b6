"""Arithmetic expression trees for the Tree-LSTMs: generation, values, validation, batching.

A tree is an int digit 0–9 (a leaf) or ``(op, child, child, ...)`` with 2 or more children;
its value is taken mod 10::

    ("+", ("*", 3, 4), 7, ("-", 9, 1))      (3·4 + 7 + (9 − 1)) mod 10 = 7

``+`` and ``*`` are commutative (their value does not depend on the order of the children);
``-`` is not: it subtracts every later child from the first, ``(− a b c) = a − b − c``, so a
model must know which child is which — the N-ary Tree-LSTM does, the Child-Sum one cannot.

Batching: trees of different shapes are flattened into padded node tables laid out by height
(`TreeBatch`) so that a whole batch is computed level by level with static shapes
(`rnnjax.models.treelstm.apply`).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any, NamedTuple

import numpy as np

OPS = ("+", "*", "-")
COMMUTATIVE = ("+", "*")
TOKENS = ("<PAD>", *[str(d) for d in range(10)], *OPS)
TOKEN_ID = {t: i for i, t in enumerate(TOKENS)}
MODULUS = 10


class TreeBatch(NamedTuple):
    """B trees as padded node tables laid out level by level (numpy or jax int32).

    The P = Σ_l W_l node slots are grouped by height: slots [0, W_0) hold the leaves of every
    tree, the next W_1 slots the nodes of height 1, and so on (W_l, the widest level l in the
    batch, is `level_widths`). A node's children therefore always sit in earlier slots.

    Attributes:
        tokens: (B, P) token ids (`TOKENS`); 0 in unused slots.
        children: (B, P, C) slots of each node's children in order, −1 for none (a node
            with k children uses the first k columns).
        height: (B, P) the level of each slot, i.e. the height of the node in it (0 for
            leaves); the same for every tree (unused slots have token 0).
        root: (B,) the slot of each tree's root.
        label: (B,) the tree's value mod 10.
        values: (B, P) the value mod 10 of the subtree under each slot; −1 in unused slots.
    """

    tokens: Any
    children: Any
    height: Any
    root: Any
    label: Any
    values: Any


def level_widths(batch: TreeBatch) -> tuple[int, ...]:
    """The static layout (W_0, W_1, …) of a numpy `TreeBatch`: slots per level."""
    height = np.asarray(batch.height)
    first = [int(np.argmax(height[0] == l)) for l in range(int(height.max()) + 1)]
    return tuple(int(b - a) for a, b in zip(first, [*first[1:], height.shape[1]], strict=True))


def apply_op(op: str, values: Sequence[int]) -> int:
    """``op`` over the children's values mod 10: a sum, a product, or the first minus the
    others (ValueError for an unknown op or fewer than 2 values)."""
    if op not in OPS or len(values) < 2:
        raise ValueError(f"need an op in {OPS} and at least 2 values, got {op!r}, {values!r}")
    if op == "+":
        return sum(values) % MODULUS
    if op == "-":
        return (values[0] - sum(values[1:])) % MODULUS
    out = 1
    for v in values:
        out = out * v % MODULUS
    return out


def evaluate_tree(tree: Any) -> int:
    """The value mod 10 of a nested tree: an int digit or ``(op, child, child, ...)``."""
    if isinstance(tree, int | np.integer):
        return int(tree) % MODULUS
    return apply_op(tree[0], [evaluate_tree(k) for k in tree[1:]])


def tree_height(tree: Any) -> int:
    """0 for a leaf, else 1 + the tallest child."""
    if isinstance(tree, int | np.integer):
        return 0
    return 1 + max(tree_height(k) for k in tree[1:])


def random_tree(
    rng: np.random.Generator, height: int, p_three: float = 0.25, ops: Sequence[str] = COMMUTATIVE
) -> Any:
    """A random nested tree of exactly ``height``: one child is ``height − 1`` tall, the
    others random in [0, height − 1]; inner nodes get 3 children with probability p_three
    (else 2) and an op drawn uniformly from ``ops``."""
    if height == 0:
        return int(rng.integers(10))
    arity = 3 if rng.random() < p_three else 2
    tall = int(rng.integers(arity))
    kids = [
        random_tree(rng, height - 1 if k == tall else int(rng.integers(height)), p_three, ops)
        for k in range(arity)
    ]
    return (ops[int(rng.integers(len(ops)))], *kids)


def random_batch(
    rng: np.random.Generator,
    n: int,
    height: int,
    p_three: float = 0.25,
    ops: Sequence[str] = COMMUTATIVE,
    max_children: int = 3,
) -> TreeBatch:
    """``n`` random trees of exactly ``height``, drawn as `random_tree` draws them, built
    straight into a `TreeBatch` with numpy (about a hundred times faster than
    ``batch_trees([random_tree(...) ...])``, for large training sets).

    Nodes are made top-down, one height at a time over all trees at once: every node of
    height l ≥ 1 gets 2 or 3 children (3 with probability ``p_three``) and an op from
    ``ops``; one child is l − 1 tall, the others uniform in [0, l − 1]. Values are then
    computed bottom-up.
    """
    if height < 0 or n < 1 or max_children < (3 if p_three > 0 else 2):
        raise ValueError(f"need height ≥ 0, n ≥ 1, room for every child; got {height=}, {n=}")
    op_ids = np.asarray([TOKEN_ID[o] for o in ops])
    # requests[l]: (tree, parent level, parent index, position) of the nodes of height l
    requests: dict[int, list[tuple[np.ndarray, ...]]] = {l: [] for l in range(height + 1)}
    minus = np.full((n,), -1)
    requests[height].append((np.arange(n), minus, minus, minus))
    levels: dict[int, dict[str, np.ndarray]] = {}
    for l in range(height, -1, -1):
        tree, p_level, p_index, pos = (np.concatenate(a) for a in zip(*requests[l], strict=True))
        order = np.argsort(tree, kind="stable")
        tree, p_level, p_index, pos = tree[order], p_level[order], p_index[order], pos[order]
        first = np.searchsorted(tree, tree)  # index of the first node of the same tree
        level = {"tree": tree, "parent_level": p_level, "parent": p_index, "pos": pos}
        level["rank"] = np.arange(len(tree)) - first  # slot within the tree's level
        m = len(tree)
        if l == 0:
            level["token"] = 1 + rng.integers(10, size=m)  # TOKEN_ID of the digits 0–9
        else:
            arity = np.where(rng.random(m) < p_three, 3, 2)
            tall = rng.integers(arity)
            level["token"] = op_ids[rng.integers(len(op_ids), size=m)]
            for k in range(3):
                has = k < arity
                kid_height = np.where(k == tall, l - 1, rng.integers(l, size=m))[has]
                idx = np.flatnonzero(has)
                for h in np.unique(kid_height):
                    sel = idx[kid_height == h]
                    requests[int(h)].append(
                        (tree[sel], np.full(len(sel), l), sel, np.full(len(sel), k))
                    )
        levels[l] = level
    widths = [int(levels[l]["rank"].max()) + 1 for l in range(height + 1)]
    start = np.concatenate([[0], np.cumsum(widths)]).astype(int)
    P = int(start[-1])
    out = TreeBatch(
        np.zeros((n, P), np.int32),
        np.full((n, P, max_children), -1, np.int32),
        np.repeat(np.repeat(np.arange(height + 1), widths)[None], n, 0).astype(np.int32),
        np.full((n,), start[height], np.int32),
        np.zeros((n,), np.int32),
        np.full((n, P), -1, np.int32),
    )
    for l, level in levels.items():
        slot = start[l] + level["rank"]
        level["slot"] = slot
        out.tokens[level["tree"], slot] = level["token"]
        for pl in np.unique(level["parent_level"][level["parent_level"] >= 0]):
            sel = level["parent_level"] == pl
            parent_slot = levels[int(pl)]["slot"][level["parent"][sel]]
            out.children[level["tree"][sel], parent_slot, level["pos"][sel]] = slot[sel]
    for l in range(height + 1):  # values, children before parents
        tree, slot, token = levels[l]["tree"], levels[l]["slot"], levels[l]["token"]
        if l == 0:
            out.values[tree, slot] = token - 1
            continue
        kids = out.children[tree, slot]  # (m, C)
        v = np.where(kids >= 0, out.values[tree[:, None], np.maximum(kids, 0)], 0)  # (m, C)
        has = kids >= 0
        total = v.sum(-1)
        product = np.where(has, v, 1).prod(-1)
        difference = v[:, 0] - (total - v[:, 0])
        op = np.asarray(TOKENS)[token]
        value = np.where(op == "+", total, np.where(op == "*", product, difference))
        out.values[tree, slot] = value % MODULUS
    out.label[:] = out.values[np.arange(n), out.root]
    return out


def pack(batch: TreeBatch, index: Any) -> TreeBatch:
    """The trees ``index`` of a numpy `TreeBatch`, laid out for their own widest levels.

    Relies on what both builders guarantee: a tree's nodes of height l fill the first slots
    of level l. Splitting a batch by tree size and packing each part cuts the padded slots
    that every step computes.
    """
    index = np.asarray(index)
    widths = level_widths(batch)
    start = np.concatenate([[0], np.cumsum(widths)]).astype(int)
    used = np.asarray(batch.values)[index] >= 0  # (n, P)
    new_widths = [max(1, int(used[:, a:b].sum(1).max())) for a, b in pairwise(start)]
    keep = np.concatenate([a + np.arange(w) for a, w in zip(start[:-1], new_widths, strict=True)])
    new_slot = np.full(start[-1] + 1, -1, np.int32)  # index −1 (no child) maps to −1
    new_slot[keep] = np.arange(len(keep))
    children = np.asarray(batch.children)[index][:, keep]  # (n, P', C)
    return TreeBatch(
        np.asarray(batch.tokens)[index][:, keep],
        new_slot[children],
        np.asarray(batch.height)[index][:, keep],
        new_slot[np.asarray(batch.root)[index]],
        np.asarray(batch.label)[index],
        np.asarray(batch.values)[index][:, keep],
    )


def from_table(batch: TreeBatch, b: int) -> Any:
    """Tree ``b`` of a `TreeBatch` as a nested tree (the inverse of `batch_trees`)."""

    def node(slot: int) -> Any:
        token = TOKENS[int(batch.tokens[b, slot])]
        if token not in OPS:
            return int(token)
        return (token, *[node(int(k)) for k in batch.children[b, slot] if k >= 0])

    return node(int(batch.root[b]))


def to_table(tree: Any) -> tuple[list[str], list[list[int]]]:
    """A nested tree as a node table (tokens, children) in post-order (children first)."""
    tokens: list[str] = []
    children: list[list[int]] = []

    def visit(node) -> int:
        if isinstance(node, int | np.integer):
            if not 0 <= int(node) <= 9:
                raise ValueError(f"leaves must be digits 0–9, got {node!r}")
            tokens.append(str(int(node)))
            children.append([])
        else:
            if not isinstance(node, tuple) or len(node) < 3 or node[0] not in OPS:
                raise ValueError(
                    f"an inner node must be (op, child, child, ...) with op in {OPS}, got {node!r}"
                )
            kids = [visit(k) for k in node[1:]]
            tokens.append(node[0])
            children.append(kids)
        return len(tokens) - 1

    visit(tree)
    return tokens, children


def check_table(tokens: list[str], children: list[list[int]]) -> tuple[int, list[int]]:
    """Validates a node table; returns (root, heights).

    Raises:
        ValueError: unknown token, leaf/op mismatch, child index out of range, a node with two
            parents, no root or several roots, or a cycle.
    """
    n = len(tokens)
    if n == 0 or len(children) != n:
        raise ValueError(f"need one children list per token, got {n} tokens, {len(children)} lists")
    parent = [-1] * n
    for j, (tok, kids) in enumerate(zip(tokens, children, strict=True)):
        if tok not in TOKEN_ID or tok == "<PAD>":
            raise ValueError(f"node {j} has unknown token {tok!r}; use digits or {OPS}")
        if len(kids) < 2 if tok in OPS else len(kids) > 0:
            raise ValueError(
                f"node {j} ({tok!r}) has {len(kids)} children: digits are leaves, "
                f"operators need at least 2"
            )
        for k in kids:
            if not 0 <= k < n:
                raise ValueError(f"node {j} has child {k}, outside the table of {n} nodes")
            if parent[k] != -1:
                raise ValueError(f"node {k} has two parents ({parent[k]} and {j}): not a tree")
            parent[k] = j
    roots = [j for j in range(n) if parent[j] == -1]
    if len(roots) != 1:
        raise ValueError(
            f"a tree has exactly one root, found {len(roots)} (nodes {roots[:5]}); "
            f"every node is someone's child when the links form a cycle"
        )
    height = [-1] * n
    state = [0] * n  # 0 new, 1 on the DFS stack, 2 done
    stack = [(roots[0], 0)]
    while stack:
        j, i = stack.pop()
        state[j] = 1
        if i < len(children[j]):
            stack.append((j, i + 1))
            k = children[j][i]
            if state[k] == 1:
                raise ValueError(f"the tree has a cycle through nodes {j} and {k}")
            if state[k] == 0:
                stack.append((k, 0))
        else:
            state[j] = 2
            height[j] = 1 + max((height[k] for k in children[j]), default=-1)
    unreached = [j for j in range(n) if state[j] != 2]
    if unreached:
        raise ValueError(
            f"nodes {unreached[:5]} are not reachable from the root {roots[0]}: they form a cycle"
        )
    return roots[0], height


def batch_trees(trees: list[Any], max_children: int = 3) -> TreeBatch:
    """Nested trees (or (tokens, children) tables) → a level-by-level `TreeBatch` (numpy).

    Raises:
        ValueError: a malformed tree (see `check_table`) or a node with more than
            ``max_children`` children.
    """
    if not trees:
        raise ValueError("need at least one tree, got an empty list")
    tables = [t if _is_table(t) else to_table(t) for t in trees]
    checked = [check_table(*t) for t in tables]
    levels = 1 + max(max(h) for _, h in checked)
    widths = [max(h.count(l) for _, h in checked) for l in range(levels)]  # W_l
    start = np.concatenate([[0], np.cumsum(widths)]).astype(int)  # first slot of each level
    B, P = len(tables), int(start[-1])
    out = TreeBatch(
        np.zeros((B, P), np.int32),
        np.full((B, P, max_children), -1, np.int32),
        np.repeat(np.repeat(np.arange(levels), widths)[None], B, 0).astype(np.int32),
        np.zeros((B,), np.int32),
        np.zeros((B,), np.int32),
        np.full((B, P), -1, np.int32),
    )
    for b, ((tokens, children), (root, height)) in enumerate(zip(tables, checked, strict=True)):
        if max(map(len, children)) > max_children:
            raise ValueError(f"tree {b} has a node with more than {max_children} children")
        slot, used = {}, [0] * levels
        for j in sorted(range(len(tokens)), key=lambda j: height[j]):  # stable: keeps order
            slot[j] = start[height[j]] + used[height[j]]
            used[height[j]] += 1
        values = _table_values(tokens, children, height)
        for j, s in slot.items():
            out.tokens[b, s] = TOKEN_ID[tokens[j]]
            out.children[b, s, : len(children[j])] = [slot[k] for k in children[j]]
            out.values[b, s] = values[j]
        out.root[b] = slot[root]
        out.label[b] = out.values[b, slot[root]]
    return out


def _is_table(t: Any) -> bool:
    return isinstance(t, tuple) and len(t) == 2 and isinstance(t[0], list)


def _table_values(tokens: list[str], children: list[list[int]], height: list[int]) -> list[int]:
    """The value of every node's subtree, children before parents."""
    values = [0] * len(tokens)
    for j in sorted(range(len(tokens)), key=lambda j: height[j]):
        kids = [values[k] for k in children[j]]
        values[j] = apply_op(tokens[j], kids) if tokens[j] in OPS else int(tokens[j])
    return values


__all__ = [
    "COMMUTATIVE",
    "MODULUS",
    "OPS",
    "TOKENS",
    "TOKEN_ID",
    "TreeBatch",
    "apply_op",
    "batch_trees",
    "check_table",
    "evaluate_tree",
    "from_table",
    "level_widths",
    "pack",
    "random_batch",
    "random_tree",
    "to_table",
    "tree_height",
]
