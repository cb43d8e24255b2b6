"""rnnjax.analysis: per-step Jacobians and the norms of their products (exact cases)."""

import zlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CELL_FACTORIES

import rnnjax as rj
from rnnjax import analysis
from rnnjax.analysis._core import carry_unflattener, flatten_carry

D = 3


def _random_setup(cell, key, B=2, T=6, scale=1.0):
    """Random params (weight matrices times ``scale``), inputs and initial carry."""
    k_p, k_x, k_c = jax.random.split(key, 3)
    params = cell.init(k_p, D)
    params = jax.tree.map(lambda a: a * scale if a.ndim == 2 else a, params)
    xs = jax.random.normal(k_x, (B, T, D))
    carry = cell.initial_carry(params, (B,))
    carry = jax.tree.map(lambda a: 0.5 * jax.random.normal(k_c, a.shape), carry)
    return params, xs, carry


def _reference(cell, params, xs, carry):
    """Per-step Jacobians and log-norms of ∂c_T/∂c_t and ∂c_t/∂c_0 (batched), by jacfwd of
    the explicitly unrolled map (a Python loop of ``cell.step``) with respect to a
    perturbation δ_t added to every carry: ∂c_s/∂δ_t = ∂c_s/∂c_t."""
    T = xs.shape[1]
    c0 = flatten_carry(carry)  # (B, N)
    unflatten = carry_unflattener(carry)

    def carries(deltas, c0, xs):  # one example: (T+1, N) -> c_0..c_T (T+1, N)
        c = c0 + deltas[0]
        out = [c]
        for t in range(T):
            new, _ = cell.step(params, unflatten(c), xs[t])
            c = flatten_carry(new) + deltas[t + 1]
            out.append(c)
        return jnp.stack(out)

    jac = jax.jit(jax.vmap(jax.jacfwd(carries), in_axes=(None, 0, 0)))
    full = np.asarray(jac(jnp.zeros((T + 1, c0.shape[-1])), c0, xs), np.float64)
    # full[b, s, :, t, :] = ∂c_s/∂c_t of example b
    steps = np.stack([full[:, t, :, t - 1, :] for t in range(1, T + 1)], axis=1)
    lognorm = lambda m: np.log(np.linalg.norm(m, 2, axis=(-2, -1)))  # noqa: E731
    back = np.stack([lognorm(full[:, T, :, t, :]) for t in range(T + 1)], axis=1)
    fwd = np.stack([lognorm(full[:, t, :, 0, :]) for t in range(T + 1)], axis=1)
    return steps, back, fwd  # (B, T, N, N), (B, T+1), (B, T+1)


@pytest.mark.parametrize("name", sorted(CELL_FACTORIES))
def test_jacobians_and_norms_equal_jacfwd_of_the_unrolled_map(name):
    cell = CELL_FACTORIES[name](3)
    # moderate scales: deep in saturation float32's tanh' = 1 − tanh² itself loses digits
    params, xs, carry = _random_setup(cell, jax.random.key(zlib.crc32(name.encode())))
    relu = getattr(cell.config, "activation", None) == "relu"
    if relu:  # keep the units active: no rank-deficient
        params = params._replace(b=params.b + 1.0)  # products, so κ below stays small
    jacs, out = jax.jit(
        lambda p, x, c: (
            analysis.carry_jacobians(cell, p, x, c),
            analysis.jacobian_norms(cell, p, x, c),
        )
    )(params, xs, carry)
    steps, back, fwd = _reference(cell, params, xs, carry)
    # float32: 1e-5 relative to the size of the Jacobian's entries
    np.testing.assert_allclose(jacs, steps, rtol=1e-5, atol=1e-5 * np.abs(steps).max())
    # a product computed in float32 is accurate to ~eps·T·κ relative (eps·T = 3.6e-7 here),
    # κ = Π‖J_k‖ / ‖Π J_k‖ (cancellation between factors): 1e-6·κ on the norm, i.e. on the
    # log-norm, with κ <= 100 checked, so the tolerance is at most 1e-4
    log_step = np.log(np.linalg.norm(steps, 2, axis=(-2, -1)))  # (B, T)
    zero = np.zeros_like(back[:, :1])
    log_prod_back = np.concatenate([np.cumsum(log_step[:, ::-1], 1)[:, ::-1], zero], 1)
    log_prod_fwd = np.concatenate([zero, np.cumsum(log_step, 1)], 1)
    for got, want, log_prod in (
        (out.log_backward, back, log_prod_back),
        (out.log_forward, fwd, log_prod_fwd),
    ):
        finite = np.isfinite(want)
        np.testing.assert_array_equal(np.isfinite(got), finite)  # exact zeros stay −inf
        kappa = np.exp(log_prod[finite] - want[finite])
        assert kappa.max() <= 100, f"ill-conditioned setup: κ = {kappa.max():.3g}"
        err = np.abs(np.asarray(got)[finite] - want[finite])
        assert np.all(err <= 1e-6 * kappa), (err.max(), (err / kappa).max())


LINEAR = rj.simple_rnn(6, activation="identity")
LINEAR_NORMS = {
    o: jax.jit(lambda p, x, o=o: analysis.jacobian_norms(LINEAR, p, x, ord=o)) for o in (2, "fro")
}


@pytest.mark.parametrize("rho", [0.5, 1.0, 1.5, 2.0])
def test_linear_rnn_norms_are_those_of_matrix_powers(rho):
    """c_t = c_{t-1} W + x_t U + b: ∂c_T/∂c_t = (Wᵀ)^{T-t}, ∂c_t/∂c_0 = (Wᵀ)^t, T = 200."""
    T = 200
    params = LINEAR.init(jax.random.key(1), D)
    W = rj.initializers.spectral_radius(rho)(jax.random.key(int(10 * rho)), (6, 6))
    params = params._replace(W=W)
    xs = jax.random.normal(jax.random.key(2), (T, D))
    W = np.asarray(W, np.float64)
    powers = [np.linalg.matrix_power(W.T, k) for k in range(T + 1)]
    for ord_ in (2, "fro"):
        out = LINEAR_NORMS[ord_](params, xs)
        back = np.log([np.linalg.norm(powers[T - t], ord_) for t in range(T + 1)])
        fwd = np.log([np.linalg.norm(powers[t], ord_) for t in range(T + 1)])
        # float32 products with exact power-of-two rescaling: 1e-5 relative on the norm, plus
        # the rounding of the float32 log itself (its ulp is 1.5e-5 near 138)
        for got, want in ((out.log_backward, back), (out.log_forward, fwd)):
            ulp = np.spacing(np.abs(want).astype(np.float32))
            assert np.all(np.abs(np.asarray(got) - want) <= 1e-5 + ulp)
    assert np.all(np.isfinite(out.log_backward))
    if rho in (0.5, 2.0):  # ‖∂c_T/∂c_0‖ itself lies outside float32's range [1.2e-38, 3.4e38]
        info = np.finfo(np.float32)
        assert not np.log(info.tiny) < back[0] < np.log(info.max)


def test_lanczos_matches_svd():
    """On the sigmoid RNN, whose step Jacobians have nearly equal singular values, with a
    Krylov space small enough (4 < N = 24) that the rounds must restart."""
    cell = rj.simple_rnn(24, activation="sigmoid")
    params, xs, carry = _random_setup(cell, jax.random.key(3), B=2, T=20, scale=2.0)
    tol = 1e-5
    fast, svd = jax.jit(
        lambda p, x, c: (
            analysis.jacobian_norms(
                cell, p, x, c, method="lanczos", tol=tol, krylov=4, max_restarts=1000
            ),
            analysis.jacobian_norms(cell, p, x, c, method="svd"),
        )
    )(params, xs, carry)
    # a Ritz value is a lower bound of σ_max; the residual test bounds its error by tol·σ;
    # float32 slack: 1e-6 relative on σ plus two ulps of the log itself
    for got, want in ((fast.log_backward, svd.log_backward), (fast.log_forward, svd.log_forward)):
        ulps = 1e-6 + 2 * np.spacing(np.abs(np.asarray(want)))
        assert np.all(got <= want + ulps)
        assert np.all(got >= want + np.log1p(-tol) - ulps)


@pytest.mark.parametrize(
    "cell",
    [
        rj.lstm(12),
        rj.lstm(12, peephole=True, coupled=True),
        rj.gru(12),
        rj.simple_rnn(12),
        rj.min_gru(12),
    ],
    ids=["lstm", "lstm_peephole_coupled", "gru", "simple_rnn", "min_gru"],
)
def test_closed_form_jacobian_equals_autodiff(cell):
    params, xs, carry = _random_setup(cell, jax.random.key(11), B=2, T=15, scale=1.5)
    params = jax.tree.map(  # peepholes non-zero, so that their Jacobian terms count
        lambda p: p + 0.3 * jax.random.normal(jax.random.key(12), p.shape) if p.ndim == 1 else p,
        params,
    )
    fast, ref = jax.jit(
        lambda p, x, c: tuple(
            analysis.jacobian_norms(cell, p, x, c, jacobian=j) for j in ("closed_form", "autodiff")
        )
    )(params, xs, carry)
    for got, want in zip(fast, ref, strict=True):  # float32: 1e-5 relative on the norms
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_closed_form_jacobian_needs_a_structured_cell():
    cell = rj.multiplicative_rnn(4, factors=3)
    params = cell.init(jax.random.key(0), D)
    xs = jnp.ones((2, 5, D))
    with pytest.raises(ValueError, match="closed-form"):
        analysis.jacobian_norms(cell, params, xs, jacobian="closed_form")
    with pytest.raises(ValueError, match="jacobian"):
        analysis.jacobian_norms(
            rj.lstm(4), rj.lstm(4).init(jax.random.key(0), D), xs, jacobian="numeric"
        )


TANH = rj.simple_rnn(16)
TANH_NORMS = jax.jit(lambda p, x: analysis.jacobian_norms(TANH, p, x))


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_tanh_rnn_norms_stay_below_the_pascanu_bound(scale):
    T = 60
    params = TANH.init(jax.random.key(4), D)
    W = jax.random.normal(jax.random.key(5), (16, 16)) * scale / np.sqrt(16)
    params = params._replace(W=W)
    xs = jax.random.normal(jax.random.key(6), (4, T, D))
    eta = analysis.pascanu_bound(TANH, params).eta
    out = TANH_NORMS(params, xs)
    bound = (T - np.arange(T + 1)) * np.log(eta)  # log η^{T-t}
    assert np.all(np.asarray(out.log_backward) <= bound + 1e-5)
    assert np.all(np.asarray(out.log_forward) <= bound[::-1] + 1e-5)


def _saturated_lstm(H, forget_bias):
    cell = rj.lstm(H)
    params = cell.init(jax.random.key(6), D)
    b = np.zeros(4 * H, np.float32)
    b[:H], b[H : 2 * H], b[3 * H :] = -30.0, forget_bias, -30.0  # i closed, f, o closed
    return cell, params._replace(W=0.1 * params.W, U=0.1 * params.U, b=jnp.asarray(b))


def test_lstm_with_open_forget_gate_keeps_gradient_norm_one_over_500_steps():
    """The lecture's "identity has gradient 1": f = 1, i = 0 make c_t = c_{t-1} exactly."""
    cell, params = _saturated_lstm(8, forget_bias=30.0)
    norms = jax.jit(lambda p, x: analysis.jacobian_norms(cell, p, x))
    xs = jax.random.normal(jax.random.key(7), (2, 500, D))
    out = norms(params, xs)
    # σ(30) is 1 in float32, or 1 − 2⁻²⁴ where XLA evaluates it without its fast tanh:
    # at most that rounding per step: the norm within 500 · 2⁻²³ ≈ 6e-5 of 1, its log within
    # −log(1 − 500 · 2⁻²³) (the quadratic term, 2e-9, matters at float32's resolution)
    atol = -np.log1p(-500 * 2.0**-23)
    np.testing.assert_allclose(out.log_backward, 0.0, atol=atol)
    np.testing.assert_allclose(out.log_forward, 0.0, atol=atol)
    # with the forget gate half open (f_t = σ(x_t U_f), o = 0 so h = 0) the same path is
    # Π_t diag(f_t): its norm max_j Π_t f_t[j] ≈ 2^-500 lies far below float32's range
    _, params = _saturated_lstm(8, forget_bias=0.0)
    out = norms(params, xs)
    H = 8
    z_f = np.asarray(cell.project(params, xs), np.float64)[..., H : 2 * H]  # (B, T, H)
    log_f = -np.logaddexp(0.0, -z_f)  # log σ(z_f)
    want = np.max(np.sum(log_f, axis=1), axis=-1)  # (B,)
    assert np.all(want < np.log(np.finfo(np.float32).tiny))
    np.testing.assert_allclose(out.log_backward[:, 0], want, rtol=1e-6)
    np.testing.assert_allclose(out.log_forward[:, -1], want, rtol=1e-6)


def test_batch_mean_is_the_log_of_the_mean_and_unbatched_matches():
    cell = rj.gru(5)
    params, xs, carry = _random_setup(cell, jax.random.key(8), B=3, T=12)
    carry_1 = jax.tree.map(lambda a: a[1], carry)
    out, one, jacs = jax.jit(
        lambda p, x, c, x1, c1: (
            analysis.jacobian_norms(cell, p, x, c, forward=False),
            analysis.jacobian_norms(cell, p, x1, c1, forward=False),
            analysis.carry_jacobians(cell, p, x1, c1),
        )
    )(params, xs, carry, xs[1], carry_1)
    chex.assert_shape(out.log_backward, (3, 13))
    chex.assert_shape(out.log_backward_mean, (13,))
    assert out.log_forward is None and out.log_forward_mean is None
    mean = np.log(np.mean(np.exp(np.asarray(out.log_backward, np.float64)), axis=0))
    np.testing.assert_allclose(out.log_backward_mean, mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(one.log_backward, out.log_backward[1], atol=1e-6)
    np.testing.assert_allclose(one.log_backward_mean, one.log_backward, atol=1e-6)
    chex.assert_shape(jacs, (12, 5, 5))


def test_jit_does_not_retrace_for_new_values():
    cell = rj.lstm(4)
    params, xs, carry = _random_setup(cell, jax.random.key(9))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def norms(p, x, c):
        return analysis.jacobian_norms(cell, p, x, c)

    norms(params, xs, carry)
    norms(jax.tree.map(lambda a: a + 0.1, params), xs + 1.0, carry)


def test_bad_inputs_raise_value_errors():
    cell = rj.lstm(4)
    params = cell.init(jax.random.key(0), D)
    good = jnp.ones((2, 5, D))
    with pytest.raises(ValueError, match="T=0"):
        analysis.jacobian_norms(cell, params, jnp.ones((2, 0, D)))
    with pytest.raises(ValueError, match="features"):
        analysis.carry_jacobians(cell, params, jnp.ones((2, 5, D + 1)))
    with pytest.raises(ValueError, match="carry"):
        analysis.jacobian_norms(cell, params, good, rj.RNNCarry(jnp.zeros((2, 4))))
    with pytest.raises(ValueError, match="carry leaf has shape"):
        analysis.jacobian_norms(cell, params, good, cell.initial_carry(params, (3,)))
    with pytest.raises(ValueError, match="ord"):
        analysis.jacobian_norms(cell, params, good, ord=1)
    with pytest.raises(ValueError, match="method"):
        analysis.jacobian_norms(cell, params, good, method="eig")
    with pytest.raises(ValueError, match="rank"):
        analysis.jacobian_norms(cell, params, jnp.ones((5,)))


@pytest.mark.parametrize("exponent", [-120, -60, 0, 60, 120])
def test_normalise_scales_by_an_exact_power_of_two(exponent):
    """2^-e, e the exponent of a norm, brings that norm into [0.5, 1) and is M · 2^-e bit for
    bit (numpy's ldexp) when applied factor by factor, for entries near float32's smallest
    normal numbers (XLA:CPU flushes subnormals) to near its largest."""
    from rnnjax.analysis.norms import _exponent, _power_of_two

    m = np.random.default_rng(zlib.crc32(b"normalise")).standard_normal((7, 5)).astype(np.float32)
    M = np.ldexp(m, exponent).astype(np.float32)
    norm = np.float32(np.ldexp(np.linalg.norm(m.astype(np.float64)), exponent))

    def normalise(M, norm):
        e = _exponent(norm)
        first, second = _power_of_two(e, M.dtype)
        return M * first * second, norm * first * second, e

    got, scaled_norm, e = jax.jit(normalise)(jnp.asarray(M), norm)
    np.testing.assert_array_equal(np.asarray(got), np.ldexp(M, -int(e)).astype(np.float32))
    assert 0.5 <= float(scaled_norm) < 1.0
