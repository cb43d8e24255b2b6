"""Cells linear in the carry (diagonal linear RNN, minGRU, minLSTM) and the associative
backend: sequential form == parallel form, forward and gradients, lengths and reverse."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_like

import rnnjax as rj
from rnnjax.kernels.associative import linear_recurrence, linear_recurrence_reference

B, T, D, H = 3, 9, 4, 5
LINEAR = {
    "diagonal_linear_rnn": rj.diagonal_linear_rnn,
    "min_gru": rj.min_gru,
    "min_lstm": rj.min_lstm,
}


def make(name, key):
    cell = LINEAR[name](H)
    k_p, k_r = jax.random.split(key)
    return cell, random_like(k_r, cell.init(k_p, D), scale=1.0)


@pytest.mark.parametrize("name", LINEAR)
def test_scan_equals_python_loop_over_step(name, rng):
    cell, params = make(name, rng)
    xs = jax.random.normal(rng, (B, T, D))
    carry = cell.initial_carry(params, (B,))
    final, ys = jax.jit(lambda p, x: rj.unroll(cell, p, x))(params, xs)
    want = []
    for t in range(T):
        carry, y = cell.step(params, carry, xs[:, t])
        want.append(y)
    chex.assert_trees_all_close(ys, jnp.stack(want, axis=1), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(final, carry, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", LINEAR)
def test_coefficients_define_the_step(name, rng):
    """recur(h, px) == a ⊙ h + b with (a, b) = structure.linear_coefficients(...)."""
    cell, params = make(name, rng)
    k_x, k_h = jax.random.split(rng)
    px = cell.project(params, jax.random.normal(k_x, (B, D)))
    h = jax.random.normal(k_h, (B, H))
    s = cell.structure
    a, b = s.linear_coefficients(s.unit_params(params), jnp.split(px, s.gates, axis=-1))
    chex.assert_trees_all_close(cell.recur(params, rj.RNNCarry(h), px)[1], a * h + b, rtol=1e-6)
    assert bool(jnp.all((a >= 0) & (a <= 1)))


@pytest.mark.parametrize("name", LINEAR)
@pytest.mark.parametrize("reverse", [False, True])
def test_associative_equals_scan(name, reverse, rng):
    cell, params = make(name, rng)
    k_x, k_c, k_l, k_g = jax.random.split(rng, 4)
    xs = jax.random.normal(k_x, (B, T, D))
    carry = random_like(k_c, cell.initial_carry(params, (B,)))
    lengths = jax.random.randint(k_l, (B,), 0, T + 1).at[0].set(T).at[-1].set(0)
    ct = random_like(k_g, jax.eval_shape(lambda: rj.unroll(cell, params, xs, carry)), 1.0)

    def run(backend, p, x, c):
        fn = lambda p, x, c: rj.unroll(  # noqa: E731
            cell, p, x, c, lengths=lengths, reverse=reverse, backend=backend
        )
        out, vjp = jax.vjp(fn, p, x, c)
        return out, vjp(ct)

    want, got = jax.jit(lambda *a: (run("scan", *a), run("associative", *a)))(params, xs, carry)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(w))))


def test_linear_recurrence_matches_reference_and_its_gradient(rng):
    k_a, k_b, k_g = jax.random.split(rng, 3)
    a = jax.random.uniform(k_a, (64, 2, 3))  # (T, ...)
    b = jax.random.normal(k_b, (64, 2, 3))
    g = jax.random.normal(k_g, (64, 2, 3))

    @jax.jit
    def both(a, b, g):
        (want, vjp_want), (got, vjp_got) = (jax.vjp(f, a, b) for f in (ref, linear_recurrence))
        return want, vjp_want(g), got, vjp_got(g)

    ref = linear_recurrence_reference
    want, d_want, got, d_got = both(a, b, g)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for x, y in zip(d_got, d_want, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_long_sequences_stay_finite_and_match_scan(rng):
    """T = 4096 with decays near 1: same values and gradients as scan; saturated gates
    (a_t rounds to 1.0 in float32) give no overflow and no NaN."""
    cell = rj.min_lstm(H)
    params = cell.init(rng, D)
    # f' = σ(k_f − k_i + log-sigmoid corrections) ≈ 0.9975 on average: a memory of ~400
    # steps, while 1 − a_t stays far above float32's resolution (a_t never rounds to 1.0)
    near_one = params._replace(b=params.b.at[:H].set(6.0).at[H : 2 * H].set(-6.0))
    saturated = params._replace(b=params.b.at[:H].set(30.0).at[H : 2 * H].set(-30.0))
    xs = jax.random.normal(rng, (2, 4096, D))
    loss = lambda p, backend: jnp.sum(rj.unroll(cell, p, xs, backend=backend)[1] ** 2)  # noqa: E731
    grad = jax.value_and_grad(loss)

    @jax.jit
    def run(near_one, saturated):
        s = cell.structure
        px = jnp.split(cell.project(near_one, xs), s.gates, axis=-1)
        a, _ = s.linear_coefficients(s.unit_params(near_one), px)
        ys = rj.unroll(cell, near_one, xs)[1]
        return (
            a,
            ys,
            grad(near_one, "associative"),
            grad(near_one, "scan"),
            grad(saturated, "associative"),
        )

    a, ys, (v_a, g_a), (v_s, g_s), (v_sat, g_sat) = run(near_one, saturated)
    assert float(jnp.max(a)) < 1.0 and float(jnp.mean(a)) > 0.99  # near 1, not rounded to it
    assert (
        float(jnp.abs(ys[:, 1000:]).mean()) > 1e-2
    )  # the outputs are not ~0: rtol means something
    np.testing.assert_allclose(v_a, v_s, rtol=1e-4)
    for x, y in zip(jax.tree.leaves(g_a), jax.tree.leaves(g_s), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-3 * float(jnp.max(jnp.abs(y))))
    assert np.isfinite(v_sat) and all(
        bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g_sat)
    )


def test_min_gru_and_min_lstm_follow_the_paper(rng):
    """One step written out from Feng et al. 2024, eqs. for minGRU and minLSTM."""
    x, h = jax.random.normal(rng, (D,)), jax.random.normal(rng, (H,))
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    cell = rj.min_gru(H)
    p = random_like(rng, cell.init(rng, D))
    k, ht = np.split(np.asarray(x @ p.U + p.b), 2)
    z = sig(k)
    np.testing.assert_allclose(cell.step(p, rj.RNNCarry(h), x)[1], (1 - z) * h + z * ht, 1e-5)
    cell = rj.min_lstm(H)
    p = random_like(rng, cell.init(rng, D))
    kf, ki, ht = np.split(np.asarray(x @ p.U + p.b), 3)
    f, i = sig(kf), sig(ki)
    want = f / (f + i) * h + i / (f + i) * ht
    np.testing.assert_allclose(cell.step(p, rj.RNNCarry(h), x)[1], want, rtol=1e-5)


def test_diagonal_decay_is_in_range_and_bad_ranges_raise(rng):
    params = rj.diagonal_linear_rnn(64, decay_min=0.5, decay_max=0.6).init(rng, D)
    a = jax.nn.sigmoid(params.nu)
    assert bool(jnp.all((a >= 0.5 - 1e-6) & (a <= 0.6 + 1e-6)))
    with pytest.raises(ValueError, match="decay_max"):
        rj.diagonal_linear_rnn(4, decay_min=0.5, decay_max=1.0)


def test_associative_rejects_nonlinear_cells_and_auto_picks_it():
    cell = rj.gru(H)
    with pytest.raises(ValueError, match="'gru' cell"):
        rj.unroll(cell, cell.init(jax.random.key(0), D), jnp.ones((B, T, D)), backend="associative")
    from rnnjax.kernels import choose_backend

    assert choose_backend(rj.min_lstm(H), B, T, "cpu")[0] == "associative"
