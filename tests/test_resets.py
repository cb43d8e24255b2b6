"""``unroll(resets=)``: at a marked step the carry restarts from the cell's initial carry, no
gradient crosses it, and the result equals the pieces run separately — on every backend that
runs the cell (checked against a per-step Python loop of ``cell.step`` and against the pieces)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax as rj
from rnnjax.kernels.base import Problem
from rnnjax.resets import resettable

B, T, D, H = 3, 7, 3, 4
RESETS = np.zeros((B, T), bool)
RESETS[0, [3, 5]] = True
RESETS[2, [0, 2]] = True
LENGTHS = np.array([T, 5, 4])


def _setup(cell):
    params = cell.init(jax.random.key(0), D)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = treedef.unflatten(
        [0.5 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    )
    xs = jax.random.normal(jax.random.key(2), (B, T, D))
    carry = jax.tree.map(
        lambda a: jax.random.normal(jax.random.key(3), a.shape), cell.initial_carry(params, (B,))
    )
    return params, xs, carry


def step_oracle(cell, params, xs, carry, resets, lengths, reverse):
    """The definition, one row and one step at a time: restart, then step."""
    ys = np.zeros((B, T, cell.hidden_size))
    finals, step = [], jax.jit(cell.step)
    for b in range(B):
        c = jax.tree.map(lambda a, b=b: a[b], carry)
        order = range(lengths[b])
        for t in reversed(order) if reverse else order:
            if resets[b, t]:
                c = cell.initial_carry(params)
            c, y = step(params, c, xs[b, t])
            ys[b, t] = y
        finals.append(c)
    return jax.tree.map(lambda *a: jnp.stack(a), *finals), ys


CELLS = {"lstm": lambda: rj.lstm(H), "gru": lambda: rj.gru(H), "min_gru": lambda: rj.min_gru(H)}


@pytest.mark.parametrize(
    "name,backend",
    [("lstm", "scan"), ("lstm", "fused"), ("gru", "fused"), ("min_gru", "associative")],
)
@pytest.mark.parametrize("reverse", [False, True])
def test_resets_equal_the_step_by_step_definition(name, backend, reverse):
    cell = CELLS[name]()
    params, xs, carry = _setup(cell)
    want_final, want_ys = step_oracle(cell, params, xs, carry, RESETS, LENGTHS, reverse)
    final, ys = jax.jit(
        lambda p, x, c, r: rj.unroll(
            cell, p, x, c, resets=r, lengths=LENGTHS, reverse=reverse, backend=backend
        )
    )(params, xs, carry, RESETS)
    np.testing.assert_allclose(ys, want_ys, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(final, want_final, rtol=1e-5, atol=1e-6)


def test_a_sequence_with_resets_equals_its_pieces_run_separately():
    cell = rj.lstm(H)
    params, xs, carry = _setup(cell)
    final, ys = rj.unroll(cell, params, xs, carry, resets=RESETS, backend="fused")
    # row 0: [0, 3) from the given carry, then [3, 5) and [5, 7) from the initial carry
    row = jax.tree.map(lambda a: a[0], carry)
    c, y_a = rj.unroll(cell, params, xs[0, :3], row)
    _, y_b = rj.unroll(cell, params, xs[0, 3:5])
    c, y_c = rj.unroll(cell, params, xs[0, 5:])
    chex.assert_trees_all_close(ys[0], jnp.concatenate([y_a, y_b, y_c]), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[0], final), c, rtol=1e-5, atol=1e-6)
    # row 1 has no reset: the plain unroll
    _, y1 = rj.unroll(cell, params, xs[1], jax.tree.map(lambda a: a[1], carry))
    chex.assert_trees_all_close(ys[1], y1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["scan", "fused"])
def test_no_gradient_crosses_a_reset(backend):
    cell = rj.gru(H)
    params, xs, carry = _setup(cell)

    def loss(x, c):
        _, ys = rj.unroll(cell, params, x, c, resets=RESETS, backend=backend)
        return jnp.sum(jnp.sin(ys[:, 3:]))  # only the steps from t = 3 on

    g_x, g_c = jax.grad(loss, argnums=(0, 1))(xs, carry)
    assert jnp.all(g_x[0, :3] == 0.0)  # row 0 restarts at t = 3
    assert jnp.all(g_x[2, :2] == 0.0) and jnp.all(g_c.h[2] == 0.0)  # row 2 at t = 0 and 2
    assert jnp.all(g_x[1, :3] != 0.0) and jnp.all(g_c.h[1] != 0.0)  # row 1 never


def test_fused_and_pallas_gradients_equal_scan():
    cell = rj.lstm(H)
    params, xs, carry = _setup(cell)

    def loss(p, x, c, backend):
        final, ys = rj.unroll(cell, p, x, c, resets=RESETS, lengths=LENGTHS, backend=backend)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(final.c**2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    want = grad(params, xs, carry, "scan")
    for backend in ("fused", "pallas"):
        chex.assert_trees_all_close(grad(params, xs, carry, backend), want, rtol=1e-5, atol=1e-5)


def test_backends_that_specialise_on_the_plain_cell_refuse_with_the_reason():
    problem = Problem(T, B, jnp.dtype(jnp.float32), "cpu")
    support = rj.kernels.BACKENDS["fused_cpu"].supports(resettable(rj.lstm(H)), problem)
    assert not support and "plain LSTM" in support.reason
    support = rj.kernels.BACKENDS["associative"].supports(resettable(rj.lstm(H)), problem)
    assert not support and "lstm+resets" in support.reason
    assert rj.kernels.BACKENDS["associative"].supports(resettable(rj.min_gru(H)), problem)


def test_bad_resets_are_refused_with_the_value():
    cell = rj.lstm(H)
    params, xs, _ = _setup(cell)
    with pytest.raises(ValueError, match="boolean"):
        rj.unroll(cell, params, xs, resets=jnp.zeros((B, T), jnp.int32))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        rj.unroll(cell, params, xs, resets=jnp.zeros((T, B), bool))
    _, ys = rj.unroll(cell, params, jnp.swapaxes(xs, 0, 1), resets=RESETS.T, time_major=True)
    chex.assert_shape(ys, (T, B, H))
