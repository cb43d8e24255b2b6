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
exponent of ‖P̂‖ (so that 2^{-e} P̂ has its norm in [0.5, 1)), found by the norm the step
before computed, and log ‖P_t‖ = (Σ e) log 2 + log ‖P̂_t‖. The power of two multiplies J's
entries where J is formed, so it costs no pass over the N×N matrix. Scaling by powers of two
is exact and the exponents add exactly, so the only rounding is that of the products
themselves; no intermediate leaves float32's range unless a single step's Jacobian does.

The spectral norm σ_max(P̂_t) is found by restarted Lanczos on P̂ᵀP̂ warm-started from the
previous step's top singular vector (P_{t-1} = P_t J_t keeps the left side of P_t), and stops
on a residual test that bounds its error (`top_singular_value`; on the CPU its native twin,
``lanczos_cpu.cc``, runs the rounds). ``method="svd"`` computes σ_max exactly with an SVD at
every step instead: the readable reference, and the default for N <= 64 — for N = 512 one SVD
on the CPU costs ~20 times the N×N product. An example's two views advance side by side in
one scan (`accumulate_views`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.analysis import _lanczos_cpu
from rnnjax.analysis import _structured_jacobian as closed_form
from rnnjax.analysis._core import log_mean_exp, prepare, step_fn, trajectory, unbatch
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


class _Lanczos(NamedTuple):
    """The state of `top_singular_value`'s loop of Lanczos steps on MᵀM, in rounds of k.

    steps: the steps taken (this round's step is j = steps mod k); X (k, N): orthonormal
    Krylov basis (rows; rows after j zero), MX (k, N) and G (k, N): M xᵢ
    and MᵀM xᵢ of the rows done, H (k, k) = X Gᵀ: MᵀM projected on the basis; sigma,
    left, right, residual: the latest Ritz estimate (σ, unit u and x with M x = σ u, and
    ‖Mᵀu − σ x‖).
    """

    steps: Array
    X: Array
    MX: Array
    G: Array
    H: Array
    sigma: Array
    left: Array
    right: Array
    residual: Array


def _orthonormal(x: Array, basis: Array) -> Array:
    """x minus its part in the span of the orthonormal rows of basis (twice), normalised
    (0 where x lies in the span)."""
    x = x - (basis @ x) @ basis
    x = x - (basis @ x) @ basis
    n = jnp.linalg.norm(x)
    return x / jnp.where(n > 0, n, 1.0)


def top_singular_value(
    M: Array,
    u: Array,
    *,
    krylov: int,
    tol: float,
    max_restarts: int,
    right: bool = False,
) -> tuple[Array, Array]:
    """σ_max(M) by restarted Lanczos on MᵀM, warm-started at the unit vector u.

    u is the previous estimate of M's top left singular vector, or of its right one with
    ``right=True``; the start x₀ is Mᵀu/‖Mᵀu‖ or u itself. Step j of a round takes t = M xⱼ and
    g = Mᵀt (= MᵀM xⱼ), adds xⱼ's row and column to H = X MᵀM Xᵀ and takes H's top eigenpair
    (λ, s): the Ritz vector x = Xᵀs, with M x = MXᵀs and MᵀM x = Gᵀs combinations of vectors
    already computed, so that σ = ‖M x‖, u = M x/σ and the residual

        r = ‖Mᵀu − σ x‖ = ‖MᵀM x / σ − σ x‖

    cost no further product. It stops as soon as r ≤ tol·σ: with M x = σ u exactly, σ then lies
    within r of a singular value of M (and, the space being grown from the previous step's top
    vector, of the top one). Otherwise the next basis vector is g orthogonalised against X
    (twice); after k steps the round restarts from x. Lanczos needs about √(1/gap) products
    where power iteration needs 1/gap, which matters for the nearly orthogonal Jacobians of
    well-conditioned cells (clustered singular values). Lanczos on MᵀM builds the same Krylov
    space as Golub–Kahan bidiagonalisation of M, but each step is one pass over the matrix
    (row i: tᵢ = Mᵢ·x, then g += tᵢ Mᵢ) where Golub–Kahan takes two; squaring costs no accuracy
    for the top singular value. ``lanczos_cpu.cc`` is this function's native twin.

    Args:
        M: (N, N).
        u: (N,) unit warm start: a left singular vector estimate of M (a right one with
            ``right=True``).
        krylov: Krylov dimension per round (capped at N).
        tol: relative residual tolerance.
        max_restarts: most rounds (at most krylov · max_restarts steps).
        right: u, and the vector returned, are on M's right side.

    Returns:
        (σ, u): the estimate () and the singular vector estimate (N,) on u's side. σ = 0 for
        M = 0.
    """
    N = M.shape[0]
    k = min(krylov, N)
    if right:
        x0 = u
    else:
        w = u @ M  # (N,) Mᵀu
        n = jnp.linalg.norm(w)
        x0 = jnp.where(n > 0, w / jnp.where(n > 0, n, 1.0), jnp.full_like(w, N**-0.5))

    def fresh(x, steps, sigma, left, right_, residual):  # a round's start: the basis is x alone
        zeros = jnp.zeros((k, N), M.dtype)
        H = jnp.zeros((k, k), M.dtype)
        return _Lanczos(steps, zeros.at[0].set(x), zeros, zeros, H, sigma, left, right_, residual)

    def step(s: _Lanczos) -> _Lanczos:
        j = s.steps % k  # this round's step
        t = M @ s.X[j]  # (N,) M xⱼ
        g = t @ M  # (N,) MᵀM xⱼ
        MX, G = s.MX.at[j].set(t), s.G.at[j].set(g)
        h = s.X @ g  # (k,) row and column j of X MᵀM Xᵀ
        H = s.H.at[j].set(h).at[:, j].set(h)
        coeffs = jnp.linalg.eigh(H)[1][:, -1]  # (k,) the top eigenvector
        Mx, MtMx, x = coeffs @ MX, coeffs @ G, coeffs @ s.X  # (N,) each
        sigma = jnp.linalg.norm(Mx)
        safe = jnp.where(sigma > 0, sigma, 1.0)
        left = jnp.where(sigma > 0, Mx / safe, s.left)
        residual = jnp.linalg.norm(MtMx / safe - sigma * x)
        n_x = jnp.linalg.norm(x)  # 1, or 0 where H = 0 picks a row not built yet
        x = jnp.where(n_x > 0, x / jnp.where(n_x > 0, n_x, 1.0), s.right)
        steps = s.steps + 1
        restart = fresh(x, steps, sigma, left, x, residual)
        grown = _Lanczos(
            steps, s.X.at[j + 1].set(_orthonormal(g, s.X)), MX, G, H, sigma, left, x, residual
        )
        return jax.tree.map(lambda a, b: jnp.where(j + 1 == k, a, b), restart, grown)

    def cond(s: _Lanczos):
        return (s.steps < k * max_restarts) & (s.residual > tol * s.sigma)

    inf = jnp.asarray(jnp.inf, M.dtype)
    start = fresh(x0, jnp.zeros((), jnp.int32), jnp.zeros((), M.dtype), u, x0, inf)
    out = jax.lax.while_loop(cond, step, start)
    return out.sigma, out.right if right else out.left


def _exponent(norm: Array) -> Array:
    """The integer e with norm = m·2^e, m in [0.5, 1) (0 for a norm of 0)."""
    return jnp.frexp(norm)[1]


def _power_of_two(e: Array, dtype) -> tuple[Array, Array]:
    """2^-e as two scalar factors, each a normal float (for |e| <= 252) and each exact."""
    half = e // 2
    one = jnp.ones((), dtype)
    return jnp.ldexp(one, -half), jnp.ldexp(one, half - e)


def _uses_lanczos(ord: Any, method: str, N: int) -> bool:
    """Whether the norm is σ_max by Lanczos rounds (rather than a Frobenius norm or an SVD)."""
    return ord == 2 and (method == "lanczos" or (method == "auto" and N > SVD_MAX_N))


def _norms_fn(ord: Any, method: str, tol: float, restarts: int, krylov: int, N: int) -> Callable:
    """``((M̂, u, right), ...) -> ((‖M̂‖, u), ...)``: the chosen norm of each lane's matrix.

    u is the warm start of the Lanczos rounds: a left singular vector of M̂, or a right one
    with ``right``. On the CPU the Lanczos rounds of all lanes run in one native call
    (`_lanczos_cpu.top_singular_values`, the lanes side by side), elsewhere lane by lane in XLA.
    """
    if ord == "fro" or not _uses_lanczos(ord, method, N):
        norm_ord = None if ord == "fro" else 2

        def exact(lanes):
            return tuple((jnp.linalg.norm(M, ord=norm_ord), u) for M, u, _ in lanes)

        return exact

    options: dict[str, Any] = dict(krylov=krylov, tol=tol, max_restarts=restarts)

    def lanczos(lanes):
        rights = tuple(right for _, _, right in lanes)

        def reference(Ms, us):
            return tuple(
                top_singular_value(M, u, right=right, **options)
                for M, u, right in zip(Ms, us, rights, strict=True)
            )

        def native(Ms, us):
            return _lanczos_cpu.top_singular_values(
                tuple(zip(Ms, us, rights, strict=True)), **options
            )

        Ms, us = tuple(M for M, _, _ in lanes), tuple(u for _, u, _ in lanes)
        if _lanczos_cpu.available(Ms[0].dtype):
            return jax.lax.platform_dependent(Ms, us, cpu=native, default=reference)
        return reference(Ms, us)

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


FORWARD, BACKWARD = "forward", "backward"


def _lane_start(N: int, dtype) -> tuple[Array, Array, Array, Array]:
    """(M̂ = I, e = 0, warm start, d = the exponent of ‖I‖ = 1): before the first step."""
    one = jnp.ones((), jnp.int32)
    return jnp.eye(N, dtype=dtype), 0 * one, _start_vector(N, dtype), one


def _lane_product(linearise: Callable, view: str, acc: tuple, inputs: tuple) -> Array:
    """One view's next normalised product, (N, N).

    backward: P̂_{t-1} = P̂_t (2^-d J_t); forward: Q̂_t = (2^-d J_t) Q̂_{t-1}. acc = (M̂ (N, N),
    e () int with M = 2^e M̂, u (N,) the warm start, d () int the exponent of ‖M̂‖, found by
    the norm of the step before); 2^-d is applied to J_t where J_t is formed.
    """
    M, _, _, d = acc
    c_prev, px_t = inputs
    jac = linearise(c_prev, px_t)[1]
    scale = _power_of_two(d, M.dtype)
    return jac.left(M, scale) if view == BACKWARD else jac.right(M, scale)  # (N, N)


def _lane_advance(acc: tuple, M: Array, norm_m: Array, u: Array) -> tuple[tuple, Array]:
    """The new acc and log ‖M‖ (M = 2^(e+d) M̂) from the product M̂ and its norm."""
    _, e, _, d = acc
    return (M, e + d, u, _exponent(norm_m)), (e + d) * LN2 + jnp.log(norm_m)


def accumulate_views(
    linearise: Callable, norms: Callable, lanes: tuple[tuple[str, Array, Array], ...]
) -> tuple[Array, ...]:
    """Several independent accumulations ("lanes") advanced side by side in one scan.

    Each lane is (view, states, px) with states c_0..c_{T-1} (T, N) (the linearisation point
    of each step) and px (T, G), in time order. A forward lane returns log ‖∂c_t/∂c_0‖ for
    t = 1..T, a backward lane log ‖∂c_T/∂c_t‖ for t = 0..T-1 (each (T,)). The backward lane
    reads its inputs reversed, so both lanes walk one step per scan iteration. The lanes'
    products are independent of each other, and their norms are found in one call
    (`_norms_fn`): on the CPU one native call that runs the lanes' Lanczos rounds on two
    threads at once.
    """
    inputs = tuple(
        (states[::-1], px[::-1]) if view == BACKWARD else (states, px) for view, states, px in lanes
    )
    N = lanes[0][1].shape[-1]
    starts = tuple(_lane_start(N, lanes[0][1].dtype) for _ in lanes)
    views = tuple(view for view, _, _ in lanes)

    def body(accs, xs):
        Ms = tuple(
            _lane_product(linearise, view, acc, x)
            for view, acc, x in zip(views, accs, xs, strict=True)
        )
        warm = tuple(acc[2] for acc in accs)  # (N,) each
        found = norms(tuple(zip(Ms, warm, (view == FORWARD for view in views), strict=True)))
        out = [_lane_advance(acc, M, *nu) for acc, M, nu in zip(accs, Ms, found, strict=True)]
        return tuple(acc for acc, _ in out), tuple(log for _, log in out)

    _, logs = jax.lax.scan(body, starts, inputs)
    return tuple(
        log[::-1] if view == BACKWARD else log
        for (view, _, _), log in zip(lanes, logs, strict=True)
    )


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
            warm-started Lanczos on MᵀM, `top_singular_value`) or "auto" (default): svd for
            N <= 64, lanczos above. Ignored for ``ord="fro"``.
        tol: relative residual tolerance of the Lanczos rounds (float32 cannot go much
            below 1e-6).
        krylov: Krylov dimension of a Lanczos round.
        max_restarts: most Lanczos rounds per step (at most krylov · max_restarts products
            with MᵀM).
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
    norms = _norms_fn(ord, method, tol, max_restarts, krylov, N)
    log_eye = jnp.zeros((), prob.c0.dtype) if ord == 2 else 0.5 * jnp.log(float(N))

    def over_examples(f: Callable, xs: tuple) -> Any:
        if N > SVD_MAX_N:
            # examples one after the other: one example's N x N products (1 MB each at
            # N = 512) stay in cache where the batch's do not, the Lanczos rounds (passes
            # over them bound by memory bandwidth) stop when that example has converged, and
            # an example's products are GEMMs large enough for both cores
            return jax.lax.map(f, xs)
        return jax.vmap(f)(xs)  # small matrices: the batch at once, batched GEMMs

    def advance(c: Array, px_t: Array) -> Array:
        return linearise(c, px_t)[0]

    states = jax.vmap(lambda px, c0: trajectory(advance, px, c0)[:-1])(prob.px, prob.c0)
    if forward:  # each example's two views side by side (see accumulate_views)
        fwd, bwd = over_examples(
            lambda ex: accumulate_views(linearise, norms, ((FORWARD, *ex), (BACKWARD, *ex))),
            (states, prob.px),
        )  # (B, T) each
        fwd = jnp.concatenate([jnp.broadcast_to(log_eye, fwd[:, :1].shape), fwd], axis=1)
    else:
        fwd = None
        bwd = over_examples(
            lambda ex: accumulate_views(linearise, norms, ((BACKWARD, *ex),))[0],
            (states, prob.px),
        )  # (B, T)
    bwd = jnp.concatenate([bwd, jnp.broadcast_to(log_eye, bwd[:, :1].shape)], axis=1)
    return JacobianNorms(
        log_backward=unbatch(bwd, prob.batched),
        log_forward=None if fwd is None else unbatch(fwd, prob.batched),
        log_backward_mean=log_mean_exp(bwd),
        log_forward_mean=None if fwd is None else log_mean_exp(fwd),
    )
