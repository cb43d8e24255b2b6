"""Recursive (tree-structured) networks: a Child-Sum Tree-LSTM over arithmetic expressions.

The lecture's "recursive neural networks — tree structured": the LSTM's recurrence runs up a
tree instead of along a sequence; a node's state is computed from its own input and the sum of
its children's states (Tai, Socher & Manning 2015, eq. 2–8)::

    h̃_j = Σ_k h_k                                   (k over the children of j)
    i_j = σ(x_j U⁽ⁱ⁾ + h̃_j W⁽ⁱ⁾ + b⁽ⁱ⁾)    o_j = σ(x_j U⁽ᵒ⁾ + h̃_j W⁽ᵒ⁾ + b⁽ᵒ⁾)
    u_j = tanh(x_j U⁽ᵘ⁾ + h̃_j W⁽ᵘ⁾ + b⁽ᵘ⁾)
    f_jk = σ(x_j U⁽ᶠ⁾ + h_k W⁽ᶠ⁾ + b⁽ᶠ⁾)               (one forget gate per child)
    c_j = i_j ⊙ u_j + Σ_k f_jk ⊙ c_k,    h_j = o_j ⊙ tanh(c_j)

The task: expression trees over the digits 0–9 with ``+`` and ``*`` nodes of 2 (or 3)
children — both operations are commutative, as the child sum is — labelled with their value
mod 10; trained on shallow trees and tested on deeper ones (`rnnjax.models.tree`).

Batching: trees of different shapes are flattened into padded node tables laid out by height
(`TreeBatch`) and computed level by level — the leaves of every tree at once, then all nodes
of height 1, … — so a whole batch is a fixed-shape, jit-compatible computation (`apply`);
`apply_reference` is the readable recursion over one tree that it must equal.

References:
    Tai, Socher & Manning, "Improved semantic representations from tree-structured long
    short-term memory networks", ACL 2015 (Child-Sum Tree-LSTM).
    Socher et al., "Recursive deep models for semantic compositionality over a sentiment
    treebank", EMNLP 2013.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import initializers
from rnnjax.cells.base import Array, check_positive, expand, gate_blocks

OPS = ("+", "*")
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
        children: (B, P, C) slots of each node's children, −1 for none.
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


def evaluate_tree(tree: Any) -> int:
    """The value mod 10 of a nested tree: an int digit or ``(op, child, child, ...)``."""
    if isinstance(tree, int | np.integer):
        return int(tree) % MODULUS
    op, *kids = tree
    values = [evaluate_tree(k) for k in kids]
    out = 0 if op == "+" else 1
    for v in values:
        out = (out + v) % MODULUS if op == "+" else (out * v) % MODULUS
    return out


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
        for j, s in slot.items():
            out.tokens[b, s] = TOKEN_ID[tokens[j]]
            out.children[b, s, : len(children[j])] = [slot[k] for k in children[j]]
            out.values[b, s] = _table_value(tokens, children, j)
        out.root[b] = slot[root]
        out.label[b] = out.values[b, slot[root]]
    return out


def _is_table(t: Any) -> bool:
    return isinstance(t, tuple) and len(t) == 2 and isinstance(t[0], list)


def _table_value(tokens, children, j) -> int:
    if tokens[j] not in OPS:
        return int(tokens[j])
    return evaluate_tree((tokens[j], *[_table_value(tokens, children, k) for k in children[j]]))


class TreeLSTMParams(NamedTuple):
    """Attributes: E: token embeddings (V, D); U: input weights [U⁽ⁱ⁾ U⁽ᵒ⁾ U⁽ᵘ⁾ U⁽ᶠ⁾], (D, 4H);
    W: weights on the child sum [W⁽ⁱ⁾ W⁽ᵒ⁾ W⁽ᵘ⁾], (H, 3H); W_f: forget weights on each child,
    (H, H); b: biases (4H,) (forget block starts at 1); V (H, 10), c (10,): the readout."""

    E: Array
    U: Array
    W: Array
    W_f: Array
    b: Array
    V: Array
    c: Array


def init_params(key, hidden: int, embed: int = 32, forget_bias: float = 1.0) -> TreeLSTMParams:
    """Parameters of a Child-Sum Tree-LSTM with H = hidden, D = embed.

    ``forget_bias`` is the initial b⁽ᶠ⁾. With the child sum, c_j adds up Σ_k f_jk ⊙ c_k, so at
    f ≈ σ(1) the cell state grows with the size of the subtree; a negative value starts
    each node from (mostly) its own candidate instead.
    """
    H, D = check_positive("hidden", hidden), check_positive("embed", embed)
    k = jax.random.split(key, 5)
    b = jnp.zeros((4 * H,), jnp.float32).at[3 * H :].set(forget_bias)  # (4H,)
    rec = initializers.default_recurrent_init
    return TreeLSTMParams(
        E=jax.random.normal(k[0], (len(TOKENS), D), jnp.float32),
        U=gate_blocks(initializers.default_input_init, k[1], D, H, 4),
        W=gate_blocks(rec, k[2], H, H, 3),
        W_f=rec(k[3], (H, H), jnp.float32),
        b=b,
        V=jax.nn.initializers.lecun_normal()(k[4], (H, MODULUS), jnp.float32),
        c=jnp.zeros((MODULUS,), jnp.float32),
    )


def node_update(params: TreeLSTMParams, px: Array, h_kids: Array, c_kids: Array):
    """One Child-Sum step: px (..., 4H) projected input, children h, c (..., C, H) (zeros for
    missing children) → (h, c) of the node, (..., H) each."""
    H = params.W_f.shape[0]
    p_iou, p_f = px[..., : 3 * H], px[..., 3 * H :]  # (..., 3H), (..., H)
    z = p_iou + jnp.sum(h_kids, axis=-2) @ params.W  # (..., 3H)
    i, o, u = jnp.split(z, 3, axis=-1)  # (..., H) each
    f = jax.nn.sigmoid(p_f[..., None, :] + h_kids @ params.W_f)  # (..., C, H)
    c = jax.nn.sigmoid(i) * jnp.tanh(u) + jnp.sum(f * c_kids, axis=-2)  # (..., H)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


def apply(
    params: TreeLSTMParams, batch: TreeBatch, widths: tuple[int, ...], every_node: bool = False
) -> Array:
    """Log-probabilities (B, 10) of each tree's value, computed level by level.

    Level l computes the W_l nodes of height l of every tree at once, from the states of
    their children (earlier slots): the leaves first, the roots last. Only those nodes are
    computed, with static slices, so the loop unrolls into a fixed-shape, jittable graph.

    Args:
        params: `TreeLSTMParams`.
        batch: a `TreeBatch` (jax or numpy arrays).
        widths: the static layout of the batch, `level_widths(batch)`.
        every_node: return the log-probabilities (B, P, 10) of the value of every slot's
            subtree instead (Tai et al. put a classifier on every node).
    """
    tokens = jnp.asarray(batch.tokens)
    px = params.E[tokens] @ params.U  # (B, P, 4H): the input side, hoisted out of the loop
    px = px + expand(params.b, px)
    B, P = tokens.shape
    if sum(widths) != P:
        raise ValueError(f"widths {widths} do not match the batch's {P} node slots")
    H = params.W_f.shape[0]
    children = jnp.asarray(batch.children)  # (B, P, C)
    h = c = jnp.zeros((B, 0, H), jnp.float32)  # states of the levels done so far
    for W in widths:
        lo = h.shape[1]
        kids = children[:, lo : lo + W]  # (B, W, C), slots < lo
        has_kid = (kids >= 0)[..., None]  # (B, W, C, 1)
        if lo == 0:  # the leaves: no children
            h_kids = c_kids = jnp.zeros((B, W, 1, H), jnp.float32)
        else:
            flat = jnp.maximum(kids, 0).reshape(B, -1, 1)  # (B, W·C, 1)
            h_kids = jnp.take_along_axis(h, flat, axis=1).reshape((*kids.shape, H))
            c_kids = jnp.take_along_axis(c, flat, axis=1).reshape((*kids.shape, H))
            h_kids, c_kids = jnp.where(has_kid, h_kids, 0.0), jnp.where(has_kid, c_kids, 0.0)
        h_new, c_new = node_update(params, px[:, lo : lo + W], h_kids, c_kids)  # (B, W, H)
        h = jnp.concatenate([h, h_new], axis=1)  # (B, lo + W, H)
        c = jnp.concatenate([c, c_new], axis=1)
    if not every_node:
        h = jnp.take_along_axis(h, jnp.asarray(batch.root)[:, None, None], axis=1)[:, 0]
    logits = h @ params.V  # (B, 10) or (B, P, 10)
    return jax.nn.log_softmax(logits + expand(params.c, logits), axis=-1)


def apply_reference(params: TreeLSTMParams, tree: Any) -> Array:
    """The readable definition: recursion over one nested tree → log-probabilities (10,)."""

    def state(node):
        H = params.W_f.shape[0]
        if isinstance(node, int | np.integer):
            token, kids = str(int(node)), []
        else:
            token, kids = node[0], [state(k) for k in node[1:]]
        px = params.E[TOKEN_ID[token]] @ params.U + params.b  # (4H,)
        h_k = jnp.stack([h for h, _ in kids]) if kids else jnp.zeros((1, H))  # (C, H)
        c_k = jnp.stack([c for _, c in kids]) if kids else jnp.zeros((1, H))
        return node_update(params, px, h_k, c_k)

    h, _ = state(tree)
    return jax.nn.log_softmax(h @ params.V + params.c)


def random_tree(rng: np.random.Generator, height: int, p_three: float = 0.25) -> Any:
    """A random nested tree of exactly ``height``: one child is ``height − 1`` tall, the
    others random in [0, height − 1]; inner nodes get 3 children with probability p_three."""
    if height == 0:
        return int(rng.integers(10))
    arity = 3 if rng.random() < p_three else 2
    tall = int(rng.integers(arity))
    kids = [
        random_tree(rng, height - 1 if k == tall else int(rng.integers(height)), p_three)
        for k in range(arity)
    ]
    return (OPS[int(rng.integers(len(OPS)))], *kids)


__all__ = [
    "OPS",
    "TOKENS",
    "TreeBatch",
    "TreeLSTMParams",
    "apply",
    "apply_reference",
    "batch_trees",
    "check_table",
    "evaluate_tree",
    "init_params",
    "level_widths",
    "node_update",
    "random_tree",
    "to_table",
]
