"""σ_max by restarted Lanczos on MᵀM: the readable reference (`norms.top_singular_value`) and
its native twin (``lanczos_cpu.cc``), each against exact SVDs and against each other."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax as rj
from rnnjax import analysis
from rnnjax.analysis import _lanczos_cpu, norms

needs_native = pytest.mark.skipif(
    not _lanczos_cpu.available(jnp.float32), reason="lanczos_cpu is built with g++"
)
IMPLEMENTATIONS = {
    "reference": norms.top_singular_value,
    "native": pytest.param(_lanczos_cpu.top_singular_value, marks=needs_native),
}
N = 40
TOL = 1e-5


def _matrix(kind: str) -> np.ndarray:
    """(N, N) float32 with a known spectrum: random singular vectors, chosen singular values."""
    rng = np.random.default_rng(zlib.crc32(kind.encode()))
    U, _ = np.linalg.qr(rng.standard_normal((N, N)))
    V, _ = np.linalg.qr(rng.standard_normal((N, N)))
    s = {
        "clustered": 1.0 - 0.002 * np.arange(N),  # nearly orthogonal: Lanczos must restart
        "decaying": 0.7 ** np.arange(N),
        "rank_two": np.r_[3.0, 2.0, np.zeros(N - 2)],
    }[kind]
    return ((U * s) @ V.T).astype(np.float32)


def _unit(seed: int) -> jnp.ndarray:
    v = np.random.default_rng(seed).standard_normal(N).astype(np.float32)
    return jnp.asarray(v / np.linalg.norm(v))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS.values(), ids=IMPLEMENTATIONS.keys())
@pytest.mark.parametrize("kind", ["clustered", "decaying", "rank_two"])
@pytest.mark.parametrize("right", [False, True])
def test_top_singular_value_is_within_the_residual_bound_of_the_svd(impl, kind, right):
    M = _matrix(kind)
    want = np.linalg.svd(M.astype(np.float64), compute_uv=False)[0]
    # a Krylov space of 4 < N: the clustered spectrum needs many restarts
    fn = jax.jit(lambda M, u: impl(M, u, krylov=4, tol=TOL, max_restarts=2000, right=right))
    sigma, u = fn(jnp.asarray(M), _unit(1))
    # a Ritz value never exceeds σ_max; the residual test bounds its error by tol·σ; float32
    # slack: 1e-6 relative
    assert want * (1 - TOL - 1e-6) <= float(sigma) <= want * (1 + 1e-6)
    np.testing.assert_allclose(np.linalg.norm(u), 1.0, rtol=1e-6)
    # u is the top singular vector on its side: ‖Mᵀu‖ (left) or ‖M u‖ (right) is σ_max
    image = np.asarray(u) @ M if not right else M @ np.asarray(u)
    np.testing.assert_allclose(np.linalg.norm(image), want, rtol=1e-3)


@needs_native
@pytest.mark.parametrize("right", [False, True])
def test_native_twin_equals_the_reference_and_maps_over_a_batch(right):
    """Same algorithm, same steps: the same σ and vector up to float32 rounding, here on a
    batch of three (the native call loops the leading axis, also under jax.vmap)."""
    Ms = jnp.stack([jnp.asarray(_matrix(k)) for k in ("clustered", "decaying", "rank_two")])
    us = jnp.stack([_unit(s) for s in (2, 3, 4)])
    options = dict(krylov=6, tol=TOL, max_restarts=50, right=right)
    ref = jax.jit(jax.vmap(lambda M, u: norms.top_singular_value(M, u, **options)))(Ms, us)
    loop = jax.jit(lambda M, u: _lanczos_cpu.top_singular_value(M, u, **options))(Ms, us)
    mapped = jax.jit(jax.vmap(lambda M, u: _lanczos_cpu.top_singular_value(M, u, **options)))
    for got in (loop, mapped(Ms, us)):
        np.testing.assert_allclose(got[0], ref[0], rtol=2e-6)
        # the vectors up to sign (the rank-two matrix's top vector is unique too)
        signs = np.sign(np.sum(np.asarray(got[1]) * np.asarray(ref[1]), axis=-1, keepdims=True))
        np.testing.assert_allclose(np.asarray(got[1]) * signs, ref[1], atol=2e-3)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS.values(), ids=IMPLEMENTATIONS.keys())
def test_zero_matrix_has_norm_zero_and_keeps_a_unit_vector(impl):
    for right in (False, True):
        sigma, u = impl(jnp.zeros((N, N)), _unit(5), krylov=8, tol=TOL, max_restarts=3, right=right)
        assert float(sigma) == 0.0
        np.testing.assert_allclose(np.linalg.norm(u), 1.0, rtol=1e-6)


@pytest.mark.parametrize("native", [pytest.param(True, marks=needs_native), False])
@pytest.mark.parametrize("forward", [True, False])
def test_lanczos_norms_match_svd_norms(native, forward, monkeypatch):
    """jacobian_norms with Lanczos rounds (native or XLA) against exact SVDs, with each
    example's two views side by side (forward) and the backward view alone."""
    monkeypatch.setattr(_lanczos_cpu, "available", lambda dtype: native)
    cell = rj.simple_rnn(24, activation="sigmoid")
    params = cell.init(jax.random.key(3), 3)
    params = params._replace(W=2.0 * params.W)
    xs = jax.random.normal(jax.random.key(4), (3, 15, 3))
    fast, svd = (
        jax.jit(lambda p, x, m=m: analysis.jacobian_norms(cell, p, x, forward=forward, method=m))(
            params, xs
        )
        for m in ("lanczos", "svd")
    )
    views = [(fast.log_backward, svd.log_backward)]
    if forward:
        views.append((fast.log_forward, svd.log_forward))
    for got, want in views:
        ulps = 1e-6 + 2 * np.spacing(np.abs(np.asarray(want)))
        assert np.all(got <= want + ulps)
        assert np.all(got >= want + np.log1p(-1e-5) - ulps)
