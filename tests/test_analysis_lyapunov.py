"""rnnjax.analysis: Lyapunov exponents (QR method) and Pascanu's gradient cliff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax as rj
from rnnjax import analysis


def test_constant_jacobian_gives_log_abs_eigenvalues():
    """Linear RNN held at its fixed point c = 0 (x = 0, b = 0): every J_t = Wᵀ."""
    N, T = 5, 2000
    cell = rj.simple_rnn(N, activation="identity")
    params = cell.init(jax.random.key(0), 2)
    W = jax.random.normal(jax.random.key(1), (N, N)) / np.sqrt(N)
    params = params._replace(W=W, b=jnp.zeros(N))
    lam = jax.jit(lambda p, x: analysis.lyapunov_spectrum(cell, p, x, transient=200))(
        params, jnp.zeros((T, 2))
    )
    want = np.sort(np.log(np.abs(np.linalg.eigvals(np.asarray(W, np.float64)))))[::-1]
    # the QR method converges like O(1/(T − transient)): 2e-3 at T − transient = 1800
    np.testing.assert_allclose(lam, want, atol=2e-3)


def test_sum_of_exponents_is_mean_log_abs_det():
    """Σ_i λ_i = mean over the averaged steps of log|det J_t|, exactly (k = N)."""
    cell = rj.lstm(3)
    params = cell.init(jax.random.key(2), 2)
    xs = jax.random.normal(jax.random.key(3), (2, 60, 2))
    lam, jacs = jax.jit(
        lambda p, x: (
            analysis.lyapunov_spectrum(cell, p, x, transient=10),
            analysis.carry_jacobians(cell, p, x),
        )
    )(params, xs)
    _, logdet = np.linalg.slogdet(np.asarray(jacs, np.float64))  # (B, T)
    np.testing.assert_allclose(np.sum(lam, axis=-1), logdet[:, 10:].mean(axis=-1), atol=1e-5)
    assert np.all(np.diff(np.asarray(lam), axis=-1) <= 0)  # sorted, largest first


N_MAP = 200
TANH_MAP = rj.simple_rnn(N_MAP)


@jax.jit
def _lambda_max(W, c0):
    """λ_1 of the autonomous map c ← tanh(c W) (conjugate to x ← J tanh(x) with J = Wᵀ)."""
    params = TANH_MAP.init(jax.random.key(0), 1)._replace(W=W, b=jnp.zeros(N_MAP))
    xs = jnp.zeros((2000, 1))
    return analysis.lyapunov_spectrum(TANH_MAP, params, xs, rj.RNNCarry(c0), k=1, transient=1000)[0]


def test_random_tanh_map_edge_of_chaos():
    """J_ij ~ N(0, g²/N): for g < 1 the origin attracts and λ_max = log ρ(J) ≈ log g; the
    largest exponent crosses 0 at g ≈ 1 and is positive (chaos) beyond. Seeded; N = 200."""
    W0 = jax.random.normal(jax.random.key(1), (N_MAP, N_MAP)) / np.sqrt(N_MAP)
    c0 = jax.random.normal(jax.random.key(2), (N_MAP,))
    gains = [0.5, 0.8, 0.9, 0.95, 1.0, 1.05, 1.5, 2.0]
    lam = {g: float(_lambda_max(g * W0, c0)) for g in gains}
    rho0 = np.max(np.abs(np.linalg.eigvals(np.asarray(W0, np.float64))))
    for g in (0.5, 0.8, 0.9):
        np.testing.assert_allclose(lam[g], np.log(g * rho0), atol=1e-4)  # exact at c = 0
        assert abs(lam[g] - np.log(g)) < 0.05  # finite N: ρ(W0) = 1 + O(N^-1/2)
    # the crossing: the first gain with λ_max >= −1e-3 lies in [0.95, 1.05]
    crossing = next(g for g in gains if lam[g] >= -1e-3)
    assert 0.95 <= crossing <= 1.05, lam
    assert lam[1.5] > 0.01 and lam[2.0] > lam[1.5], lam


def test_lyapunov_bad_inputs():
    cell = rj.gru(3)
    params = cell.init(jax.random.key(0), 2)
    xs = jnp.ones((10, 2))
    with pytest.raises(ValueError, match="k must be in"):
        analysis.lyapunov_spectrum(cell, params, xs, k=4)
    with pytest.raises(ValueError, match="k must be in"):
        analysis.lyapunov_spectrum(cell, params, xs, k=0)
    with pytest.raises(ValueError, match="transient"):
        analysis.lyapunov_spectrum(cell, params, xs, k=2, transient=10)
    with pytest.raises(ValueError, match="T=0"):
        analysis.lyapunov_spectrum(cell, params, jnp.ones((0, 2)), k=2)


def _toy_float64(w, b, T=50, x0=0.5, target=0.7):
    """E and dE/dw, dE/db of x_t = w σ(x_{t-1}) + b by forward-mode recursion in float64."""
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    x, dw, db = x0, 0.0, 0.0
    for _ in range(T):
        s = sig(x)
        dw, db = s + w * s * (1 - s) * dw, 1.0 + w * s * (1 - s) * db
        x = w * s + b
    s = sig(x)
    e = (s - target) ** 2
    de = 2 * (s - target) * s * (1 - s)
    return e, de * dw, de * db, x


def test_cliff_matches_the_recursion_and_shows_the_jump():
    ws = jnp.array([1.0, 3.0, 5.0])
    bs = jnp.linspace(-5.0, 0.0, 2001)
    out = jax.jit(analysis.cliff)(ws, bs)
    for i, j in [(0, 0), (1, 700), (2, 100), (2, 1900)]:  # away from the cliff
        e, gw, gb, x = _toy_float64(float(ws[i]), float(bs[j]))
        np.testing.assert_allclose(
            [out.loss[i, j], out.grad_w[i, j], out.grad_b[i, j], out.final_state[i, j]],
            [e, gw, gb, x],
            rtol=1e-4,
        )
    # w = 5: x_50 jumps between the two branches of the bifurcation, E steps down and the
    # gradient spikes on the wall (2001 points of b over [-5, 0])
    x, gb = np.asarray(out.final_state[2]), np.abs(np.asarray(out.grad_b[2]))
    jump = int(np.argmax(np.abs(np.diff(x))))
    assert abs(x[jump + 1] - x[jump]) > 1.0
    assert x[: jump + 1].max() < 0 < x[jump + 1 :].min()
    assert abs(int(np.argmax(gb)) - jump) <= 1
    assert gb.max() > 100 * np.median(gb)
    assert np.all(np.abs(np.asarray(out.grad_b[0])) < 1.0)  # w = 1: one fixed point, no cliff
    fig = analysis.plot_cliff(out)
    assert len(fig.axes) >= 3


def test_cliff_bad_inputs():
    with pytest.raises(ValueError, match="T must be"):
        analysis.cliff(1.0, 0.0, T=0)
    with pytest.raises(ValueError, match="1-D grid"):
        analysis.cliff(jnp.ones((2, 2)), 0.0)
