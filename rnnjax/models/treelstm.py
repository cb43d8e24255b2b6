"""Recursive (tree-structured) networks: the Child-Sum and the N-ary Tree-LSTM.

The lecture's "recursive neural networks — tree structured": the LSTM's recurrence runs up a
tree instead of along a sequence; a node's state is computed from its own input x_j (its
token's vector) and its children's states (Tai, Socher & Manning 2015). Both variants end in

    c_j = i_j ⊙ u_j + Σ_ℓ f_jℓ ⊙ c_jℓ,      h_j = o_j ⊙ tanh(c_j)

and differ in how the children enter the gates. **Child-Sum** (§3.1, eq. 2–8): through their
sum, one weight matrix for all children, and each child's forget gate sees only that child::

    h̃_j = Σ_k h_jk
    i_j = σ(x_j U⁽ⁱ⁾ + h̃_j W⁽ⁱ⁾ + b⁽ⁱ⁾)    o_j = σ(x_j U⁽ᵒ⁾ + h̃_j W⁽ᵒ⁾ + b⁽ᵒ⁾)
    u_j = tanh(x_j U⁽ᵘ⁾ + h̃_j W⁽ᵘ⁾ + b⁽ᵘ⁾)    f_jk = σ(x_j U⁽ᶠ⁾ + h_jk W⁽ᶠ⁾ + b⁽ᶠ⁾)

so it is blind to the order of the children (any number of them). **N-ary** (§3.2, eq. 9–14):
children ℓ = 1..N in order, a weight block per position, and a forget gate per child k that
sees every sibling::

    i_j = σ(x_j U⁽ⁱ⁾ + Σ_ℓ h_jℓ W_ℓ⁽ⁱ⁾ + b⁽ⁱ⁾)      (o_j, u_j alike)
    f_jk = σ(x_j U⁽ᶠ⁾ + Σ_ℓ h_jℓ W_kℓ⁽ᶠ⁾ + b⁽ᶠ⁾)    k = 1..N

A node with fewer than N children has zero states in the missing positions. In the code the
N position blocks are one matrix: ``[h_j1 … h_jN] (N·H) @ W (N·H, (3 + N)·H)`` gives the
i, o, u pre-activations and the N forget pre-activations in one matmul.

A model is a `TreeCell` (a NamedTuple of pure functions, like the library's cells):
`child_sum` and `n_ary` build one; `apply` runs it over a `TreeBatch` level by level — the
leaves of every tree at once, then all nodes of height 1, … — as one fixed-shape, jittable
computation; `apply_reference` is the readable recursion over one tree that it must equal.

References:
    Tai, Socher & Manning, "Improved semantic representations from tree-structured long
    short-term memory networks", ACL 2015 (Child-Sum and N-ary Tree-LSTMs).
    Socher et al., "Recursive deep models for semantic compositionality over a sentiment
    treebank", EMNLP 2013.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import initializers
from rnnjax.cells.base import Array, check_positive, expand, gate_blocks
from rnnjax.models.tree_data import MODULUS, TOKEN_ID, TOKENS, TreeBatch


class TreeCell(NamedTuple):
    """A Tree-LSTM node function (built by `child_sum` or `n_ary`).

    Attributes:
        init: ``key -> params`` (a NamedTuple with E, U, b, V, c and the child weights).
        update: ``(params, px (..., 4H), h_kids (..., C, H), c_kids (..., C, H)) -> (h, c)``,
            (..., H) each: one node from its projected input ``x_j U + b`` and its children's
            states in order (zeros for missing children).
        max_children: N for the N-ary cell (the batch's child columns must not exceed it);
            None for Child-Sum (any number).
        name: for messages and results.
    """

    init: Callable[[Any], Any]
    update: Callable[[Any, Array, Array, Array], tuple[Array, Array]]
    max_children: int | None
    name: str


class ChildSumParams(NamedTuple):
    """Attributes: E: token embeddings (V, D); U: input weights [U⁽ⁱ⁾ U⁽ᵒ⁾ U⁽ᵘ⁾ U⁽ᶠ⁾], (D, 4H);
    W: weights on the child sum [W⁽ⁱ⁾ W⁽ᵒ⁾ W⁽ᵘ⁾], (H, 3H); W_f: forget weights on each child,
    (H, H); b: biases (4H,), forget block last; V (H, 10), c (10,): the readout."""

    E: Array
    U: Array
    W: Array
    W_f: Array
    b: Array
    V: Array
    c: Array


class NAryParams(NamedTuple):
    """Attributes: E: token embeddings (V, D); U: input weights [U⁽ⁱ⁾ U⁽ᵒ⁾ U⁽ᵘ⁾ U⁽ᶠ⁾], (D, 4H)
    (one U⁽ᶠ⁾, b⁽ᶠ⁾ for every child, as in the paper); W: (N·H, (3 + N)·H), row block ℓ holds
    child position ℓ's weights [W_ℓ⁽ⁱ⁾ W_ℓ⁽ᵒ⁾ W_ℓ⁽ᵘ⁾ W_1ℓ⁽ᶠ⁾ … W_Nℓ⁽ᶠ⁾]; b: biases (4H,),
    forget block last; V (H, 10), c (10,): the readout."""

    E: Array
    U: Array
    W: Array
    b: Array
    V: Array
    c: Array


def _shared(key, hidden: int, embed: int, forget_bias: float) -> dict[str, Array]:
    """E, U, b, V, c: the parts both cells have."""
    H, D = hidden, embed
    k = jax.random.split(key, 3)
    return {
        "E": jax.random.normal(k[0], (len(TOKENS), D), jnp.float32),
        "U": gate_blocks(initializers.default_input_init, k[1], D, H, 4),
        "b": jnp.zeros((4 * H,), jnp.float32).at[3 * H :].set(forget_bias),
        "V": jax.nn.initializers.lecun_normal()(k[2], (H, MODULUS), jnp.float32),
        "c": jnp.zeros((MODULUS,), jnp.float32),
    }


def child_sum(hidden: int, embed: int = 32, forget_bias: float = 1.0) -> TreeCell:
    """The Child-Sum Tree-LSTM with H = hidden, D = embed (Tai et al. 2015, eq. 2–8).

    ``forget_bias`` is the initial b⁽ᶠ⁾. As c_j adds up Σ_k f_jk ⊙ c_k, at f ≈ σ(1) the cell
    state grows with the size of the subtree; a negative value starts each node from
    (mostly) its own candidate instead.

    Example:
        >>> cell = child_sum(64)
        >>> params = cell.init(jax.random.key(0))
        >>> log_probs = apply(cell, params, batch, level_widths(batch))  # (B, 10)
    """
    H, D = check_positive("hidden", hidden), check_positive("embed", embed)
    rec = initializers.default_recurrent_init

    def init(key) -> ChildSumParams:
        k_shared, k_w, k_f = jax.random.split(key, 3)
        return ChildSumParams(
            W=gate_blocks(rec, k_w, H, H, 3),  # (H, 3H)
            W_f=rec(k_f, (H, H), jnp.float32),  # (H, H)
            **_shared(k_shared, H, D, forget_bias),
        )

    def update(params: ChildSumParams, px, h_kids, c_kids):
        p_iou, p_f = px[..., : 3 * H], px[..., 3 * H :]  # (..., 3H), (..., H)
        z = p_iou + jnp.sum(h_kids, axis=-2) @ params.W  # (..., 3H)
        i, o, u = jnp.split(z, 3, axis=-1)  # (..., H) each
        f = jax.nn.sigmoid(p_f[..., None, :] + h_kids @ params.W_f)  # (..., C, H)
        c = jax.nn.sigmoid(i) * jnp.tanh(u) + jnp.sum(f * c_kids, axis=-2)  # (..., H)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c

    return TreeCell(init, update, None, "child-sum")


def n_ary(hidden: int, n: int = 3, embed: int = 32, forget_bias: float = 1.0) -> TreeCell:
    """The N-ary Tree-LSTM with N = n ordered child positions (Tai et al. 2015, eq. 9–14).

    Nodes may have fewer than N children (the missing positions hold zero states), never
    more. ``forget_bias`` as in `child_sum`.
    """
    H, D, N = (check_positive(k, v) for k, v in (("hidden", hidden), ("embed", embed), ("n", n)))
    rec = initializers.default_recurrent_init

    def init(key) -> NAryParams:
        k_shared, *k_pos = jax.random.split(key, N + 1)
        blocks = [gate_blocks(rec, k, H, H, 3 + N) for k in k_pos]  # N × (H, (3 + N)H)
        return NAryParams(
            E=(s := _shared(k_shared, H, D, forget_bias))["E"],
            U=s["U"],
            W=jnp.concatenate(blocks, axis=0),  # (N·H, (3 + N)·H)
            b=s["b"],
            V=s["V"],
            c=s["c"],
        )

    def update(params: NAryParams, px, h_kids, c_kids):
        if h_kids.shape[-2] != N:
            raise ValueError(f"the {N}-ary cell needs {N} child positions, got {h_kids.shape=}")
        z = h_kids.reshape((*h_kids.shape[:-2], N * H)) @ params.W  # (..., (3 + N)H)
        i, o, u = jnp.split(px[..., : 3 * H] + z[..., : 3 * H], 3, axis=-1)  # (..., H) each
        z_f = z[..., 3 * H :].reshape((*z.shape[:-1], N, H))  # (..., N, H): Σ_ℓ h_ℓ W_kℓ
        f = jax.nn.sigmoid(px[..., None, 3 * H :] + z_f)  # (..., N, H)
        c = jax.nn.sigmoid(i) * jnp.tanh(u) + jnp.sum(f * c_kids, axis=-2)  # (..., H)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c

    return TreeCell(init, update, N, f"{N}-ary")


def leaf_state(px: Array) -> tuple[Array, Array]:
    """(h, c) of nodes without children from their projected input px (..., 4H), the same
    for both cells (every child term is zero): c = σ(i) ⊙ tanh(u), h = σ(o) ⊙ tanh(c)."""
    i, o, u, _ = jnp.split(px, 4, axis=-1)  # (..., H) each
    c = jax.nn.sigmoid(i) * jnp.tanh(u)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


def _child_columns(cell: TreeCell, children: Array) -> Array:
    """The batch's (B, P, C) child slots with C = N for an N-ary cell (padded with −1)."""
    C, N = children.shape[-1], cell.max_children
    if N is None or C == N:
        return children
    if C > N:
        raise ValueError(
            f"the batch allows {C} children per node but the {cell.name} cell takes at most "
            f"{N}; batch the trees with batch_trees(trees, max_children={N})"
        )
    return jnp.pad(children, ((0, 0), (0, 0), (0, N - C)), constant_values=-1)


def apply(
    cell: TreeCell,
    params: Any,
    batch: TreeBatch,
    widths: tuple[int, ...],
    every_node: bool = False,
) -> Array:
    """Log-probabilities (B, 10) of each tree's value, computed level by level.

    Level l computes the W_l nodes of height l of every tree at once, from the states of
    their children (earlier slots): the leaves first, the roots last. Only those nodes are
    computed, with static slices, so the loop unrolls into a fixed-shape, jittable graph.

    Args:
        cell: a `TreeCell`.
        params: its params.
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
    H = params.V.shape[0]
    children = _child_columns(cell, jnp.asarray(batch.children))  # (B, P, C)
    h = c = jnp.zeros((B, 0, H), jnp.float32)  # states of the levels done so far
    for W in widths:
        lo = h.shape[1]
        kids = children[:, lo : lo + W]  # (B, W, C), slots < lo
        if lo == 0:  # the leaves: no children, so no recurrent matmul
            h_new, c_new = leaf_state(px[:, :W])  # (B, W, H)
        else:
            has_kid = (kids >= 0)[..., None]  # (B, W, C, 1)
            flat = jnp.maximum(kids, 0).reshape(B, -1, 1)  # (B, W·C, 1)
            h_kids = jnp.take_along_axis(h, flat, axis=1).reshape((*kids.shape, H))
            c_kids = jnp.take_along_axis(c, flat, axis=1).reshape((*kids.shape, H))
            h_kids, c_kids = jnp.where(has_kid, h_kids, 0.0), jnp.where(has_kid, c_kids, 0.0)
            h_new, c_new = cell.update(params, px[:, lo : lo + W], h_kids, c_kids)  # (B, W, H)
        h = jnp.concatenate([h, h_new], axis=1)  # (B, lo + W, H)
        c = jnp.concatenate([c, c_new], axis=1)
    if not every_node:
        h = jnp.take_along_axis(h, jnp.asarray(batch.root)[:, None, None], axis=1)[:, 0]
    logits = h @ params.V  # (B, 10) or (B, P, 10)
    return jax.nn.log_softmax(logits + expand(params.c, logits), axis=-1)


def apply_reference(cell: TreeCell, params: Any, tree: Any) -> Array:
    """The readable definition: recursion over one nested tree → log-probabilities (10,)."""
    H = params.V.shape[0]

    def state(node):
        if isinstance(node, int | np.integer):
            token, kids = str(int(node)), []
        else:
            token, kids = node[0], [state(k) for k in node[1:]]
        if cell.max_children is not None and len(kids) > cell.max_children:
            raise ValueError(f"a node has {len(kids)} children; the {cell.name} cell takes fewer")
        slots = cell.max_children or max(len(kids), 1)
        zero = jnp.zeros((H,), jnp.float32)
        kids = kids + [(zero, zero)] * (slots - len(kids))
        px = params.E[TOKEN_ID[token]] @ params.U + params.b  # (4H,)
        h_k = jnp.stack([h for h, _ in kids])  # (C, H)
        c_k = jnp.stack([c for _, c in kids])  # (C, H)
        return cell.update(params, px, h_k, c_k)

    h, _ = state(tree)
    return jax.nn.log_softmax(h @ params.V + params.c)


CELLS: dict[str, Callable[..., TreeCell]] = {"child-sum": child_sum, "n-ary": n_ary}

__all__ = [
    "CELLS",
    "ChildSumParams",
    "NAryParams",
    "TreeCell",
    "apply",
    "apply_reference",
    "child_sum",
    "leaf_state",
    "n_ary",
]
