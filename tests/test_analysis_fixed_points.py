"""rnnjax.analysis.fixed_points against maps whose fixed points are known exactly."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax as rj
from rnnjax import analysis


def _with(cell, key, D, **fields):
    params = cell.init(jax.random.key(key), D)
    return params._replace(**{k: jnp.asarray(v, jnp.float32) for k, v in fields.items()})


def _root(f, lo, hi):
    """Bisection (the test's own solver): f(lo) and f(hi) of opposite signs."""
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.sign(f(mid)) == np.sign(f(lo)) else (lo, mid)
    return 0.5 * (lo + hi)


@pytest.mark.parametrize("eigs", [(0.5, -0.3, 0.8), (0.5, 1.5, -0.2)], ids=["stable", "saddle"])
def test_linear_rnn_has_the_closed_form_fixed_point(eigs):
    """c = x U + c W + b  ⇒  c* = (x U + b)(I − W)⁻¹, J = Wᵀ: eig(J) = eig(W)."""
    H, D = 3, 2
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(H, H)))
    W = Q @ np.diag(eigs) @ np.linalg.inv(Q)
    cell = rj.simple_rnn(H, activation="identity")
    params = _with(cell, 1, D, W=W, b=rng.normal(size=H))
    x = np.array([0.3, -1.0])
    want = (x @ np.asarray(params.U) + np.asarray(params.b)) @ np.linalg.inv(np.eye(H) - W)
    starts = jnp.asarray(rng.normal(size=(16, H)) * 3)
    fps = analysis.fixed_points(cell, params, starts, x, steps=3000, learning_rate=0.05)
    assert len(fps) == 1 and fps.counts[0] == 16 and fps.is_fixed[0]
    np.testing.assert_allclose(fps.points[0], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.sort(np.abs(fps.eigenvalues[0])), np.sort(np.abs(eigs)), 1e-4)
    unstable = sum(abs(e) > 1 for e in eigs)
    assert fps.kind[0] == ("stable" if unstable == 0 else "saddle")
    assert fps.unstable_dims[0] == unstable


def test_decoupled_tanh_units_have_nine_fixed_points():
    """c_i = tanh(w c_i), w = 2, two units: c_i ∈ {−h*, 0, h*} with h* = tanh(w h*).

    J = diag(w (1 − c_i²)): λ = w > 1 at 0 and λ = w (1 − h*²) < 1 at ±h*, so the 3² points
    are 4 stable (both ±h*), 4 saddles (one 0) and 1 unstable (the origin).
    """
    w = 2.0
    h_star = _root(lambda h: math.tanh(w * h) - h, 0.5, 1.0)
    cell = rj.simple_rnn(2)
    params = _with(cell, 2, 1, W=w * np.eye(2), U=np.zeros((1, 2)), b=np.zeros(2))
    grid = np.array([-1.2, -0.6, -0.15, 0.15, 0.6, 1.2])
    starts = jnp.asarray([[a, b] for a in grid for b in grid])  # 36 starts around all nine
    fps = analysis.fixed_points(cell, params, starts)
    assert len(fps) == 9 and fps.is_fixed.all()
    found = {tuple(np.round(p / h_star).astype(int)) for p in fps.points}
    assert found == set(itertools.product((-1, 0, 1), repeat=2))
    np.testing.assert_allclose(np.abs(fps.points[np.abs(fps.points) > 0.1]), h_star, atol=1e-5)
    for point, kind, lam, dims in zip(
        fps.points, fps.kind, fps.eigenvalues, fps.unstable_dims, strict=True
    ):
        zeros = int(np.sum(np.abs(point) < 0.1))
        assert kind == ("stable", "saddle", "unstable")[zeros]
        assert dims == zeros
        want = sorted([w if abs(c) < 0.1 else w * (1 - h_star**2) for c in point], reverse=True)
        np.testing.assert_allclose(np.abs(lam), want, rtol=1e-4)


def test_a_ghost_of_a_saddle_node_is_a_slow_point():
    """c = tanh(2c + b), b just past the saddle-node b_c = atanh(−1/√2) + √2: the negative
    stable point and the saddle have merged and vanished; q keeps a small positive minimum
    there (a slow point), beside the one remaining fixed point."""
    w, b_c = 2.0, math.atanh(-1 / math.sqrt(2)) + math.sqrt(2)
    b = b_c + 0.02
    cell = rj.simple_rnn(1)
    params = _with(cell, 3, 1, W=[[w]], U=[[0.0]], b=[b])
    grid = np.linspace(-1.0, -0.3, 200_001)  # the test's own search for q's local minimum
    q_grid = 0.5 * (np.tanh(w * grid + b) - grid) ** 2
    ghost = grid[np.argmin(q_grid)]
    fixed = _root(lambda h: math.tanh(w * h + b) - h, 0.5, 1.0)
    starts = jnp.linspace(-1.0, 1.0, 21)[:, None]
    fps = analysis.fixed_points(cell, params, starts, steps=4000, slow_tol=1e-3)
    assert len(fps) == 2
    assert fps.is_fixed[0] and not fps.is_fixed[1]
    np.testing.assert_allclose(fps.points[0, 0], fixed, atol=1e-5)
    np.testing.assert_allclose(fps.points[1, 0], ghost, atol=2e-3)
    np.testing.assert_allclose(fps.q[1], q_grid.min(), rtol=0.05)
    assert fps.kind[0] == "stable"


def test_lstm_fixed_points_are_fixed_in_h_and_c():
    """On the LSTM's flat [h, c] carry: F(c*) = c* in both halves, found from visited states."""
    H, D = 4, 3
    cell = rj.lstm(H)
    params = cell.init(jax.random.key(4), D)
    xs = jax.random.normal(jax.random.key(5), (4, 20, D))
    starts = analysis.fixed_point_starts(cell, params, xs, n=32, key=jax.random.key(6), noise=0.1)
    assert starts.shape == (32, 2 * H)
    x = jnp.asarray([0.5, -0.5, 0.0])
    fps = analysis.fixed_points(cell, params, starts, x)
    assert len(fps) >= 1 and fps.is_fixed[0]
    point = fps.points[0]
    carry, _ = cell.step(params, rj.LSTMCarry(*jnp.split(jnp.asarray(point), 2)), x)
    np.testing.assert_allclose(jnp.concatenate([carry.h, carry.c]), point, atol=1e-5)


def test_fixed_points_validates_its_arguments():
    cell = rj.simple_rnn(3)
    params = cell.init(jax.random.key(7), 2)
    with pytest.raises(ValueError, match="starts must be"):
        analysis.fixed_points(cell, params, jnp.zeros((4, 5)))
    with pytest.raises(ValueError, match="x must be"):
        analysis.fixed_points(cell, params, jnp.zeros((4, 3)), x=jnp.zeros(5))
    with pytest.raises(ValueError, match="fixed_tol"):
        analysis.fixed_points(cell, params, jnp.zeros((4, 3)), fixed_tol=1.0, slow_tol=0.1)
    assert analysis.fixed_points.__module__ == "rnnjax.analysis.fixed_points"
