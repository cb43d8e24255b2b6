"""Norms of the BPTT products ∂c_T/∂c_t and ∂c_t/∂c_0, accumulated once over time in log space.

The backward view asks how much of a change of c_t survives until the end,

.. math::  P_t = \\frac{\\partial c_T}{\\partial c_t} = J_T J_{T-1} \\cdots J_{t+1},
           \\qquad P_T = I, \\quad P_{t-1} = P_t J_t,

and the forward view how far the initial carry still matters,

.. math::  Q_t = \\frac{\\partial c_t}{\\partial c_0} = J_t \\cdots J_1,
           \\qquad Q_0 = I, \\quad Q_t = J_t Q_{t-1}.

Both are accumulated in **one pass each** (a reverse ``lax.scan`` for P, the forward scan that
also computes the trajectory for Q): T products of an N×N matrix by one Jacobian, where the
naïve way — one product chain per t — would cost T(T−1)/2. With autodiff J_t is never
formed: the rows of P_t are pushed through the step's VJP and the columns of Q_{t-1} through
its JVP; for a structured cell its closed-form J_t (`rnnjax.analysis._structured_jacobian`) halves
the multiply-adds.

Norms of such products leave float32's range quickly (0.5^200 ≈ 6e-61, 1.5^200 ≈ 2e35), so
the matrix is kept normalised: every step takes P̂ ← P̂ (2^{-e} J) with the integer e the
exponent of P̂'s largest entry (so that 2^{-e} P̂ has its largest entry in [0.5, 1)), and
log ‖P_t‖ = (Σ e) log 2 + log ‖P̂_t‖. The power of two multiplies J's entries where J is formed,
so it costs no pass over the N×N matrix. Scaling by powers of two is exact and the exponents
add exactly, so the only rounding is that of the products themselves; no intermediate leaves
float32's range unless a single step's Jacobian does.

The spectral norm σ_max(P̂_t) is found by restarted Golub–Kahan–Lanczos warm-started from
the previous step's top singular vector (P_{t-1} = P_t J_t keeps the left side of P_t), and
stops on a residual test that bounds its error (`top_singular_value`). ``method="svd"``
computes σ_max exactly with an SVD at every step instead: the readable reference, and the
default for N <= 64 — for N = 512 one SVD on the CPU costs ~20 times the N×N product.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.analysis import _structured_jacobian as closed_form
from rnnjax.analysis._core import log_mean_exp, prepare, step_fn, unbatch
from rnnjax.analysis._structured_jacobian import StepJacobian
from rnnjax.cells.base import Array, Cell

ORDS = (2, "fro")
LN2 = float(np.log(2.0))
METHODS = ("auto", "lanczos", "svd")
JACOBIANS = ("auto", "autodiff", "closed_form")
SVD_MAX_N = 64  # method="auto" takes the exact SVD up to this carry size


class JacobianNorms(NamedTuple):
    """Log-norms of the BPTT products, indexed by t = 0..T (natural logarithms).

    Attributes:
        log_backward: log ‖∂c_T/∂c_t‖ at index t, (B, T+1) or (T+1,); index T is log ‖I‖
            (0 for the spectral norm, log √N for Frobenius).
        log_forward: log ‖∂c_t/∂c_0‖ at index t, same shape; index 0 is log ‖I‖. None when
            called with ``forward=False``.
        log_backward_mean: log of the batch mean of ‖∂c_T/∂c_t‖, (T+1,) (log-sum-exp, so
            it never overflows); equals log_backward for unbatched inputs.
        log_forward_mean: the same for the forward view (None with ``forward=False``).
    """

    log_backward: Array
    log_forward: Array | None
    log_backward_mean: Array
    log_forward_mean: Array | None


def _check_options(ord: Any, method: str) -> None:
    if isinstance(ord, bool) or ord not in ORDS:
        raise ValueError(f"ord must be 2 (spectral) or 'fro' (Frobenius), got {ord=}")
    if method not in METHODS:
        raise ValueError(f"unknown {method=}; choose one of {METHODS}")


def _bidiagonalise(M: Array, u: Array, k: int) -> tuple[Array, Array, Array]:
    """k steps of Golub–Kahan–Lanczos bidiagonalisation of M from the unit vector u.

    Builds orthonormal U = [u_0..u_k] ((k+1, N), rows) and V = [v_0..v_{k-1}] ((k, N)) with
    M vⱼ = αⱼ uⱼ + βⱼ uⱼ₊₁, i.e. M Vᵀ = Uᵀ B for the (k+1, k) lower-bidiagonal B. Both bases
    are fully re-orthogonalised (twice), which costs O(kN) per step against the O(N²)
    matrix-vector products.
    """
    N = M.shape[0]
    U = jnp.zeros((k + 1, N), M.dtype).at[0].set(u)  # (k+1, N)
    V = jnp.zeros((k, N), M.dtype)  # (k, N)

    def orthonormal(x, basis):
        x = x - (basis @ x) @ basis
        x = x - (basis @ x) @ basis
        n = jnp.linalg.norm(x)
        return x / jnp.where(n > 0, n, 1.0), n

    def body(j, state):
        U, V, alpha, beta = state
        v, a = orthonormal(U[j] @ M, V)  # Mᵀuⱼ minus its part in span(V)
        u, b = orthonormal(M @ v, U)  # M vⱼ minus its part in span(U)
        return U.at[j + 1].set(u), V.at[j].set(v), alpha.at[j].set(a), beta.at[j].set(b)

    zeros = jnp.zeros((k,), M.dtype)
    U, V, alpha, beta = jax.lax.fori_loop(0, k, body, (U, V, zeros, zeros))
    idx = jnp.arange(k)
    B = jnp.zeros((k + 1, k), M.dtype).at[idx, idx].set(alpha).at[idx + 1, idx].set(beta)
    return U, V, B


def top_singular_value(
    M: Array, u: Array, *, krylov: int, tol: float, max_restarts: int
) -> tuple[Array, Array]:
    """σ_max(M) by restarted Golub–Kahan–Lanczos, warm-started at the unit vector u.

    Each round bidiagonalises M in a Krylov space of dimension ``krylov`` started at u, takes
    the top singular triplet (σ, y, z) of the small bidiagonal matrix (Ritz value σ, vectors
    u = Uᵀy, v = Vᵀz, so that M v = σ u), and restarts from u. It stops when the residual
    r = ‖Mᵀu − σ v‖ ≤ tol·σ: then σ lies within r of a singular value of M (and, the space
    being grown from the previous step's top vector, of the top one). If the warm start is
    already that accurate (v = Mᵀu/‖Mᵀu‖, r = ‖M v − σ u‖) no round runs. Lanczos needs about
    √(1/gap) products where power iteration needs 1/gap, which matters for the nearly
    orthogonal Jacobians of well-conditioned cells (clustered singular values).

    Args:
        M: (N, N).
        u: (N,) unit start vector (the previous step's left singular vector).
        krylov: Krylov dimension per round (capped at N).
        tol: relative residual tolerance.
        max_restarts: most rounds.

    Returns:
        (σ, u): the estimate () and the left singular vector estimate (N,). σ = 0 for M = 0.
    """
    k = min(krylov, M.shape[0])

    def round_(state):
        i, u, _, _ = state
        U, V, B = _bidiagonalise(M, u, k)
        y, sigma, zt = jnp.linalg.svd(B, full_matrices=False)  # (k+1, k), (k,), (k, k)
        u_new, v_new = y[:, 0] @ U, zt[0] @ V  # (N,), (N,)
        n_u, n_v = jnp.linalg.norm(u_new), jnp.linalg.norm(v_new)
        u_new = jnp.where(n_u > 0, u_new / jnp.where(n_u > 0, n_u, 1.0), u)
        v_new = v_new / jnp.where(n_v > 0, n_v, 1.0)
        residual = jnp.linalg.norm(u_new @ M - sigma[0] * v_new)
        return i + 1, u_new, sigma[0], residual

    def cond(state):
        i, _, sigma, residual = state
        return (i < max_restarts) & (residual > tol * sigma)

    # round 0: the warm start itself, σ = ‖Mᵀu‖, v = Mᵀu/σ, r = ‖M v − σ u‖
    w = u @ M  # (N,)
    sigma0 = jnp.linalg.norm(w)
    v0 = w / jnp.where(sigma0 > 0, sigma0, 1.0)
    residual0 = jnp.where(sigma0 > 0, jnp.linalg.norm(M @ v0 - sigma0 * u), 0.0)
    start = (jnp.zeros((), jnp.int32), u, sigma0, residual0)
    _, u, sigma, _ = jax.lax.while_loop(cond, round_, start)
    return sigma, u


def _max_exponent(M: Array) -> Array:
    """The integer e with max |M_ij| = m·2^e, m in [0.5, 1) (0 for M = 0).

    The largest entry, not the Frobenius norm: a float32 sum of squares underflows to 0 for
    ‖M‖ below ~1e-19 and overflows above ~1e19, the maximum never does.
    """
    return jnp.frexp(jnp.max(jnp.abs(M)))[1]


def _power_of_two(e: Array, dtype) -> tuple[Array, Array]:
    """2^-e as two scalar factors, each a normal float (for |e| <= 252) and each exact."""
    half = e // 2
    one = jnp.ones((), dtype)
    return jnp.ldexp(one, -half), jnp.ldexp(one, half - e)


def _uses_lanczos(ord: Any, method: str, N: int) -> bool:
    """Whether the norm is σ_max by Lanczos rounds (rather than a Frobenius norm or an SVD)."""
    return ord == 2 and (method == "lanczos" or (method == "auto" and N > SVD_MAX_N))


def _log_norm_fn(ord: Any, method: str, tol: float, restarts: int, krylov: int, N: int) -> Callable:
    """``(M̂ normalised, u) -> (log ‖M̂‖, u)`` for the chosen norm (u: warm start, left side)."""
    if ord == "fro":
        return lambda M, u: (jnp.log(jnp.linalg.norm(M)), u)
    if not _uses_lanczos(ord, method, N):
        return lambda M, u: (jnp.log(jnp.linalg.norm(M, ord=2)), u)

    def lanczos(M, u):
        sigma, u = top_singular_value(M, u, krylov=krylov, tol=tol, max_restarts=restarts)
        return jnp.log(sigma), u

    return lanczos


def _start_vector(N: int, dtype) -> Array:
    """A fixed, generic unit vector to start the first Lanczos round (deterministic)."""
    v = jax.random.normal(jax.random.key(0), (N,), dtype)
    return v / jnp.linalg.norm(v)


def autodiff_linearisation(step: Callable) -> Callable:
    """``(c_{t-1}, px_t) -> (c_t, StepJacobian)`` from JAX's autodiff of any flat step.

    ``left(P) = P J_t`` pushes the N rows of P through the step's VJP and ``right(Q) = J_t Q``
    the N columns of Q through its JVP; J_t itself is never formed. This is the reference
    that the closed form (`rnnjax.analysis._structured_jacobian`) must equal.
    """

    def linearise(c_prev, px_t):
        c_new, jvp = jax.linearize(lambda c_: step(c_, px_t), c_prev)
        vjp = jax.linear_transpose(jvp, c_prev)
        rows = jax.vmap(lambda row: vjp(row)[0])  # rows of P (N, N) -> P J_t
        columns = jax.vmap(jvp, in_axes=1, out_axes=1)  # columns of Q (N, N) -> J_t Q

        def left(P, scale):
            return rows(P * scale[0] * scale[1])

        def right(Q, scale):
            return columns(Q * scale[0] * scale[1])

        return c_new, StepJacobian(left, right)

    return linearise


def forward_log_norms(
    linearise: Callable, px: Array, c0: Array, log_norm: Callable | None
) -> tuple[Array, Array | None]:
    """The trajectory and log ‖∂c_t/∂c_0‖ of one example in one forward scan.

    Args:
        linearise: ``(c_{t-1}, px_t) -> (c_t, StepJacobian)``.
        px: (T, G).
        c0: (N,).
        log_norm: from `_log_norm_fn`, or None to skip the forward view.

    Returns:
        (states c_0..c_{T-1} as (T, N), log norms for t = 1..T as (T,) or None).
    """
    N = c0.shape[-1]
    if log_norm is None:

        def plain(c, px_t):
            return linearise(c, px_t)[0], c

        return jax.lax.scan(plain, c0, px)[1], None

    def body(acc, px_t):
        c, Q, e, v = acc  # (N,), (N, N) = Q̂_{t-1}, () int: Q_{t-1} = 2^e Q̂_{t-1}, (N,)
        c_new, jac = linearise(c, px_t)
        d = _max_exponent(Q)  # the power of two to take out of Q̂_{t-1}, applied to J_t
        Q, e = jac.right(Q, _power_of_two(d, Q.dtype)), e + d  # (N, N) = J_t Q̂_{t-1} 2^-d
        log_q, v = log_norm(Q.T, v)  # warm start on the c_0 side (right vectors of Q)
        return (c_new, Q, e, v), (c, e * LN2 + log_q)

    start = (c0, jnp.eye(N, dtype=c0.dtype), jnp.zeros((), jnp.int32), _start_vector(N, c0.dtype))
    _, (states, logs) = jax.lax.scan(body, start, px)
    return states, logs


def backward_log_norms(linearise: Callable, px: Array, states: Array, log_norm: Callable) -> Array:
    """log ‖∂c_T/∂c_t‖ of one example for t = 0..T-1, in one reverse scan.

    Args:
        linearise: ``(c_{t-1}, px_t) -> (c_t, StepJacobian)``.
        px: (T, G).
        states: c_0..c_{T-1}, (T, N): the linearisation point of each step.
        log_norm: from `_log_norm_fn`.

    Returns:
        (T,): entry t is log ‖P_t‖ with P_t = ∂c_T/∂c_t.
    """
    N = states.shape[-1]

    def body(acc, inputs):
        P, e, u = acc  # (N, N) = P̂_t, () int: P_t = 2^e P̂_t, (N,)
        c_prev, px_t = inputs  # c_{t-1}, px_t
        d = _max_exponent(P)  # the power of two to take out of P̂_t, applied to J_t
        P, e = linearise(c_prev, px_t)[1].left(P, _power_of_two(d, P.dtype)), e + d  # P̂_t J_t 2^-d
        log_p, u = log_norm(P, u)  # warm start on the c_T side (left vectors of P)
        return (P, e, u), e * LN2 + log_p

    eye = jnp.eye(N, dtype=states.dtype)
    start = (eye, jnp.zeros((), jnp.int32), _start_vector(N, states.dtype))
    _, logs = jax.lax.scan(body, start, (states, px), reverse=True)
    return logs


def jacobian_norms(
    cell: Cell,
    params: Any,
    xs: Array,
    carry: Any = None,
    ord: int | str = 2,
    *,
    forward: bool = True,
    method: str = "auto",
    tol: float = 1e-5,
    krylov: int = 8,
    max_restarts: int = 20,
    jacobian: str = "auto",
) -> JacobianNorms:
    r"""For every t, the norm of ∂c_T/∂c_t (and of ∂c_t/∂c_0), in log space.

    .. math::
        \log \Big\| \frac{\partial c_T}{\partial c_t} \Big\|
            = \log \| J_T J_{T-1} \cdots J_{t+1} \|, \qquad t = 0..T

    computed by one backward accumulation P_{t-1} = P_t J_t over time (not T separate
    products), renormalised at every step so that neither 1e-40 nor 1e+40 under/overflows
    float32 (see the module docstring). The forward view log ‖∂c_t/∂c_0‖ = log ‖J_t⋯J_1‖
    comes from the forward pass that computes the trajectory.

    The Pascanu et al. bound reads ‖∂c_T/∂c_t‖ ≤ η^{T−t} (`pascanu_bound`); an identity
    path (the LSTM's cell state with f = 1, i = 0) keeps the norm at 1.

    Cost per example and view: T products of an N×N matrix by one step's Jacobian — through
    the VJP/JVP 16H³ multiply-adds per step for an LSTM (N = 2H), 8H³ with its closed-form
    Jacobian — plus the Lanczos rounds' matrix-vector products (N² each).

    Args:
        cell: any `rnnjax.Cell`.
        params: its parameters.
        xs: (B, T, D) batch-first, or (T, D) for one sequence.
        carry: initial carry c_0 (None: zeros).
        ord: 2 for the spectral norm σ_max (default), "fro" for the Frobenius norm.
        forward: also compute the forward view ∂c_t/∂c_0 (doubles the cost).
        method: "svd" (exact σ_max by an SVD at every step), "lanczos" (restarted,
            warm-started Golub–Kahan–Lanczos) or "auto" (default): svd for N <= 64,
            lanczos above. Ignored for ``ord="fro"``.
        tol: relative residual tolerance of the Lanczos rounds (float32 cannot go much
            below 1e-6).
        krylov: Krylov dimension of a Lanczos round.
        max_restarts: most Lanczos rounds per step.
        jacobian: how P J_t and J_t Q are computed: "autodiff" (VJP / JVP of the step, any
            cell), "closed_form" (J_t read off the cell's element-wise ``pointwise`` — any
            structured cell; half the multiply-adds for the LSTM;
            `rnnjax.analysis._structured_jacobian`) or "auto" (closed form where it applies).

    Returns:
        `JacobianNorms` of natural-log norms indexed by t = 0..T.

    Raises:
        ValueError: unknown ord / method, bad xs (rank, dtype, features, T = 0) or carry.

    Example:
        >>> cell = rj.simple_rnn(32)
        >>> params = cell.init(jax.random.key(0), input_size=4)
        >>> out = jacobian_norms(cell, params, jnp.ones((8, 100, 4)))
        >>> out.log_backward.shape, out.log_backward_mean.shape
        ((8, 101), (101,))

    References:
        Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural networks",
        ICML 2013 (section 2).
    """
    _check_options(ord, method)
    if jacobian not in JACOBIANS:
        raise ValueError(f"unknown {jacobian=}; choose one of {JACOBIANS}")
    if jacobian == "closed_form" and not closed_form.supports(cell):
        raise ValueError(
            f"no closed-form Jacobian for the {cell.name} cell: it needs a structured cell with "
            f"an element-wise pointwise (rnnjax.cells.base.Structure); use jacobian='autodiff'"
        )
    prob = prepare(cell, params, xs, carry)
    if jacobian != "autodiff" and closed_form.supports(cell):
        c0 = prob.unflatten(prob.c0[0])
        treedef = jax.tree.structure(c0)
        S = len(jax.tree.leaves(c0))  # carry leaves
        linearise = closed_form.structured_linearisation(cell, params, treedef, S)
    else:
        linearise = autodiff_linearisation(step_fn(cell, params, prob.unflatten))
    N = prob.N
    log_norm = _log_norm_fn(ord, method, tol, max_restarts, krylov, N)
    log_eye = jnp.zeros((), prob.c0.dtype) if ord == 2 else 0.5 * jnp.log(float(N))

    def one(px, c0):
        states, fwd = forward_log_norms(linearise, px, c0, log_norm if forward else None)
        bwd = backward_log_norms(linearise, px, states, log_norm)  # (T,)
        bwd = jnp.concatenate([bwd, log_eye[None]])  # (T+1,)
        if fwd is not None:
            fwd = jnp.concatenate([log_eye[None], fwd])  # (T+1,)
        return bwd, fwd

    if _uses_lanczos(ord, method, N):
        # one example at a time: the Lanczos rounds are matrix-vector passes bound by memory
        # bandwidth, and one example's N x N product (1 MB at N = 512) stays in a core's
        # cache where the batch's does not; nor does a batched loop of rounds run until the
        # slowest example has converged (benchmarks/bench_jacobian_norms.py)
        bwd, fwd = jax.lax.map(lambda example: one(*example), (prob.px, prob.c0))
    else:  # the batch at once: batched GEMMs
        bwd, fwd = jax.vmap(one)(prob.px, prob.c0)  # (B, T+1) each
    return JacobianNorms(
        log_backward=unbatch(bwd, prob.batched),
        log_forward=None if fwd is None else unbatch(fwd, prob.batched),
        log_backward_mean=log_mean_exp(bwd),
        log_forward_mean=None if fwd is None else log_mean_exp(fwd),
    )
